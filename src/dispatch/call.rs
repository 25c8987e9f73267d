//! The upstream call shared by routes and forward mode: header hygiene,
//! injection ([`crate::inject`]), the deadline on the response head, and
//! the response streamed back with its audit line written at its end.

use std::sync::Arc;

use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tether_wire::body::GuardedBody;
use tether_wire::headers::{strip_hop_by_hop, strip_tether};
use tether_wire::{BoxBody, BoxError, ErrorCode, Problem};

use super::{Audit, Dispatcher};
use crate::audit;
use crate::body::{Counted, Direction};
use crate::config::Route;
use crate::hygiene;
use crate::inject;
use crate::secrets::SecretError;
use crate::upstream::UpstreamClient;

impl Dispatcher {
    /// Header hygiene, caller placeholders, the route's (or forward
    /// target's) headers with their secrets, then the upstream call with
    /// the deadline on the response head; the response streams back and
    /// its audit line is written when its body ends.
    pub(super) async fn call_upstream(
        &self,
        req: Request<Incoming>,
        target: Uri,
        route: &Route,
        client: Upstream<'_>,
        mut audit: Audit,
        request_id: &str,
    ) -> Response<BoxBody> {
        let route_name = route.name.as_str();
        let fail = super::problem_for(request_id);
        if let Some(refused) = super::upgrade::refusal(&req, route, &mut audit, request_id) {
            return refused;
        }
        let (mut parts, body) = req.into_parts();
        parts.uri = target;
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        strip_tether(&mut parts.headers);
        parts.headers.remove(header::HOST);
        // `[identity]`: the user's token stays here unless the route
        // forwards it; `Impersonate-*` only from the agent's config.
        crate::identity::headers::strip_caller(
            &mut parts.headers,
            self.identity.as_ref().map(|v| v.header()),
            route.access.forward_identity,
        );
        let user = parts
            .extensions
            .get::<crate::identity::Verified>()
            .map(|v| v.0.clone());
        if !route.allow_override_headers {
            hygiene::strip_override_headers(&mut parts.headers);
        }
        audit.record.caller_request_id = hygiene::set_request_id(&mut parts.headers, request_id);
        let caller_templates =
            match inject::caller_placeholders(&parts.headers, route, &self.secrets) {
                Ok(t) => t,
                Err(why) => {
                    audit.log(StatusCode::FORBIDDEN, "denied");
                    return fail(ErrorCode::Denied, format!("route {route_name}: {why}"));
                }
            };
        let needed = inject::secrets_needed(&caller_templates, route);
        audit.record.secrets = needed.iter().cloned().collect();
        // Boxed, and only when a secret is needed: a store's fetch (the
        // AWS SDK's above all) is a large future.
        let resolved = if needed.is_empty() {
            Ok(Default::default())
        } else {
            Box::pin(inject::resolve(&self.secrets, &needed)).await
        };
        let values = match resolved {
            Ok(values) => values,
            Err(SecretError::Unknown(name)) => {
                audit.log(StatusCode::FORBIDDEN, "denied");
                return fail(ErrorCode::Denied, format!("unknown secret {name:?}"));
            }
            Err(e @ SecretError::Unavailable { .. }) => {
                // The store's own text (paths, ids, its error) stays here.
                tracing::warn!(request_id = %request_id, route = %route_name, error = %e,
                    "secret unavailable");
                audit.log(StatusCode::BAD_GATEWAY, "secret_unavailable");
                return fail(
                    ErrorCode::SecretUnavailable,
                    format!("route {route_name}: a secret it needs is unavailable"),
                );
            }
        };
        if let Err(name) = inject::inject(
            &mut parts.headers,
            caller_templates,
            route,
            &values,
            user.as_deref(),
        ) {
            audit.log(StatusCode::BAD_GATEWAY, "secret_unavailable");
            return fail(
                ErrorCode::SecretUnavailable,
                format!("header {name}: value not usable"),
            );
        }
        let bytes = Arc::new(audit::Bytes::default());
        audit.bytes = Some(bytes.clone());
        let route_writes = route.headers.iter().map(|h| h.name.clone()).collect();
        let body = Counted::new(
            body.map_err(BoxError::from).boxed(),
            bytes.clone(),
            Direction::In { route_writes },
        );
        let mut upstream_req = Request::from_parts(parts, body.boxed());
        if let Some(pending) = upstream_req
            .extensions_mut()
            .remove::<super::upgrade::PendingUpgrade>()
        {
            return Box::pin(self.upgrade_upstream(
                pending,
                upstream_req,
                route,
                &client,
                audit,
                request_id,
            ))
            .await;
        }
        let informational = hygiene::Informational::watch(&mut upstream_req);

        let response = tokio::time::timeout(route.timeout, async {
            tokio::select! {
                response = client.request(upstream_req) => Some(response),
                () = informational.flooded() => None,
            }
        })
        .await;
        let response = match response {
            Ok(Some(Ok(response))) => response,
            Ok(None) => {
                tracing::info!(request_id = %request_id, route = %route_name,
                    limit = hygiene::MAX_INFORMATIONAL, "upstream sent too many 1xx responses");
                audit.log(StatusCode::BAD_GATEWAY, "upstream_unreachable");
                return fail(
                    ErrorCode::UpstreamUnreachable,
                    format!("route {route_name}: upstream sent too many interim (1xx) responses"),
                );
            }
            Ok(Some(Err(e))) => {
                tracing::info!(request_id = %request_id, route = %route_name, error = %crate::error_chain(&e),
                    "upstream unreachable");
                return no_answer(&mut audit, route, request_id, Missing::Unreachable);
            }
            Err(_) => return no_answer(&mut audit, route, request_id, Missing::Timeout),
        };
        let (mut parts, body) = response.into_parts();
        if let Err(e) = hygiene::admit_response_head(parts.status, &mut parts.headers) {
            tracing::warn!(request_id = %request_id, route = %route_name, error = %e,
                "upstream response refused");
            audit.log(StatusCode::BAD_GATEWAY, "upstream_headers_too_large");
            return fail(
                ErrorCode::UpstreamHeadersTooLarge,
                format!(
                    "route {route_name}: upstream response headers over {} bytes",
                    e.limit
                ),
            );
        }
        let pending = audit.pending(parts.status, bytes.clone());
        let body = Counted::new(body.map_err(BoxError::from).boxed(), bytes, Direction::Out);
        let body = GuardedBody::new(body, pending);
        Response::from_parts(parts, body.boxed())
    }
}

/// Why the upstream gave no answer.
pub(super) enum Missing {
    /// The connection or the exchange failed.
    Unreachable,
    /// Nothing within the route's timeout.
    Timeout,
}

/// The audit line and the caller's answer when the upstream gave none
/// (requests and upgrade handshakes alike; the cause is logged by the
/// caller, never sent).
pub(super) fn no_answer(
    audit: &mut Audit,
    route: &Route,
    request_id: &str,
    missing: Missing,
) -> Response<BoxBody> {
    let name = &route.name;
    let (status, decision, code, detail) = match missing {
        Missing::Unreachable => (
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            ErrorCode::UpstreamUnreachable,
            format!("route {name}: upstream did not answer"),
        ),
        Missing::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            ErrorCode::UpstreamTimeout,
            format!(
                "route {name}: no response within {}",
                humantime::format_duration(route.timeout)
            ),
        ),
    };
    audit.log(status, decision);
    Problem::new(code, detail)
        .with_request_id(request_id.to_owned())
        .into_response()
}

/// The pooled client a request goes out on.
pub(super) enum Upstream<'a> {
    /// A route's.
    Route(&'a UpstreamClient),
    /// Forward mode's (addresses pinned by the SSRF check).
    Forward(&'a crate::upstream::ForwardClient),
}

impl Upstream<'_> {
    fn request(&self, req: Request<BoxBody>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Self::Route(c) => c.request(req),
            Self::Forward(c) => c.request(req),
        }
    }
}
