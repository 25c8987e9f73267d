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
        let refused = h2_error(error)
            .filter(|h2| h2.is_library())
            .map(ToString::to_string);
        Self::classify(body.fault(), refused)
    }

    /// The loss, from what is known of it: the caller's body fault if it
    /// failed (that comes first: hyper reports it as a reset of its own),
    /// else what our HTTP/2 client refused, else the session went away.
    fn classify(body_fault: Option<BodyFault>, refused_by_us: Option<String>) -> Self {
        match (body_fault, refused_by_us) {
            (Some(fault), _) => Self::Body(fault),
            (None, Some(why)) => Self::Refused(why),
            (None, None) => Self::SessionLost,
        }
    }

    /// What becomes of the request: only a session lost under a request
    /// that may be sent twice ([`Replay`]) sends it again.
    pub(crate) fn verdict(self, replay: Option<&Replay>) -> Verdict<'_> {
        match (self, replay) {
            (Self::Body(fault), _) => Verdict::Answer(fault),
            (Self::SessionLost, Some(again)) => Verdict::Resend(again),
            (loss, _) => Verdict::Lost(loss),
        }
    }
}

/// What the dispatcher does with a request that was sent and got no
/// response.
pub(crate) enum Verdict<'r> {
    /// Answer the caller about its body (413 or 400); never sent again.
    Answer(BodyFault),
    /// Send this head again, to another session or peer.
    Resend(&'r Replay),
    /// Give up: `502 agent_lost`. Why, for the log.
    Lost(Loss),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, body: &'static str) -> Request<BoxBody> {
        let mut request = Request::new(if body.is_empty() {
            tether_wire::empty_body()
        } else {
            tether_wire::full_body(body)
        });
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from_static("http://route.tether.invalid/build?x=1");
        request
            .headers_mut()
            .insert("x-caller", http::HeaderValue::from_static("1"));
        request
    }

    #[test]
    fn only_bodiless_get_head_and_options_may_be_sent_twice() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(
                Replay::of(&request(method.clone(), "")).is_some(),
                "{method}"
            );
            assert!(
                Replay::of(&request(method.clone(), "x")).is_none(),
                "{method} with a body"
            );
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(
                Replay::of(&request(method.clone(), "")).is_none(),
                "{method}"
            );
        }
    }

    #[test]
    fn the_replayed_request_has_the_same_head_and_no_body() {
        let replay = Replay::of(&request(Method::GET, "")).unwrap();
        let again = replay.request();
        assert_eq!(again.method(), Method::GET);
        assert_eq!(again.uri(), "http://route.tether.invalid/build?x=1");
        assert_eq!(again.headers()["x-caller"], "1");
        assert_eq!(again.version(), http::Version::HTTP_2);
        assert!(again.body().is_end_stream());
    }

    #[test]
    fn a_body_fault_is_the_loss_whatever_http2_said() {
        let fault = BodyFault::TooLarge(10);
        assert_eq!(
            Loss::classify(Some(fault.clone()), Some("GOAWAY".into())),
            Loss::Body(fault)
        );
        assert_eq!(
            Loss::classify(None, Some("header list too big".into())),
            Loss::Refused("header list too big".into())
        );
        assert_eq!(Loss::classify(None, None), Loss::SessionLost);
    }

    #[test]
    fn only_a_lost_session_under_a_replayable_request_resends_it() {
        let replay = Replay::of(&request(Method::GET, "")).unwrap();
        assert!(matches!(
            Loss::SessionLost.verdict(Some(&replay)),
            Verdict::Resend(_)
        ));
        assert!(matches!(
            Loss::SessionLost.verdict(None),
            Verdict::Lost(Loss::SessionLost)
        ));
        // What our own client refused would break the next session too.
        assert!(matches!(
            Loss::Refused("too big".into()).verdict(Some(&replay)),
            Verdict::Lost(Loss::Refused(_))
        ));
        // The caller's body is the caller's fault, answered, never resent.
        let fault = BodyFault::Unreadable("bad chunk".into());
        for replay in [Some(&replay), None] {
            assert!(matches!(
                Loss::Body(fault.clone()).verdict(replay),
                Verdict::Answer(BodyFault::Unreadable(_))
            ));
        }
    }
}
