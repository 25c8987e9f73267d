//! What a control request is, read from its method, path and body before
//! anything is done about it: plain functions, tested on odd input.
//!
//! Control requests come from the relay, but their bodies are bounded and
//! parsed as strictly as a caller's: a relay bug (or a compromised relay)
//! gets a 400, never a large allocation or a panic.

use http::Method;
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use tether_wire::BoxError;
use tether_wire::protocol;

/// Which control request a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ControlRequest {
    /// `POST` draining notice: the relay replica is shutting down.
    Draining,
    /// `POST` a pipeline's request for exported secrets.
    Resolve,
    /// `POST` a pushed token.
    Rotated,
    /// The agent's info document (any method: the relay sends GET).
    Info,
    /// Anything else: answered 400.
    Unknown,
}

impl ControlRequest {
    /// The control request `method` and `path` name. Paths match exactly:
    /// no trailing slash, no case folding, no normalisation.
    pub(super) fn of(method: &Method, path: &str) -> Self {
        match (method, path) {
            (&Method::POST, protocol::CONTROL_DRAINING_PATH) => Self::Draining,
            (&Method::POST, protocol::CONTROL_RESOLVE_PATH) => Self::Resolve,
            (&Method::POST, protocol::CONTROL_ROTATED_PATH) => Self::Rotated,
            (_, protocol::CONTROL_INFO_PATH) => Self::Info,
            _ => Self::Unknown,
        }
    }
}

/// The most a resolve request's body may hold.
pub(super) const RESOLVE_BODY_LIMIT: usize = 64 * 1024;

/// Why a control request's body was not read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// Over the limit (in bytes).
    #[error("body over {0} bytes")]
    TooLarge(usize),
    /// The stream failed before its end.
    #[error("body unreadable: {0}")]
    Unreadable(BoxError),
    /// Not the JSON document expected.
    #[error("body is not the expected JSON: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Reads `body` (at most `limit` bytes) as the JSON document `T`.
pub(super) async fn read_json<T, B>(body: B, limit: usize) -> Result<T, BodyError>
where
    T: DeserializeOwned,
    B: Body,
    B::Error: Into<BoxError>,
{
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| match e.downcast::<LengthLimitError>() {
            Ok(_) => BodyError::TooLarge(limit),
            Err(e) => BodyError::Unreadable(e),
        })?
        .to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{Full, StreamBody};
    use tether_wire::protocol::ResolveRequest;

    use super::*;

    async fn resolve(body: impl Into<Bytes>) -> Result<ResolveRequest, BodyError> {
        read_json(Full::new(body.into()), RESOLVE_BODY_LIMIT).await
    }

    #[test]
    fn control_paths_match_exactly_and_only_with_their_method() {
        let of = ControlRequest::of;
        assert_eq!(
            of(&Method::POST, protocol::CONTROL_DRAINING_PATH),
            ControlRequest::Draining
        );
        assert_eq!(
            of(&Method::POST, protocol::CONTROL_RESOLVE_PATH),
            ControlRequest::Resolve
        );
        assert_eq!(
            of(&Method::POST, protocol::CONTROL_ROTATED_PATH),
            ControlRequest::Rotated
        );
        assert_eq!(
            of(&Method::GET, protocol::CONTROL_INFO_PATH),
            ControlRequest::Info
        );
        assert_eq!(
            of(&Method::POST, protocol::CONTROL_INFO_PATH),
            ControlRequest::Info
        );
        for (method, path) in [
            (Method::GET, protocol::CONTROL_DRAINING_PATH),
            (Method::PUT, protocol::CONTROL_ROTATED_PATH),
            (Method::GET, protocol::CONTROL_RESOLVE_PATH),
            (Method::POST, "/v1/relay/draining/"),
            (Method::POST, "/V1/relay/draining"),
            (Method::POST, "/v1/relay/../relay/draining"),
            (Method::POST, "/v1/token/rotated%00"),
            (Method::POST, ""),
            (Method::POST, "*"),
        ] {
            assert_eq!(
                of(&method, path),
                ControlRequest::Unknown,
                "{method} {path:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_resolve_request_is_read_with_or_without_a_recipient() {
        let r = resolve(r#"{"names":["deploy"],"recipient":"age1x"}"#)
            .await
            .unwrap();
        assert_eq!(r.names, ["deploy"]);
        assert_eq!(r.recipient.as_deref(), Some("age1x"));
        let r = resolve(r#"{"names":[]}"#).await.unwrap();
        assert!(r.names.is_empty() && r.recipient.is_none());
    }

    #[tokio::test]
    async fn malformed_resolve_bodies_are_refused() {
        for body in [
            "",
            "{",
            "null",
            "[]",
            r#"{"names":"deploy"}"#,
            r#"{"names":[1]}"#,
            r#"{"recipient":"age1x"}"#,
            r#"{"names":["a"]} trailing"#,
            "\u{feff}{\"names\":[]}",
        ] {
            let result = resolve(body).await;
            assert!(
                matches!(result, Err(BodyError::Malformed(_))),
                "{body:?}: {result:?}"
            );
        }
        let not_utf8 = resolve(Bytes::from_static(b"{\"names\":[\"\xff\"]}")).await;
        assert!(
            matches!(not_utf8, Err(BodyError::Malformed(_))),
            "{not_utf8:?}"
        );
    }

    #[tokio::test]
    async fn deep_nesting_is_refused_without_exhausting_the_stack() {
        let deep = format!("{{\"names\":{}{}}}", "[".repeat(20_000), "]".repeat(20_000));
        assert!(deep.len() < RESOLVE_BODY_LIMIT);
        assert!(matches!(resolve(deep).await, Err(BodyError::Malformed(_))));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large_and_one_at_it_is_read() {
        let names = |n: usize| format!("{{\"names\":[\"{}\"]}}", "a".repeat(n));
        let overhead = names(0).len();
        let at_limit = names(RESOLVE_BODY_LIMIT - overhead);
        assert_eq!(at_limit.len(), RESOLVE_BODY_LIMIT);
        assert!(resolve(at_limit).await.is_ok());
        let over = names(RESOLVE_BODY_LIMIT - overhead + 1);
        assert!(matches!(
            resolve(over).await,
            Err(BodyError::TooLarge(RESOLVE_BODY_LIMIT))
        ));
    }

    #[tokio::test]
    async fn a_body_that_fails_midway_is_unreadable() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"{\"names\":"))),
            Err("stream reset".into()),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let result = read_json::<ResolveRequest, _>(body, RESOLVE_BODY_LIMIT).await;
        assert!(
            matches!(result, Err(BodyError::Unreadable(_))),
            "{result:?}"
        );
    }
}
