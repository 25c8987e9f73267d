//! A caller's request body on its way to an agent, watched.
//!
//! When a request body fails, hyper's HTTP/2 client ends the stream with a
//! RST_STREAM of its own, and the response future only sees that reset:
//! *why* the body failed is gone. Without it a body over `[limits]
//! max_body_bytes` or a malformed chunked body looked like a lost session
//! (502 `agent_lost`). [`CallerBody`] keeps the reason in a [`BodyWatch`]
//! the dispatcher reads, so the caller gets 413 or 400 and the log says
//! what happened.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tether_wire::body::FilteredTrailers;
use tether_wire::{BoxBody, BoxError};

/// Why a caller's request body ended before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// It went over `[limits] max_body_bytes` (the cap, in bytes).
    TooLarge(u64),
    /// It could not be read: malformed framing (a bad chunk-size line),
    /// or the caller stopped sending. The reader's error, for the log.
    Unreadable(String),
}

/// Where a [`CallerBody`] leaves its fault; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct BodyWatch(Arc<OnceLock<BodyFault>>);

impl BodyWatch {
    /// The fault of the watched body, if it failed.
    pub(crate) fn fault(&self) -> Option<BodyFault> {
        self.0.get().cloned()
    }
}

/// The body a caller sent, capped at `[limits] max_body_bytes`, its
/// trailers filtered ([`FilteredTrailers`]), its failure recorded.
pub(crate) struct CallerBody {
    inner: Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send + Sync>>,
    cap: Option<u64>,
    watch: BodyWatch,
}

impl CallerBody {
    /// Wraps `body`; the watch tells later why it failed, if it did.
    pub(crate) fn wrap<B>(body: B, cap: Option<u64>) -> (BoxBody, BodyWatch)
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let inner: Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send + Sync>> = match cap {
            Some(cap) => Box::pin(Limited::new(
                body,
                usize::try_from(cap).unwrap_or(usize::MAX),
            )),
            None => Box::pin(body.map_err(Into::into)),
        };
        let watch = BodyWatch::default();
        let watched = Self {
            inner,
            cap,
            watch: watch.clone(),
        };
        (FilteredTrailers::new(watched).boxed(), watch)
    }

    fn fault_of(&self, e: &BoxError) -> BodyFault {
        match (e.downcast_ref::<LengthLimitError>(), self.cap) {
            (Some(_), Some(cap)) => BodyFault::TooLarge(cap),
            _ => BodyFault::Unreadable(e.to_string()),
        }
    }
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(self.inner.as_mut().poll_frame(cx));
        if let Some(Err(e)) = &frame {
            let fault = self.fault_of(e);
            // The first fault is the reason; later polls change nothing.
            let _ = self.watch.0.set(fault);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunks(
        parts: Vec<Result<&'static str, &'static str>>,
    ) -> impl Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .into_iter()
            .map(|p| match p {
                Ok(data) => Ok(Frame::data(Bytes::from_static(data.as_bytes()))),
                Err(e) => Err(BoxError::from(e)),
            })
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_recorded_as_too_large() {
        let (body, watch) = CallerBody::wrap(chunks(vec![Ok("12345"), Ok("678")]), Some(6));
        assert!(body.collect().await.is_err());
        assert_eq!(watch.fault(), Some(BodyFault::TooLarge(6)));
    }

    #[tokio::test]
    async fn a_failing_body_is_recorded_as_unreadable() {
        let (body, watch) = CallerBody::wrap(
            chunks(vec![Ok("12"), Err("invalid chunk size line")]),
            Some(100),
        );
        assert!(body.collect().await.is_err());
        assert_eq!(
            watch.fault(),
            Some(BodyFault::Unreadable("invalid chunk size line".into()))
        );
    }

    #[tokio::test]
    async fn a_whole_body_leaves_no_fault() {
        let (body, watch) = CallerBody::wrap(chunks(vec![Ok("12"), Ok("34")]), None);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "1234");
        assert_eq!(watch.fault(), None);
    }
}
