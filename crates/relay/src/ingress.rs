//! The caller API: `ANY /v1/routes/{route}/{path…}` and
//! `POST /v1/secrets/resolve`.
//!
//! Authenticates the caller's API key (`Proxy-Authorization: Bearer`,
//! [`crate::admission`]) and relays the request ([`relay`], also the proxy
//! listener's path) to a connected agent of the key's account, over that
//! agent's HTTP/2 session or a peer replica's ([`crate::dispatch`]).
//! Bodies stream both ways; nothing is buffered.

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Authority;
use http::{Request, Response, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tether_wire::headers::{strip_hop_by_hop, strip_tether};
use tether_wire::protocol::{self, ResolveRequest, header as th};
use tether_wire::{BoxBody, ErrorCode};

use crate::State;
use crate::admission::{self, Entrance};
use crate::auth::Identity;
use crate::call::{Call, Destination};
use crate::request_body::{BodyWatch, CallerBody};
use crate::splice::PendingTunnel;
use crate::upgrade::CallerUpgrade;

/// Handles a caller request under `/v1/routes/` (a named route) or
/// `/v1/forward/` (forward mode: `{scheme}/{host[:port]}/{path…}`, to an
/// agent that serves it, which decides whether the target is allowed).
pub(crate) async fn handle_route(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let call = Call::new();
    let caller = match admission::identify(&state, Entrance::Routes, req.headers(), remote).await {
        Ok(caller) => caller,
        Err(refused) => return call.refuse(refused, Entrance::Routes),
    };
    let path = req.uri().path();
    let ask = if let Some(rest) = path.strip_prefix(protocol::FORWARD_PREFIX) {
        let path_and_query = match req.uri().query() {
            Some(q) => format!("/{rest}?{q}"),
            None => format!("/{rest}"),
        };
        Ask::Forward { path_and_query }
    } else {
        let Some((route, _)) = protocol::split_route_path(path) else {
            return call.fail(ErrorCode::NoSuchRoute, "expected /v1/routes/{route}/{path}");
        };
        Ask::Route(route.to_owned())
    };
    relay(&state, &call, &caller, req, ask).await
}

/// What a relayed request asks an agent for.
pub(crate) enum Ask {
    /// A named route; the request's own path and query go as they are.
    Route(String),
    /// Forward mode; the agent's path is `/{scheme}/{host[:port]}/{path…}`
    /// with the query.
    Forward { path_and_query: String },
    /// A CONNECT tunnel to `host:port` through a forward-mode agent.
    Connect(Authority),
}

/// Relays an authenticated caller's request to an agent of its account
/// (and `Tether-Selector`): the one path for routes, forward mode, and
/// the proxy listener's absolute-form requests and CONNECT tunnels.
pub(crate) async fn relay(
    state: &State,
    call: &Call,
    caller: &Identity,
    mut req: Request<Incoming>,
    ask: Ask,
) -> Response<BoxBody> {
    let selector = selector(req.headers());
    let (route, authority, path_and_query) = match ask {
        Ask::Route(route) => {
            let pq = req
                .uri()
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned();
            (route, protocol::TUNNEL_AUTHORITY, pq)
        }
        Ask::Forward { path_and_query } => (
            protocol::FORWARD_AUTHORITY.to_owned(),
            protocol::FORWARD_AUTHORITY,
            path_and_query,
        ),
        Ask::Connect(target) => {
            // Only the tunnel's target and the relay's own fields reach
            // the agent; the caller's fields stay with the proxy hop.
            let Ok(uri) = target.as_str().parse::<Uri>() else {
                return call.fail(ErrorCode::BadRequest, "CONNECT needs host:port");
            };
            let tunnel = PendingTunnel::of(&mut req);
            let mut connect = Request::new(tether_wire::empty_body());
            *connect.method_mut() = http::Method::CONNECT;
            *connect.uri_mut() = uri;
            call.tag(connect.headers_mut(), caller);
            let to = Destination {
                account: &caller.account,
                selector: &selector,
                route: Some(protocol::FORWARD_AUTHORITY),
            };
            let response = call
                .dispatch(state, &to, connect, &BodyWatch::default())
                .await;
            tracing::debug!(request_id = %call.request_id, account = %caller.account,
                status = response.status().as_u16(), "CONNECT relayed");
            return tunnel.answer(call, response);
        }
    };

    let cap = state.config.limits.max_body_bytes;
    if let Some(cap) = cap {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap) {
            return call.fail(
                ErrorCode::PayloadTooLarge,
                &format!("request body over {cap} bytes"),
            );
        }
    }

    let upgrade = match CallerUpgrade::of(state, caller, &mut req) {
        Ok(upgrade) => upgrade,
        Err((code, detail)) => return call.fail(code, &detail),
    };
    let (mut parts, body) = req.into_parts();
    let Ok(uri) = Uri::try_from(format!("http://{authority}{path_and_query}")) else {
        return call.fail(ErrorCode::BadRequest, "unusable request target");
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers);
    strip_tether(&mut parts.headers);
    parts.headers.remove(header::HOST);
    call.tag(&mut parts.headers, caller);
    if let Some(upgrade) = upgrade {
        upgrade.prepare(&mut parts);
        let to = Destination {
            account: &caller.account,
            selector: &selector,
            route: Some(&route),
        };
        let request = Request::from_parts(parts, tether_wire::empty_body());
        let response = call
            .dispatch(state, &to, request, &BodyWatch::default())
            .await;
        return upgrade.answer(state, call, response);
    }
    let (body, watch) = CallerBody::wrap(body, cap);
    let to = Destination {
        account: &caller.account,
        selector: &selector,
        route: Some(&route),
    };
    let response = call
        .dispatch(state, &to, Request::from_parts(parts, body), &watch)
        .await;
    tracing::debug!(request_id = %call.request_id, account = %caller.account, route,
        status = response.status().as_u16(), "relayed");
    response
}

/// Handles `POST /v1/secrets/resolve`: a pipeline asks an agent of its
/// account for exported secrets, sealed by the agent to an age recipient
/// the customer configured. The relay only ever sees ciphertext.
pub(crate) async fn handle_resolve(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let call = Call::new();
    let caller = match admission::identify(&state, Entrance::Resolve, req.headers(), remote).await {
        Ok(caller) => caller,
        Err(refused) => return call.refuse(refused, Entrance::Resolve),
    };
    if req.method() != http::Method::POST {
        return call.fail(ErrorCode::BadRequest, "use POST");
    }
    let selector = selector(req.headers());
    let body = match Limited::new(req.into_body(), RESOLVE_MAX_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return call.fail(ErrorCode::PayloadTooLarge, "resolve request over 64 KiB"),
    };
    let request: ResolveRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return call.fail(
                ErrorCode::BadRequest,
                &format!("expected {{\"names\": [...], \"recipient\": \"age1...\"}}: {e}"),
            );
        }
    };
    if request.recipient.is_none() {
        return call.fail(
            ErrorCode::BadRequest,
            "recipient is required: secrets are only released sealed to an age recipient",
        );
    }
    let uri = format!(
        "http://{}{}",
        protocol::CONTROL_AUTHORITY,
        protocol::CONTROL_RESOLVE_PATH
    );
    let mut control = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(tether_wire::full_body(body))
        .unwrap_or_default();
    call.tag(control.headers_mut(), &caller);
    let response = call
        .dispatch(
            &state,
            &Destination {
                account: &caller.account,
                selector: &selector,
                route: None,
            },
            control,
            &BodyWatch::default(),
        )
        .await;
    tracing::info!(request_id = %call.request_id, account = %caller.account,
        caller_key_id = %caller.credential_id, names = ?request.names,
        status = response.status().as_u16(), "secret resolution");
    response
}

/// The caller's `Tether-Selector` tags.
pub(crate) fn selector(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get(th::SELECTOR)
        .and_then(|v| v.to_str().ok())
        .map(protocol::parse_tags)
        .unwrap_or_default()
}

/// Largest resolve request accepted.
const RESOLVE_MAX_BYTES: usize = 64 * 1024;
