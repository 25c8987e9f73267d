//! Agent sessions: the WebSocket upgrade on `/v1/agent/connect` and the
//! task that owns each session afterwards.
//!
//! The token, the protocol version and the agent's name are checked before
//! the `101 Switching Protocols` answer, so a refused agent never gets a
//! socket. After the upgrade the relay runs the HTTP/2 *client* over the
//! WebSocket, asks the agent for its [`AgentInfo`] on the control authority,
//! and registers the session until the connection ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tether_wire::protocol::{self, AgentInfo, header as th};
use tether_wire::ws_io::Role;
use tether_wire::{BoxBody, ErrorCode, Problem, WsIo, empty_body};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::State;
use crate::admission::{self, Entrance};
use crate::auth::Identity;
use crate::registry::AgentSession;

/// How long the agent has to answer the info request after the upgrade.
const INFO_TIMEOUT: Duration = Duration::from_secs(10);
/// In a cluster, how long a draining replica waits for an agent to move
/// its session to another replica (it closes the old one with GOAWAY).
const AGENT_MOVE_GRACE: Duration = Duration::from_secs(2);
/// Largest info document accepted.
const MAX_INFO_BYTES: usize = 64 * 1024;

/// What the handshake headers say about the agent.
struct Hello {
    name: String,
    version: &'static str,
}

/// Handles `GET /v1/agent/connect`.
pub(crate) async fn handle_connect(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let hello = match check_handshake(req.method(), req.headers()) {
        Ok(hello) => hello,
        Err(problem) => return refusal(problem),
    };
    let identity = match admission::identify(&state, Entrance::Agent, req.headers(), remote).await {
        Ok(identity) => identity,
        Err(refused) => {
            tracing::info!(%remote, agent = %hello.name, ?refused, "agent refused: bad token");
            return refusal(refused.problem(Entrance::Agent));
        }
    };
    if let Some(minimum) = &state.config.agents.min_version {
        let reported = req
            .headers()
            .get(th::AGENT_VERSION)
            .and_then(|v| v.to_str().ok());
        if let Some(why) = crate::version::refusal(minimum, reported) {
            tracing::info!(%remote, agent = %hello.name,
                version = crate::version::label(reported.unwrap_or("")), %minimum,
                "agent refused: older than [agents] min_version");
            return refusal(Problem::new(ErrorCode::UnsupportedVersion, why));
        }
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return refusal(bad_request("missing Sec-WebSocket-Key"));
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(hello.version),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(v) = state
        .cluster
        .as_ref()
        .and_then(|c| HeaderValue::from_str(&c.replica_id).ok())
    {
        h.insert(th::REPLICA, v);
    }
    let tracker = state.tracker.clone();
    tracker.spawn(run_session(state, req, identity, hello, remote));
    response
}

/// The answer to a refused handshake; a 426 lists the versions we speak.
fn refusal(problem: Problem) -> Response<BoxBody> {
    let unsupported = problem.code == ErrorCode::UnsupportedVersion;
    let mut response = problem.into_response();
    if unsupported {
        let supported = protocol::SUPPORTED_VERSIONS.join(", ");
        if let Ok(v) = HeaderValue::from_str(&supported) {
            response.headers_mut().insert(th::SUPPORTED_VERSIONS, v);
        }
    }
    response
}

/// Checks method, upgrade headers, version and agent name.
fn check_handshake(method: &Method, headers: &HeaderMap) -> Result<Hello, Problem> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if method != Method::GET
        || !has(header::UPGRADE, "websocket")
        || !has(header::CONNECTION, "upgrade")
        || headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v != "13")
    {
        return Err(bad_request(
            "expected a WebSocket upgrade (GET, version 13)",
        ));
    }
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(protocol::negotiate_version);
    let Some(version) = offered else {
        return Err(Problem::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "this relay speaks {}; upgrade the agent",
                protocol::SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    };
    let name = headers
        .get(th::AGENT_NAME)
        .and_then(|v| v.to_str().ok())
        .filter(|n| protocol::valid_route_name(n))
        .ok_or_else(|| bad_request("Tether-Agent-Name is required: 1-64 of A-Z a-z 0-9 _ -"))?;
    Ok(Hello {
        name: name.to_owned(),
        version,
    })
}

fn bad_request(detail: &str) -> Problem {
    Problem::new(ErrorCode::BadRequest, detail)
}

/// Owns one agent session from the upgrade to its end.
async fn run_session(
    state: Arc<State>,
    req: Request<Incoming>,
    identity: Identity,
    hello: Hello,
    remote: SocketAddr,
) {
    let upgraded = match hyper::upgrade::on(req).await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "agent upgrade failed");
            return;
        }
    };
    let agents = &state.config.agents;
    let handshake = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(agents.ping_interval)
        .keep_alive_timeout(agents.ping_timeout)
        .keep_alive_while_idle(true)
        // Per-stream windows: a stalled reader stalls only its stream.
        .initial_stream_window_size(protocol::SESSION_STREAM_WINDOW)
        .initial_connection_window_size(protocol::SESSION_CONNECTION_WINDOW)
        .max_frame_size(protocol::SESSION_MAX_FRAME)
        // The agent bounds every header block it sends to this (hyper's
        // default, 16 KiB, is below what the agent lets through).
        .max_header_list_size(protocol::MAX_HEADER_LIST_SIZE)
        .handshake::<_, BoxBody>(TokioIo::new(WsIo::new(
            TokioIo::new(upgraded),
            Role::Server,
        )))
        .await;
    let (sender, connection) = match handshake {
        Ok(pair) => pair,
        Err(e) => {
            tracing::info!(%remote, error = %e, "agent session failed before HTTP/2 started");
            return;
        }
    };
    // The connection task ends when the socket closes or a PING times out;
    // aborting it (below) closes the socket.
    let mut connection = tokio::spawn(connection);

    let info = tokio::select! {
        info = tokio::time::timeout(INFO_TIMEOUT, fetch_info(sender.clone())) => info,
        _ = &mut connection => {
            tracing::info!(%remote, agent = %hello.name, "agent session closed during setup");
            return;
        }
    };
    let info = match info {
        Ok(Ok(info)) if info.name != hello.name => {
            // Debug-quoted: the agent chose it.
            tracing::warn!(%remote, handshake = %hello.name, info = ?info.name,
                "agent name in info differs from handshake; closing");
            connection.abort();
            return;
        }
        Ok(Ok(info)) if !plain_info(&info) => {
            tracing::warn!(%remote, agent = %hello.name,
                "agent info has control characters or fields over 256 bytes; closing");
            connection.abort();
            return;
        }
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            tracing::warn!(%remote, agent = %hello.name, error = %e, "agent info request failed");
            connection.abort();
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, agent = %hello.name, "agent did not answer the info request");
            connection.abort();
            return;
        }
    };
    let agent_load = state.registry.agent_load(&identity.account, &info);
    let session = Arc::new(AgentSession::new(
        identity, info, remote, sender, agent_load,
    ));
    state.registry.insert(session.clone());
    tracing::info!(
        session = session.id,
        account = %session.account,
        agent = %session.info.name,
        instance = %session.info.instance,
        version = %session.info.version,
        routes = %session.info.routes.join(","),
        token_id = %session.token_id,
        %remote,
        "agent connected"
    );
    let (why, drain_first) = tokio::select! {
        result = &mut connection => (match result {
            Ok(Ok(())) => "closed by agent".to_owned(),
            Ok(Err(e)) => format!("connection error: {e}"),
            Err(e) => format!("connection task failed: {e}"),
        }, false),
        // Revoked or rotated out: closed at once, requests in flight fail.
        _ = session.closed.cancelled() => ("its token is no longer valid".to_owned(), false),
        _ = state.shutdown.cancelled() => ("relay shutting down".to_owned(), true),
    };
    state.registry.remove(&session);
    if !connection.is_finished() {
        if drain_first {
            // The agent opens a replacement session (on another replica, in
            // a cluster) and sends GOAWAY here once it is up; requests in
            // flight finish either way.
            crate::watcher::control_post(&session, protocol::CONTROL_DRAINING_PATH, Vec::new());
            drain(&session, state.config.drain_timeout).await;
            if state.cluster.is_some() {
                // Give the agent a moment to move before the session is cut.
                let _ = tokio::time::timeout(AGENT_MOVE_GRACE, &mut connection).await;
            }
        }
        connection.abort();
    }
    tracing::info!(session = session.id, agent = %session.info.name, token_id = %session.token_id,
        %remote, reason = %why, "agent disconnected");
}

/// Whether the free text of an agent's info (instance, version, tags,
/// routes) is fit to log, publish to peers and list: no control
/// characters (a newline would forge log lines), at most 256 bytes each.
fn plain_info(info: &AgentInfo) -> bool {
    let plain = |s: &String| s.len() <= 256 && !s.chars().any(char::is_control);
    plain(&info.instance)
        && plain(&info.version)
        && info.tags.iter().all(plain)
        && info.routes.iter().all(plain)
}

/// Waits (bounded) for requests in flight on `session` to finish.
async fn drain(session: &AgentSession, limit: Duration) {
    let _ = tokio::time::timeout(limit, session.idle()).await;
}

/// Asks the agent who it is and which routes it serves.
async fn fetch_info(mut sender: http2::SendRequest<BoxBody>) -> Result<AgentInfo, String> {
    let uri = format!(
        "http://{}{}",
        protocol::CONTROL_AUTHORITY,
        protocol::CONTROL_INFO_PATH
    );
    let request = Request::get(uri)
        .body(empty_body())
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_INFO_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_info_with_control_characters_is_not_plain() {
        let info = AgentInfo {
            name: "a".into(),
            instance: "pod-1".into(),
            version: "0.1.0".into(),
            tags: vec!["eu".into()],
            routes: vec!["jenkins".into()],
            forward: false,
        };
        assert!(plain_info(&info));
        for bad in [
            AgentInfo {
                instance: "pod\n2026-01-01 WARN forged".into(),
                ..info.clone()
            },
            AgentInfo {
                version: "\u{1b}[31m".into(),
                ..info.clone()
            },
            AgentInfo {
                tags: vec!["x\r".into()],
                ..info.clone()
            },
            AgentInfo {
                routes: vec!["r".repeat(257)],
                ..info.clone()
            },
        ] {
            assert!(!plain_info(&bad), "{bad:?}");
        }
    }
}
