//! Body adapters both sides put on what they forward.
//!
//! - [`FilteredTrailers`]: trailer hygiene on any body.
//! - [`GuardedBody`]: holds a guard (an in-flight count, a pending audit
//!   record) until the body ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;
use crate::headers::filter_trailers;

/// A body whose trailer section gets [`filter_trailers`]: hop-by-hop,
/// `Proxy-*`, `Tether-*` and the fields RFC 9110 §6.5.1 keeps out of
/// trailers are removed; data frames pass untouched and unbuffered.
///
/// A trailer section left empty by the filter is dropped: the body then
/// ends after its data, which every peer reads the same way. One at or
/// over [`crate::protocol::MAX_HEADER_LIST_SIZE`] ends the body with an
/// error (that stream is reset) instead of reaching a session.
#[derive(Debug)]
pub struct FilteredTrailers<B> {
    inner: B,
}

impl<B> FilteredTrailers<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner }
    }
}

impl<B> Body for FilteredTrailers<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => return Poll::Ready(None),
            };
            match frame.into_trailers() {
                Ok(mut trailers) => {
                    filter_trailers(&mut trailers);
                    // The section crosses HTTP/2 connections that take
                    // header lists below this size only; over it, h2 may
                    // end the whole connection, not this stream.
                    let size = crate::headers::header_list_size(&trailers);
                    if size >= crate::protocol::MAX_HEADER_LIST_SIZE as usize {
                        return Poll::Ready(Some(Err(format!(
                            "trailer section of {size} octets, over the {} a session carries",
                            crate::protocol::MAX_HEADER_LIST_SIZE
                        )
                        .into())));
                    }
                    if !trailers.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // Nothing left: the body ends with its data.
                }
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that holds `guard` until it ends or is dropped, whichever
/// comes first: what keeps a request counted in flight (agent selection
/// sees real load, a drain waits for it) or its audit line pending (the
/// line is written with the bytes the body carried) for as long as the
/// response streams.
///
/// The guard goes at the end of the stream (the poll that returns
/// `None`), not only when the body is dropped: a body read to its end and
/// kept does not count as in flight. An error does not release it; the
/// body is dropped after one.
#[derive(Debug)]
pub struct GuardedBody<B, G> {
    inner: B,
    guard: Option<G>,
}

impl<B, G> GuardedBody<B, G> {
    /// Wraps `inner`, holding `guard` until it ends.
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }

    /// Whether the guard is still held.
    pub fn is_guarded(&self) -> bool {
        self.guard.is_some()
    }
}

impl<B, G> Body for GuardedBody<B, G>
where
    B: Body + Unpin,
    G: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.guard = None;
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
    use http::{HeaderMap, HeaderValue};
    use http_body_util::{BodyExt, StreamBody};

    fn body_with_trailers(
        trailers: HeaderMap,
    ) -> FilteredTrailers<impl Body<Data = Bytes, Error = BoxError> + Unpin> {
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers(trailers)),
        ];
        FilteredTrailers::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn data_passes_and_trailers_are_filtered() {
        let mut t = HeaderMap::new();
        t.insert("connection", HeaderValue::from_static("close"));
        t.insert("tether-x", HeaderValue::from_static("1"));
        t.insert("proxy-authorization", HeaderValue::from_static("x"));
        t.insert("x-ok", HeaderValue::from_static("1"));
        let collected = body_with_trailers(t).collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(collected.to_bytes(), "payload");
        assert_eq!(trailers.len(), 1);
        assert_eq!(trailers["x-ok"], "1");
    }

    #[tokio::test]
    async fn a_trailer_section_left_empty_is_dropped() {
        let mut t = HeaderMap::new();
        t.insert("te", HeaderValue::from_static("trailers"));
        let collected = body_with_trailers(t).collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(collected.to_bytes(), "payload");
    }

    #[tokio::test]
    async fn a_trailer_section_over_the_session_limit_is_an_error() {
        let mut t = HeaderMap::new();
        t.insert("x-big", HeaderValue::from_str(&"b".repeat(70_000)).unwrap());
        assert!(body_with_trailers(t).collect().await.is_err());
        let mut t = HeaderMap::new();
        t.insert(
            "x-fits",
            HeaderValue::from_str(&"b".repeat(20_000)).unwrap(),
        );
        let collected = body_with_trailers(t).collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-fits"].len(), 20_000);
    }

    /// Counts how many guards are alive.
    #[derive(Debug, Clone, Default)]
    struct Guards(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    struct Guard(Guards);

    impl Guards {
        fn take(&self) -> Guard {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Guard(self.clone())
        }
        fn alive(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn two_chunks() -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"one"))),
            Ok(Frame::data(Bytes::from_static(b"two"))),
        ];
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn the_guard_is_held_while_the_body_streams_and_released_at_its_end() {
        let guards = Guards::default();
        let mut body = GuardedBody::new(two_chunks(), guards.take());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "one");
        assert_eq!(guards.alive(), 1, "held mid-body");
        let second = body.frame().await.unwrap().unwrap();
        assert_eq!(second.into_data().unwrap(), "two");
        assert_eq!(guards.alive(), 1, "held until the end is seen");
        assert!(body.frame().await.is_none());
        assert_eq!(guards.alive(), 0, "released at the end, body still alive");
        assert!(!body.is_guarded());
    }

    #[tokio::test]
    async fn a_body_dropped_early_releases_its_guard() {
        let guards = Guards::default();
        let mut body = GuardedBody::new(two_chunks(), guards.take());
        let _ = body.frame().await;
        assert_eq!(guards.alive(), 1);
        drop(body);
        assert_eq!(guards.alive(), 0);
    }

    #[tokio::test]
    async fn an_error_keeps_the_guard_until_the_body_is_dropped_and_trailers_pass() {
        let guards = Guards::default();
        let failing = StreamBody::new(futures_util::stream::iter(vec![Err::<
            Frame<Bytes>,
            BoxError,
        >("reset".into())]));
        let mut body = GuardedBody::new(failing, guards.take());
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(guards.alive(), 1);
        drop(body);
        assert_eq!(guards.alive(), 0);

        let mut t = HeaderMap::new();
        t.insert("x-ok", HeaderValue::from_static("1"));
        let body = GuardedBody::new(body_with_trailers(t), guards.take());
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-ok"], "1");
        assert_eq!(guards.alive(), 0);
    }
}
