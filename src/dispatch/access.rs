//! Who may use a route beyond its methods and paths (DESIGN.md, "End-user
//! identity, group rules, policy as code"): the end user's token verified
//! when the route needs one, then `users`/`groups`, then the route's
//! policy. Every rule must allow.

use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use tether_wire::{ErrorCode, Problem};

use super::{Audit, Dispatcher, LiveRoute};
use crate::identity::keys::Refusal;
use crate::identity::verify::User;
use crate::rego::input::Input;

/// Why a route's access rules refused a request: the problem for the
/// caller (the audit line is already written).
pub(super) type Refused = Problem;

impl Dispatcher {
    /// This dispatcher with `running`'s identity verifier when both verify
    /// with the same settings: a reload (SIGHUP) keeps the fetched keys
    /// and the verified-token cache, so it does not depend on the issuer
    /// being reachable at that moment.
    pub fn keeping_identity_of(mut self, running: &Dispatcher) -> Self {
        if let (Some(new), Some(old)) = (&self.identity, &running.identity)
            && new.settings().same_as(old.settings())
        {
            self.identity = Some(old.clone());
        }
        self
    }

    /// Checks identity, users/groups and the policy of `live` for `req`,
    /// whose normalised path within the route is `path`. The verified user
    /// (when the route needs one) is named in the audit record.
    pub(super) async fn admit(
        &self,
        live: &LiveRoute,
        req: &Request<Incoming>,
        path: &str,
        audit: &mut Audit,
    ) -> Result<Option<Arc<User>>, Refused> {
        let route = &live.route;
        let access = &route.access;
        let user = match (&self.identity, access.required) {
            (Some(verifier), true) => {
                let header = verifier.header();
                let value = req
                    .headers()
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                // Boxed: a key fetch is a large future most requests skip.
                match Box::pin(verifier.verify(value)).await {
                    Ok(user) => Some(user),
                    Err(Refusal::Unavailable) => {
                        return Err(refuse(
                            audit,
                            ErrorCode::IdentityUnavailable,
                            format!(
                                "route {}: the identity issuer's keys are unavailable",
                                route.name
                            ),
                        ));
                    }
                    Err(why) => {
                        // The reason names the header, never the token.
                        tracing::info!(route = %route.name, header = %header, reason = %why,
                            "end-user token refused");
                        return Err(refuse(
                            audit,
                            ErrorCode::IdentityInvalid,
                            format!("route {}: {header}: {why}", route.name),
                        ));
                    }
                }
            }
            _ => None,
        };
        if let Some(user) = &user {
            audit.record.user = Some(user.name.clone());
            audit.record.issuer = Some(user.issuer.clone());
            if !access.admits(user) {
                return Err(refuse(
                    audit,
                    ErrorCode::Denied,
                    format!("route {}: this user may not use it", route.name),
                ));
            }
            if let Err(why) = crate::identity::headers::admit_claims(&route.headers, user) {
                return Err(refuse(
                    audit,
                    ErrorCode::Denied,
                    format!("route {}: {why}", route.name),
                ));
            }
        }
        if let Some(policy) = &live.policy {
            let input = Input {
                method: req.method().to_string(),
                path: path.to_owned(),
                query: req.uri().query().unwrap_or_default().to_owned(),
                headers: Input::headers(req.headers(), self.identity.as_ref().map(|v| v.header())),
                upgrade: req
                    .extensions()
                    .get::<hyper::ext::Protocol>()
                    .map(|p| p.as_str().to_owned()),
                route: route.name.clone(),
                caller_key_id: audit.record.caller_key_id.clone(),
                user: user.as_ref().map(|u| u.name.clone()),
                groups: user.as_ref().map(|u| u.groups.clone()).unwrap_or_default(),
            };
            let decision = policy.evaluate(&input, &audit.record.request_id);
            if !decision.allow {
                let detail = match decision.reason {
                    Some(reason) if !reason.is_empty() => {
                        format!("route {}: policy: {reason}", route.name)
                    }
                    _ => format!("route {}: denied by its policy", route.name),
                };
                return Err(refuse(audit, ErrorCode::Denied, detail));
            }
        }
        Ok(user)
    }
}

/// Writes the audit line of a refusal and gives the caller's problem.
fn refuse(audit: &mut Audit, code: ErrorCode, detail: String) -> Problem {
    audit.log(code.status(), code.as_str());
    Problem::new(code, detail)
}
