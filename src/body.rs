//! The body adapter on both directions of a relayed request: it counts the
//! bytes for the audit line and applies [`crate::hygiene`]'s trailer
//! rules. On the response, the pending audit record rides along in a
//! [`GuardedBody`](tether_wire::body::GuardedBody), written when the body
//! ends or is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use http::HeaderName;
use http_body::{Body, Frame, SizeHint};
use tether_wire::{BoxBody, BoxError};

use crate::audit;
use crate::hygiene;

/// Which way a [`Counted`] body flows, and the trailer rule of that way.
pub enum Direction {
    /// The caller's request body, towards the upstream; the fields the
    /// route writes itself never come from a caller's trailer.
    In {
        /// The route's own header names.
        route_writes: Arc<[HeaderName]>,
    },
    /// The upstream's response body, back to the relay.
    Out,
}

/// A body that counts its bytes and filters its trailers.
pub struct Counted {
    inner: BoxBody,
    bytes: Arc<audit::Bytes>,
    direction: Direction,
}

impl Counted {
    /// Wraps `inner`, counting into `bytes`.
    pub fn new(inner: BoxBody, bytes: Arc<audit::Bytes>, direction: Direction) -> Self {
        Self {
            inner,
            bytes,
            direction,
        }
    }

    /// A trailer section that may not pass ends the body with an error:
    /// on a request that aborts the upstream call, on a response it resets
    /// that one stream. Its head has gone already, so there is no status
    /// left to answer with.
    fn admit_trailers(&self, trailers: &mut http::HeaderMap) -> Result<(), BoxError> {
        match &self.direction {
            Direction::In { route_writes } => {
                hygiene::admit_request_trailers(trailers, route_writes).map_err(|e| {
                    tracing::info!(error = %e, "request trailers refused; request aborted");
                    BoxError::from(e)
                })
            }
            Direction::Out => hygiene::admit_response_trailers(trailers).map_err(|e| {
                tracing::warn!(error = %e, "upstream trailers refused; stream reset");
                BoxError::from(e)
            }),
        }
    }
}

impl Body for Counted {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                let counter = match self.direction {
                    Direction::In { .. } => &self.bytes.inbound,
                    Direction::Out => &self.bytes.outbound,
                };
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Err(frame) => frame,
        };
        match frame.into_trailers() {
            Ok(mut trailers) => Poll::Ready(Some(
                self.admit_trailers(&mut trailers)
                    .map(|()| Frame::trailers(trailers)),
            )),
            // A frame kind this body does not know: passed on as it is.
            Err(frame) => Poll::Ready(Some(Ok(frame))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
