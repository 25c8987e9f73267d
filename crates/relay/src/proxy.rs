//! The standard forward-proxy listener (`[listen] proxy`): what portal
//! backends written in any language reach through `HTTPS_PROXY`.
//!
//! - Credentials: `Proxy-Authorization: Bearer <api key>`, or `Basic` with
//!   the key as the password (for clients that only speak Basic). Missing
//!   or bad: `407 proxy_auth_required` with `Proxy-Authenticate`.
//! - `GET http://host/path` (absolute form): relayed exactly like
//!   `/v1/forward/http/host/path`, with the agent's policy and secret
//!   injection.
//! - `CONNECT host:port`: an HTTP/2 CONNECT stream to a forward-mode agent
//!   of the key's account (and `Tether-Selector`), which dials the target
//!   only if its lists, `connect_ports` and the SSRF guard allow it; bytes
//!   are then copied both ways. TLS inside is end to end, so nothing can be
//!   injected into a tunnel.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tether_wire::body::FilteredTrailers;
use tether_wire::headers::{strip_hop_by_hop, strip_tether};
use tether_wire::protocol::{self, header as th};
use tether_wire::{BoxBody, ErrorCode, empty_body};

use crate::State;
use crate::auth::{AuthError, Identity};
use crate::credential::{self, Kind};
use crate::ingress::{self, Call};
use crate::registry::SelectError;

/// Handles one request on the proxy listener.
pub(crate) async fn handle(
    state: Arc<State>,
    mut req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let call = Call::new();
    if let Some(refused) = crate::bad_target(&req) {
        return refused;
    }
    let Some(key) = proxy_key(req.headers()) else {
        state.limiter.failed(remote.ip());
        return call.fail(
            ErrorCode::ProxyAuthRequired,
            "API key required: Proxy-Authorization: Bearer <key> (or Basic with the key as password)",
        );
    };
    let caller = match state.auth.verify(Kind::ApiKey, &key).await {
        Ok(caller) => caller,
        Err(AuthError::Malformed | AuthError::Invalid) => {
            if state.limiter.failed(remote.ip()) {
                return call.fail(
                    ErrorCode::RateLimited,
                    "too many failed authentications from this address",
                );
            }
            return call.fail(ErrorCode::ProxyAuthRequired, "invalid API key");
        }
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "key check failed: store unavailable");
            return call.fail(ErrorCode::Internal, "key store unavailable");
        }
    };

    if req.method() == Method::CONNECT {
        let response = connect(&state, &call, &caller, req).await;
        state.metrics.request(response.status());
        return response;
    }

    // Absolute form: the same path as /v1/forward/http/{authority}/…
    let (scheme, authority) = match (req.uri().scheme_str(), req.uri().authority()) {
        (Some(s), Some(a)) => (s.to_owned(), a.as_str().to_owned()),
        _ => {
            return call.fail(
                ErrorCode::BadRequest,
                "this is a proxy: send absolute-form requests (GET http://host/path) or CONNECT",
            );
        }
    };
    if scheme != "http" {
        return call.fail(
            ErrorCode::BadRequest,
            "only http:// in absolute form; use CONNECT for https",
        );
    }
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(uri) = format!(
        "{}http/{authority}{path_and_query}",
        protocol::FORWARD_PREFIX
    )
    .parse::<Uri>() else {
        return call.fail(ErrorCode::BadRequest, "unusable request target");
    };
    *req.uri_mut() = uri;
    // The relayed path authenticates with the bearer form.
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
        req.headers_mut().insert(header::PROXY_AUTHORIZATION, v);
    }
    let response = ingress::handle_route(state.clone(), req, remote).await;
    state.metrics.request(response.status());
    response
}

/// The API key from `Proxy-Authorization`: `Bearer KEY` or `Basic
/// base64(user:KEY)`.
fn proxy_key(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(header::PROXY_AUTHORIZATION)?.to_str().ok()?;
    if let Some(key) = credential::bearer(value) {
        return Some(key.to_owned());
    }
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

/// `CONNECT host:port`: opens an HTTP/2 CONNECT stream to a forward-mode
/// agent; on its 200, answers 200 and copies bytes both ways.
async fn connect(
    state: &State,
    call: &Call,
    caller: &Identity,
    mut req: Request<Incoming>,
) -> Response<BoxBody> {
    let Some(target) = req.uri().authority().map(|a| a.as_str().to_owned()) else {
        return call.fail(ErrorCode::BadRequest, "CONNECT needs host:port");
    };
    let selector = ingress::selector(req.headers());
    let session = match state.registry.select(
        &caller.account,
        &selector,
        Some(protocol::FORWARD_AUTHORITY),
        &[],
        state.config.agents.max_streams,
    ) {
        Ok(session) => session,
        Err(SelectError::NoAgent) => {
            return call.fail(
                ErrorCode::NoAgent,
                "no agent connected for this account and selector",
            );
        }
        Err(SelectError::NoSuchRoute) => {
            return call.fail(
                ErrorCode::NoSuchRoute,
                "no connected agent serves forward mode ([forward] allow)",
            );
        }
        Err(SelectError::Busy) => {
            return call.fail(
                ErrorCode::RateLimited,
                "every matching agent session is at its stream limit",
            );
        }
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return call.fail(ErrorCode::BadRequest, "CONNECT needs host:port");
    };
    let mut tunnel_req = Request::new(empty_body());
    *tunnel_req.method_mut() = Method::CONNECT;
    *tunnel_req.uri_mut() = uri;
    call.tag(tunnel_req.headers_mut(), caller);

    let (mut sender, in_flight) = session.begin_request();
    if sender.ready().await.is_err() {
        return call.fail(ErrorCode::AgentLost, "the agent session is closing");
    }
    let agent_response = match sender.send_request(tunnel_req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(request_id = %call.request_id, error = %e, "CONNECT lost with its agent session");
            return call.fail(
                ErrorCode::AgentLost,
                "the agent session ended before the answer",
            );
        }
    };
    if agent_response.status() != StatusCode::OK {
        // The agent's refusal (problem+json), passed on with the same
        // hygiene as any relayed response.
        let (mut parts, body) = agent_response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        strip_tether(&mut parts.headers);
        call.stamp(&mut parts.headers);
        return Response::from_parts(parts, FilteredTrailers::new(body).boxed());
    }
    let agent_name = session.info.name.clone();
    let request_id = call.request_id.clone();
    let caller_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (caller_io, agent_io) = match tokio::join!(
            caller_upgrade,
            hyper::upgrade::on(agent_response)
        ) {
            (Ok(c), Ok(a)) => (c, a),
            (c, a) => {
                tracing::debug!(%request_id, caller = c.is_ok(), agent = a.is_ok(), "CONNECT upgrade failed");
                return;
            }
        };
        let result = tokio::io::copy_bidirectional(
            &mut TokioIo::new(caller_io),
            &mut TokioIo::new(agent_io),
        )
        .await;
        tracing::debug!(%request_id, agent = %agent_name, ?result, "CONNECT tunnel closed");
    });
    let mut response = Response::new(empty_body());
    call.stamp(response.headers_mut());
    if let Ok(v) = HeaderValue::from_str(&session.info.name) {
        response.headers_mut().insert(th::AGENT, v);
    }
    response
}
