//! Upgrades (WebSocket, SPDY) from callers.
//!
//! A caller's HTTP/1.1 `Connection: upgrade` + exactly one `Upgrade`
//! token on `/v1/routes/…` or `/v1/forward/…` (admitted like every
//! request) goes to the agent as an HTTP/2 extended CONNECT (RFC 8441):
//! `:protocol` is the token, the caller's method travels in
//! [`METHOD_HEADER`] — set after every caller `Tether-*` field was
//! removed, so a caller cannot choose it. The agent checks the method
//! against the route, verifies the upstream's 101 and answers 200 with
//! the 101's handshake fields; the caller then gets its 101 and bytes flow
//! both ways. Any other answer is passed on as it is. An extended CONNECT
//! is never sent again once it may have reached an agent ([`crate::replay`]
//! only replays GET, HEAD and OPTIONS).
//!
//! HTTP/2 callers use extended CONNECT (RFC 8441) for WebSocket: the
//! same extended CONNECT goes on to the agent, which makes the WebSocket
//! key for the upstream; the caller gets 200.
//!
//! `[limits] max_upgraded_per_key` bounds the connections a key holds;
//! revoking the key closes them ([`Upgraded::close_key`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tether_wire::splice::splice;
use tether_wire::upgrade::{METHOD_HEADER, UpgradeToken, requested, requested_h2};
use tether_wire::{BoxBody, ErrorCode, empty_body};
use tokio_util::sync::CancellationToken;

use crate::State;
use crate::auth::Identity;
use crate::call::Call;

/// The upgraded connections open on this relay, by API key id.
#[derive(Default)]
pub(crate) struct Upgraded {
    by_key: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
    next: AtomicU64,
}

impl Upgraded {
    /// A slot for one more connection of `key`, unless it holds `max`.
    fn open(self: &Arc<Self>, key: &str, max: Option<usize>) -> Option<Slot> {
        let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(key.to_owned()).or_default();
        if max.is_some_and(|max| open.len() >= max) {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        open.insert(id, stop.clone());
        Some(Slot {
            registry: self.clone(),
            key: key.to_owned(),
            id,
            stop,
        })
    }

    /// Closes every upgraded connection of `key` (revoked); how many.
    pub(crate) fn close_key(&self, key: &str) -> usize {
        let map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.get(key).map(|open| open.values().collect::<Vec<_>>());
        open.map_or(0, |open| {
            open.iter().for_each(|stop| stop.cancel());
            open.len()
        })
    }
}

/// One upgraded connection counted against its key; uncounted on drop.
struct Slot {
    registry: Arc<Upgraded>,
    key: String,
    id: u64,
    /// Cancelled when the key is revoked.
    stop: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .registry
            .by_key
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&self.key) {
            open.remove(&self.id);
            if open.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

/// A caller's upgrade, taken from its request before the request is
/// dispatched.
pub(crate) struct CallerUpgrade {
    token: UpgradeToken,
    method: Method,
    /// An HTTP/2 caller's extended CONNECT: answered 200, without the
    /// HTTP/1.1 handshake fields (the agent made the WebSocket key).
    extended: bool,
    caller: OnUpgrade,
    slot: Slot,
}

impl CallerUpgrade {
    /// `Ok(None)` for an ordinary request; the caller's upgrade, or why
    /// the relay refuses it (400 malformed, 429 over the key's limit).
    pub(crate) fn of<B>(
        state: &State,
        caller: &Identity,
        req: &mut Request<B>,
    ) -> Result<Option<Self>, (ErrorCode, String)> {
        let h2 = requested_h2(req);
        let token = match (h2.clone(), requested(req.version(), req.headers())) {
            (Some(Ok(token)), _) if token.is_websocket() => token,
            (Some(Ok(token)), _) => {
                return Err((
                    ErrorCode::BadRequest,
                    format!("extended CONNECT for {token}: only websocket is defined over HTTP/2"),
                ));
            }
            (Some(Err(e)), _) => return Err((ErrorCode::BadRequest, e.to_string())),
            (None, Ok(Some(token))) => token,
            (None, Ok(None)) => return Ok(None),
            (None, Err(e)) => return Err((ErrorCode::BadRequest, e.to_string())),
        };
        // RFC 8441 §5: the extended CONNECT stands for the GET of RFC 6455.
        let method = if h2.is_some() {
            Method::GET
        } else {
            req.method().clone()
        };
        let max = state.config.limits.max_upgraded_per_key;
        let Some(slot) = state.upgraded.open(&caller.credential_id, max) else {
            return Err((
                ErrorCode::RateLimited,
                format!(
                    "this API key holds {} upgraded connections ([limits] max_upgraded_per_key)",
                    max.unwrap_or_default()
                ),
            ));
        };
        Ok(Some(Self {
            token,
            method,
            extended: h2.is_some(),
            caller: hyper::upgrade::on(req),
            slot,
        }))
    }

    /// Turns the head the relay prepared for the agent (caller fields
    /// cleaned, relay fields set) into the extended CONNECT.
    pub(crate) fn prepare(&self, parts: &mut Parts) {
        if let Ok(method) = HeaderValue::from_str(self.method.as_str()) {
            parts.headers.insert(METHOD_HEADER, method);
        }
        parts.method = Method::CONNECT;
        parts.headers.remove(header::CONTENT_LENGTH);
        parts
            .extensions
            .insert(hyper::ext::Protocol::from(self.token.as_str()));
    }

    /// The caller's answer to the dispatched extended CONNECT: on the
    /// agent's 200 (a 101 it verified), 101 with the upstream's handshake
    /// fields and the connection joined in a task of the relay's tracker
    /// (drain waits for it); anything else as it is.
    pub(crate) fn answer(
        self,
        state: &State,
        call: &Call,
        mut dispatched: Response<BoxBody>,
    ) -> Response<BoxBody> {
        if dispatched.status() != StatusCode::OK {
            return dispatched;
        }
        let far = hyper::upgrade::on(&mut dispatched);
        let (parts, body) = dispatched.into_parts();
        let mut response = Response::new(empty_body());
        *response.headers_mut() = parts.headers;
        let headers = response.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        if self.extended {
            headers.remove("sec-websocket-accept");
        } else {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Ok(token) = HeaderValue::from_str(self.token.as_str()) {
                headers.insert(header::UPGRADE, token);
            }
        }
        let request_id = call.request_id.clone();
        let Self {
            token,
            caller,
            slot,
            ..
        } = self;
        state.tracker.spawn(async move {
            // The body holds the request's in-flight count on its session.
            let _in_flight = body;
            let (caller_io, far_io) = match tokio::join!(caller, far) {
                (Ok(c), Ok(f)) => (c, f),
                (c, f) => {
                    tracing::debug!(%request_id, caller = c.is_ok(), agent = f.is_ok(),
                        "upgrade never joined");
                    return;
                }
            };
            let spliced = splice(
                TokioIo::new(caller_io),
                TokioIo::new(far_io),
                None,
                &slot.stop,
            )
            .await;
            tracing::info!(%request_id, key = %slot.key, protocol = %token,
                to_agent = spliced.a_to_b, from_agent = spliced.b_to_a,
                end = spliced.end.as_str(), "upgraded connection closed");
        });
        response
    }
}
