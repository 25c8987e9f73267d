//! From the credential a request presents to who made it: the one check
//! every listener uses (caller API, proxy listener, agent handshake).
//!
//! [`identify`] reads the credential where its entrance expects it,
//! verifies it against the store, counts a failure against the source
//! address ([`crate::limiter::FailureLimiter`]) and, for callers' API keys,
//! applies `[limits] caller_rate` ([`crate::limiter::CallerLimiter`]). So a
//! request is rate-limited the same whichever listener it came in by.

use std::net::SocketAddr;

use base64::Engine;
use http::{HeaderMap, header};
use tether_wire::{ErrorCode, Problem};

use crate::State;
use crate::auth::{AuthError, Identity};
use crate::credential::{self, Kind};

/// Where a credential was presented: decides where it is read, its kind,
/// and how a missing or bad one is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entrance {
    /// `/v1/routes/…` and `/v1/forward/…`: an API key in
    /// `Proxy-Authorization: Bearer` (`Authorization` is relayed to the
    /// upstream, never read).
    Routes,
    /// `/v1/secrets/resolve`: an API key in `Proxy-Authorization: Bearer`
    /// or `Authorization: Bearer` (nothing is relayed upstream).
    Resolve,
    /// The proxy listener: an API key in `Proxy-Authorization`, `Bearer`
    /// or `Basic` with the key as the password; refused with 407.
    Proxy,
    /// `/v1/agent/connect`: an agent token in `Authorization: Bearer`.
    Agent,
}

impl Entrance {
    fn kind(self) -> Kind {
        match self {
            Self::Agent => Kind::AgentToken,
            Self::Routes | Self::Resolve | Self::Proxy => Kind::ApiKey,
        }
    }

    /// The credential presented, if any, in the form this entrance takes.
    fn presented(self, headers: &HeaderMap) -> Option<String> {
        let value = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let bearer =
            |name: header::HeaderName| value(name).and_then(credential::bearer).map(str::to_owned);
        match self {
            Self::Routes => bearer(header::PROXY_AUTHORIZATION),
            Self::Resolve => {
                bearer(header::PROXY_AUTHORIZATION).or_else(|| bearer(header::AUTHORIZATION))
            }
            Self::Proxy => value(header::PROXY_AUTHORIZATION).and_then(proxy_key),
            Self::Agent => bearer(header::AUTHORIZATION),
        }
    }
}

/// Why a credential was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// None presented (counted as a failed authentication).
    Missing,
    /// Unknown, wrong, revoked or expired.
    Invalid,
    /// Missing or invalid, from an address past its failure budget.
    TooManyFailures,
    /// A valid API key over `[limits] caller_rate`.
    OverCallerRate,
    /// The store could not be asked (logged with the store's error).
    StoreUnavailable,
}

impl Refusal {
    /// The answer for this refusal at `entrance`.
    pub(crate) fn problem(self, entrance: Entrance) -> Problem {
        let unauthorized = match entrance {
            Entrance::Proxy => ErrorCode::ProxyAuthRequired,
            Entrance::Routes | Entrance::Resolve | Entrance::Agent => ErrorCode::Unauthorized,
        };
        let (code, detail) = match (self, entrance) {
            (Self::Missing, Entrance::Agent) => (unauthorized, "agent token required"),
            (Self::Missing, Entrance::Proxy) => (
                unauthorized,
                "API key required: Proxy-Authorization: Bearer <key> (or Basic with the key as password)",
            ),
            (Self::Missing, Entrance::Routes | Entrance::Resolve) => (
                unauthorized,
                "API key required in Proxy-Authorization: Bearer",
            ),
            (Self::Invalid, Entrance::Agent) => (unauthorized, "invalid agent token"),
            (Self::Invalid, _) => (unauthorized, "invalid API key"),
            (Self::TooManyFailures, _) => (
                ErrorCode::RateLimited,
                "too many failed authentications from this address",
            ),
            (Self::OverCallerRate, _) => (
                ErrorCode::RateLimited,
                "this API key is over its request rate ([limits] caller_rate)",
            ),
            (Self::StoreUnavailable, Entrance::Agent) => {
                (ErrorCode::Internal, "token store unavailable")
            }
            (Self::StoreUnavailable, _) => (ErrorCode::Internal, "key store unavailable"),
        };
        Problem::new(code, detail)
    }
}

/// Who presented the credential `entrance` expects in `headers`, from
/// `remote`: the credential checked, a failure counted against the
/// address, and an API key's request counted against `[limits]
/// caller_rate`.
pub(crate) async fn identify(
    state: &State,
    entrance: Entrance,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<Identity, Refusal> {
    let Some(presented) = entrance.presented(headers) else {
        return Err(failed(state, remote, Refusal::Missing));
    };
    let kind = entrance.kind();
    match state.auth.verify(kind, &presented).await {
        Ok(identity) => {
            let over_rate = kind == Kind::ApiKey
                && state
                    .callers
                    .as_ref()
                    .is_some_and(|c| !c.admit(&identity.credential_id));
            if over_rate {
                return Err(Refusal::OverCallerRate);
            }
            Ok(identity)
        }
        Err(AuthError::Malformed | AuthError::Invalid) => {
            tracing::info!(%remote, ?entrance, "credential refused: invalid");
            Err(failed(state, remote, Refusal::Invalid))
        }
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, ?entrance, "credential check failed: store unavailable");
            Err(Refusal::StoreUnavailable)
        }
    }
}

/// Counts a failed authentication from `remote`: `refusal`, or
/// [`Refusal::TooManyFailures`] past the address's budget. A missing
/// credential is answered 401/407 even then, as it always was: only a
/// wrong one is worth throttling in the answer.
fn failed(state: &State, remote: SocketAddr, refusal: Refusal) -> Refusal {
    let over = state.limiter.failed(remote.ip());
    if over && refusal == Refusal::Invalid {
        Refusal::TooManyFailures
    } else {
        refusal
    }
}

/// The API key from a `Proxy-Authorization` value: `Bearer KEY` or
/// `Basic base64(user:KEY)`.
fn proxy_key(value: &str) -> Option<String> {
    if let Some(key) = credential::bearer(value) {
        return Some(key.to_owned());
    }
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_entrance_reads_its_own_header_form() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer tk".parse().unwrap());
        assert_eq!(Entrance::Routes.presented(&h), None);
        assert_eq!(Entrance::Resolve.presented(&h).as_deref(), Some("tk"));
        assert_eq!(Entrance::Agent.presented(&h).as_deref(), Some("tk"));
        assert_eq!(Entrance::Proxy.presented(&h), None);
        let basic = base64::engine::general_purpose::STANDARD.encode("portal:k1");
        h.insert(
            header::PROXY_AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(Entrance::Proxy.presented(&h).as_deref(), Some("k1"));
        assert_eq!(
            Entrance::Routes.presented(&h),
            None,
            "Basic only on the proxy"
        );
        h.insert(header::PROXY_AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert_eq!(Entrance::Routes.presented(&h).as_deref(), Some("k2"));
        assert_eq!(Entrance::Resolve.presented(&h).as_deref(), Some("k2"));
        assert_eq!(Entrance::Proxy.presented(&h).as_deref(), Some("k2"));
    }

    #[test]
    fn basic_needs_a_password() {
        let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(proxy_key(&format!("Basic {}", encode("u:"))), None);
        assert_eq!(proxy_key(&format!("Basic {}", encode("nocolon"))), None);
        assert_eq!(proxy_key("Digest abc"), None);
    }

    #[test]
    fn only_the_proxy_answers_407() {
        for refusal in [Refusal::Missing, Refusal::Invalid] {
            assert_eq!(
                refusal.problem(Entrance::Proxy).code,
                ErrorCode::ProxyAuthRequired
            );
            assert_eq!(
                refusal.problem(Entrance::Routes).code,
                ErrorCode::Unauthorized
            );
        }
        assert_eq!(
            Refusal::OverCallerRate.problem(Entrance::Proxy).code,
            ErrorCode::RateLimited
        );
    }
}
