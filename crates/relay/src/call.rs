//! One caller request's context: its id, whom it is for, the relay's own
//! answers to it, and the fields the relay stamps on what it sends and
//! returns.

use http::{HeaderMap, HeaderValue, Response};
use tether_wire::protocol::header as th;
use tether_wire::{BoxBody, ErrorCode, Problem};

use crate::admission::{Entrance, Refusal};
use crate::auth::Identity;

/// Whom a request is for: an agent of `account` having every tag of
/// `selector` and serving `route` (`None`: a control request, any agent).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Destination<'a> {
    pub(crate) account: &'a str,
    pub(crate) selector: &'a [String],
    pub(crate) route: Option<&'a str>,
}

/// One caller request's id, and its problem answers.
pub(crate) struct Call {
    pub(crate) request_id: String,
}

impl Call {
    pub(crate) fn new() -> Self {
        Self::with_id(None)
    }

    /// A call continuing one that a peer replica started (same id), or a
    /// new one.
    pub(crate) fn with_id(request_id: Option<String>) -> Self {
        Self {
            request_id: request_id
                .filter(|id| id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
                .unwrap_or_else(new_request_id),
        }
    }

    /// A problem carrying the request id.
    fn problem(&self, code: ErrorCode, detail: &str) -> Problem {
        Problem::new(code, detail).with_request_id(self.request_id.clone())
    }

    /// The response for `problem`, with the request id header too.
    pub(crate) fn respond(&self, problem: Problem) -> Response<BoxBody> {
        // Every answer the relay makes itself is in its log, findable by
        // the id the caller got.
        tracing::info!(request_id = %self.request_id, status = problem.code.status().as_u16(),
            code = %problem.code, detail = %problem.detail, "answered by the relay");
        let mut response = problem.into_response();
        self.stamp(response.headers_mut());
        response
    }

    /// A problem response carrying the request id (body and header).
    pub(crate) fn fail(&self, code: ErrorCode, detail: &str) -> Response<BoxBody> {
        self.respond(self.problem(code, detail))
    }

    /// The answer to a credential refused at `entrance`.
    pub(crate) fn refuse(&self, refusal: Refusal, entrance: Entrance) -> Response<BoxBody> {
        self.respond(
            refusal
                .problem(entrance)
                .with_request_id(self.request_id.clone()),
        )
    }

    /// Adds `Tether-Request-Id` to a response head.
    pub(crate) fn stamp(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            headers.insert(th::REQUEST_ID, v);
        }
    }

    /// The headers the relay adds to everything it sends an agent.
    pub(crate) fn tag(&self, headers: &mut HeaderMap, caller: &Identity) {
        self.stamp(headers);
        if let Ok(v) = HeaderValue::from_str(&caller.credential_id) {
            headers.insert(th::CALLER_KEY_ID, v);
        }
    }
}

/// 128 random bits as hex: unique enough to grep logs on both sides.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
