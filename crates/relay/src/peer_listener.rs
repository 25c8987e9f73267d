//! The peer listener (`[cluster] peer_listen`): requests another replica
//! forwards here because this one holds a matching agent's session.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tether_wire::body::FilteredTrailers;
use tether_wire::protocol::{self, header as th};
use tether_wire::{BoxBody, ErrorCode, Problem};

use crate::State;
use crate::call::{Call, Destination};
use crate::cluster::{OwnAnswer, header, strip_peer_fields};
use crate::dispatch::Dispatched;
use crate::request_body::BodyWatch;
use crate::splice::PendingTunnel;

/// Handles a request forwarded by a peer replica: checks the peer key
/// (failures count against the source address like bad tokens), then
/// relays it through a local session by the rules of a local request
/// (never to another peer). Its own answers that reached no agent, and
/// its refusals of the key, carry [`header::OUTCOME`]; nothing an agent
/// relays can (see [`crate::cluster::PeerOutcome`]).
pub(crate) async fn handle_peer(
    state: Arc<State>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let request_id = req
        .headers()
        .get(th::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let call = Call::with_id(request_id);
    let Some(cluster) = state.cluster.as_ref() else {
        return call.fail(ErrorCode::NoSuchRoute, "not in cluster mode");
    };
    if !cluster.admits(req.headers()) {
        let problem = if state.limiter.failed(remote.ip()) {
            tracing::debug!(%remote, "peer request refused: wrong or missing peer key (rate-limited)");
            Problem::new(
                ErrorCode::RateLimited,
                "too many failed authentications from this address",
            )
        } else {
            tracing::warn!(%remote, "peer request refused: wrong or missing peer key");
            Problem::new(ErrorCode::Unauthorized, "peer key required")
        };
        return OwnAnswer::Refused.mark(problem.into_response());
    }
    state.metrics.peer_served();
    let text = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(account) = text(header::ACCOUNT) else {
        return call.fail(ErrorCode::BadRequest, "peer request without an account");
    };
    let selector = text(header::SELECTOR)
        .map(|s| protocol::parse_tags(&s))
        .unwrap_or_default();
    let route = text(header::ROUTE);
    strip_peer_fields(req.headers_mut());
    // A CONNECT's far side is joined here, as on the first replica.
    let tunnel = (req.method() == http::Method::CONNECT).then(|| PendingTunnel::of(&mut req));
    let (parts, body) = req.into_parts();
    let request = Request::from_parts(parts, FilteredTrailers::new(body).boxed());
    let to = Destination {
        account: &account,
        selector: &selector,
        route: route.as_deref(),
    };
    match call
        .dispatch_local(&state, &to, request, &BodyWatch::default())
        .await
    {
        Dispatched::Reached(response) => match tunnel {
            Some(tunnel) => tunnel.answer(&call, response),
            None => response,
        },
        Dispatched::NoAgentHere(response) => OwnAnswer::NoAgentHere.mark(response),
    }
}
