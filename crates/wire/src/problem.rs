//! Stable error codes and `application/problem+json` (RFC 9457) responses.
//!
//! Every error the relay or the agent generates (as opposed to one an
//! upstream returns) is a problem document carrying one of these codes, so
//! scripts can branch on `code` rather than on prose.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::{BoxBody, full_body};

/// Media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The stable error codes of the external contract (DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: a malformed request to a relay or agent API.
    BadRequest,
    /// 401: missing or bad API key or agent token.
    Unauthorized,
    /// 403: refused by policy (route rule, allowlist, secret binding).
    Denied,
    /// 404: no connected agent serves the named route.
    NoSuchRoute,
    /// 407: the proxy listener wants credentials.
    ProxyAuthRequired,
    /// 413: request body over the configured cap.
    PayloadTooLarge,
    /// 431: request headers over the cap.
    HeadersTooLarge,
    /// 429: too many requests (or failed authentications).
    RateLimited,
    /// 426: the agent offered no protocol version the relay speaks.
    UnsupportedVersion,
    /// 502: the agent could not reach the internal service.
    UpstreamUnreachable,
    /// 502: the agent session died while the request was in flight.
    AgentLost,
    /// 502: a secret the request needs could not be resolved.
    SecretUnavailable,
    /// 503: no agent connected for the account and selector.
    NoAgent,
    /// 504: the internal service did not answer in time.
    UpstreamTimeout,
    /// 500: the relay or agent failed in a way the caller cannot fix
    /// (e.g. its store is unreachable). Details are in its log.
    Internal,
    /// 502: the internal service's response headers (or trailers) are over
    /// [`crate::protocol::MAX_HEADER_LIST_SIZE`]; the agent answers this
    /// instead of sending a header block the session would die of.
    UpstreamHeadersTooLarge,
    /// 503: the agent cannot write its audit file (`[audit] required`):
    /// it refuses requests rather than serve them without an audit line.
    AuditUnavailable,
    /// 401: the end-user token (`[identity] header`) is missing or
    /// invalid; the answer carries `WWW-Authenticate: Bearer
    /// error="invalid_token"`.
    IdentityInvalid,
    /// 502: the agent has no usable keys of the end users' issuer (never
    /// fetched, or unreachable for longer than `jwks_max_age`).
    IdentityUnavailable,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::NoSuchRoute => StatusCode::NOT_FOUND,
            Self::ProxyAuthRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Self::UpstreamUnreachable | Self::AgentLost | Self::SecretUnavailable => {
                StatusCode::BAD_GATEWAY
            }
            Self::NoAgent => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UpstreamHeadersTooLarge => StatusCode::BAD_GATEWAY,
            Self::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::IdentityInvalid => StatusCode::UNAUTHORIZED,
            Self::IdentityUnavailable => StatusCode::BAD_GATEWAY,
        }
    }

    /// The code as it appears in the `code` member.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Denied => "denied",
            Self::NoSuchRoute => "no_such_route",
            Self::ProxyAuthRequired => "proxy_auth_required",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::RateLimited => "rate_limited",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::AgentLost => "agent_lost",
            Self::SecretUnavailable => "secret_unavailable",
            Self::NoAgent => "no_agent",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal => "internal",
            Self::UpstreamHeadersTooLarge => "upstream_headers_too_large",
            Self::AuditUnavailable => "audit_unavailable",
            Self::IdentityInvalid => "identity_invalid",
            Self::IdentityUnavailable => "identity_unavailable",
        }
    }

    /// A short human title for the problem document.
    pub fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad request",
            Self::Unauthorized => "Missing or invalid credentials",
            Self::Denied => "Denied by policy",
            Self::NoSuchRoute => "No such route",
            Self::ProxyAuthRequired => "Proxy authentication required",
            Self::PayloadTooLarge => "Request body too large",
            Self::HeadersTooLarge => "Request headers too large",
            Self::RateLimited => "Too many requests",
            Self::UnsupportedVersion => "Unsupported protocol version",
            Self::UpstreamUnreachable => "Upstream unreachable",
            Self::AgentLost => "Agent lost",
            Self::SecretUnavailable => "Secret unavailable",
            Self::NoAgent => "No agent connected",
            Self::UpstreamTimeout => "Upstream timeout",
            Self::Internal => "Internal error",
            Self::UpstreamHeadersTooLarge => "Upstream response headers too large",
            Self::AuditUnavailable => "Audit trail unavailable",
            Self::IdentityInvalid => "Missing or invalid end-user token",
            Self::IdentityUnavailable => "End-user identity unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem document (RFC 9457) with Tether's `code` extension member.
/// `type`, `title` and `status` follow from the code (see [`Problem::to_json`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// What went wrong in this occurrence. Never holds a secret.
    pub detail: String,
    /// The relay's request id, when there is one.
    pub request_id: Option<String>,
    /// Secret resolution: the names refused (unknown, or not exported to
    /// the requested recipient).
    pub refused: Option<Vec<String>>,
}

/// The document as serialised.
#[derive(Serialize)]
struct Document<'a> {
    /// URI naming the problem type: `urn:tether:problem:<code>`.
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    code: ErrorCode,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a [String]>,
}

impl Problem {
    /// A problem of kind `code` with an occurrence-specific `detail`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            request_id: None,
            refused: None,
        }
    }

    /// Sets the request id member.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// The JSON document.
    pub fn to_json(&self) -> Bytes {
        let document = Document {
            kind: format!("urn:tether:problem:{}", self.code.as_str()),
            title: self.code.title(),
            status: self.code.status().as_u16(),
            code: self.code,
            detail: &self.detail,
            request_id: self.request_id.as_deref(),
            refused: self.refused.as_deref(),
        };
        // Serialising strings and integers cannot fail.
        Bytes::from(serde_json::to_vec(&document).unwrap_or_default())
    }

    /// A complete HTTP response carrying this problem.
    pub fn into_response(self) -> Response<BoxBody> {
        let status = self.code.status();
        let body = self.to_json();
        let mut response = Response::new(full_body(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.code == ErrorCode::ProxyAuthRequired {
            response.headers_mut().insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tether\", Bearer"),
            );
        }
        if self.code == ErrorCode::IdentityInvalid {
            // RFC 6750 §3.1.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if self.code == ErrorCode::RateLimited {
            // Every budget we keep refills within a second.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_json() {
        let all = [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Denied,
            ErrorCode::NoSuchRoute,
            ErrorCode::ProxyAuthRequired,
            ErrorCode::PayloadTooLarge,
            ErrorCode::HeadersTooLarge,
            ErrorCode::RateLimited,
            ErrorCode::UnsupportedVersion,
            ErrorCode::UpstreamUnreachable,
            ErrorCode::AgentLost,
            ErrorCode::SecretUnavailable,
            ErrorCode::NoAgent,
            ErrorCode::UpstreamTimeout,
            ErrorCode::Internal,
            ErrorCode::UpstreamHeadersTooLarge,
            ErrorCode::AuditUnavailable,
            ErrorCode::IdentityInvalid,
            ErrorCode::IdentityUnavailable,
        ];
        for code in all {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn response_has_status_type_and_code() {
        let response = Problem::new(ErrorCode::NoAgent, "no agent for account")
            .with_request_id("abc")
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let problem = Problem::new(ErrorCode::NoAgent, "x").with_request_id("abc");
        let doc: serde_json::Value = serde_json::from_slice(&problem.to_json()).unwrap();
        assert_eq!(doc["code"], "no_agent");
        assert_eq!(doc["status"], 503);
        assert_eq!(doc["type"], "urn:tether:problem:no_agent");
        assert_eq!(doc["request_id"], "abc");
    }
}
