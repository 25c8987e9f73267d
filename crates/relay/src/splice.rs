//! CONNECT tunnels: the caller's connection joined to the CONNECT stream
//! the agent (or a peer replica, which joins its own caller side the same
//! way) answered with 200.
//!
//! A CONNECT is dispatched like any request ([`Call::dispatch`]): the same
//! session choice, peer forwarding and retry rules (a CONNECT is never sent
//! again once it may have reached an agent: it is not idempotent). Only
//! the answer differs: on the agent's 200, bytes are copied both ways until
//! either side closes; anything else is passed on as the refusal it is.
//!
//! [`Call::dispatch`]: crate::call::Call::dispatch

use http::{Request, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tether_wire::protocol::header as th;
use tether_wire::{BoxBody, empty_body};

use crate::call::Call;

/// The caller's side of a CONNECT, taken from its request before the
/// request is dispatched.
pub(crate) struct PendingTunnel {
    caller: OnUpgrade,
}

impl PendingTunnel {
    /// Takes the caller's side of the CONNECT `request`.
    pub(crate) fn of<B>(request: &mut Request<B>) -> Self {
        Self {
            caller: hyper::upgrade::on(request),
        }
    }

    /// The caller's answer to the dispatched CONNECT: on 200, the tunnel is
    /// joined (in a task of its own, which keeps the request counted in
    /// flight while it lasts) and the caller gets 200 with the response's
    /// fields; any other answer is passed on as it is.
    pub(crate) fn answer(
        self,
        call: &Call,
        mut dispatched: Response<BoxBody>,
    ) -> Response<BoxBody> {
        if dispatched.status() != StatusCode::OK {
            return dispatched;
        }
        let far = hyper::upgrade::on(&mut dispatched);
        let (mut parts, body) = dispatched.into_parts();
        let request_id = call.request_id.clone();
        let agent = parts
            .headers
            .get(th::AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let caller = self.caller;
        tokio::spawn(async move {
            // The body holds the in-flight count of the session (or peer).
            let _in_flight = body;
            let (caller_io, far_io) = match tokio::join!(caller, far) {
                (Ok(c), Ok(f)) => (c, f),
                (c, f) => {
                    tracing::debug!(%request_id, caller = c.is_ok(), agent = f.is_ok(), "CONNECT upgrade failed");
                    return;
                }
            };
            let result = tokio::io::copy_bidirectional(
                &mut TokioIo::new(caller_io),
                &mut TokioIo::new(far_io),
            )
            .await;
            tracing::debug!(%request_id, %agent, ?result, "CONNECT tunnel closed");
        });
        // A 2xx answer to CONNECT has no content (RFC 9110 §9.3.6).
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        let mut response = Response::new(empty_body());
        *response.headers_mut() = parts.headers;
        response
    }
}
