//! Whether a request that got no response may be sent again.
//!
//! A request that never left this relay goes to another session as it is.
//! One that may have reached an agent is sent again only if it is
//! idempotent and bodiless ([`Replay`]), and only if what ended it was the
//! session going away under it ([`Loss::SessionLost`]): the agent's GOAWAY,
//! a lost connection. Never when its own answer ended it: a response our
//! HTTP/2 client refused (a header block far over
//! [`MAX_HEADER_LIST_SIZE`](tether_wire::protocol::MAX_HEADER_LIST_SIZE)
//! ends the whole session with a GOAWAY of ours) would do the same to the
//! next session, and the next, while the upstream serves it each time.

use std::error::Error as _;

use http::{Method, Request, Uri};
use http_body::Body as _;
use tether_wire::BoxBody;

use crate::request_body::{BodyFault, BodyWatch};

/// The head of an idempotent, bodiless request, kept so it can be sent
/// again on another session if its session dies under it.
pub(crate) struct Replay {
    method: Method,
    uri: Uri,
    headers: http::HeaderMap,
}

impl Replay {
    /// The head of `request`, if it may be sent twice: GET, HEAD or
    /// OPTIONS with an empty body.
    pub(crate) fn of(request: &Request<BoxBody>) -> Option<Self> {
        let idempotent = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        (idempotent && request.body().is_end_stream()).then(|| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        })
    }

    /// The request again.
    pub(crate) fn request(&self) -> Request<BoxBody> {
        let mut request = Request::new(tether_wire::empty_body());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        *request.version_mut() = http::Version::HTTP_2;
        request
    }
}

/// Why a request that was sent got no response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Loss {
    /// The caller's body failed (too large, unreadable): the caller's
    /// fault, answered 413 or 400, never sent again.
    Body(BodyFault),
    /// Our HTTP/2 client refused what the other side sent (h2 says the
    /// library itself reset the stream or sent GOAWAY: a header block over
    /// our limit, a protocol violation). The answer to this request, or
    /// to another on the same session, broke the connection; which one
    /// cannot be told, so none of them is sent again. What h2 said.
    Refused(String),
    /// The session went away under the request (the peer's GOAWAY or
    /// reset, a lost connection, a missed PING): sent again if it may be.
    SessionLost,
}

impl Loss {
    /// Classifies the error of a request that was sent, given its body's
    /// watch.
    pub(crate) fn of(error: &hyper::Error, body: &BodyWatch) -> Self {
        if let Some(fault) = body.fault() {
            return Self::Body(fault);
        }
        if let Some(h2) = h2_error(error).filter(|h2| h2.is_library()) {
            return Self::Refused(h2.to_string());
        }
        Self::SessionLost
    }
}

/// The HTTP/2 error in `error`'s source chain, if any.
fn h2_error(error: &hyper::Error) -> Option<&h2::Error> {
    let mut source = error.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
}
