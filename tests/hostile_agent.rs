//! The relay against an agent that sends what tether-agent never would:
//! `tests/support/hostile_agent.py`, the real handshake over a real
//! WebSocket, then oversized header blocks and `Tether-*` response fields.
//! What the relay guarantees here it guarantees by itself, whatever the
//! agent does.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use support::hostile_agent::HostileAgent;
use support::raw_http;
use support::*;

/// A relay (with a proxy listener) with a token and a key of account
/// `acme`.
struct Setup {
    relay: Relay,
    token: String,
    key: String,
}

fn setup() -> Setup {
    let relay = Relay::start_with_proxy("");
    let token = relay.token("acme");
    let key = relay.key("acme");
    Setup { relay, token, key }
}

impl Setup {
    fn hostile(&self) -> HostileAgent {
        HostileAgent::start(self.relay.public, &self.token, "hostile", "sample")
    }

    /// GET `path` with the key, bounded; status, headers, body, trailers.
    async fn get(
        &self,
        path: &str,
    ) -> (StatusCode, http::HeaderMap, bytes::Bytes, http::HeaderMap) {
        let req = Request::get(self.relay.url(path))
            .header("proxy-authorization", format!("Bearer {}", self.key))
            .header("te", "trailers")
            .body(tether_wire::empty_body())
            .unwrap();
        tokio::time::timeout(Duration::from_secs(15), async {
            let response = client().request(req).await.expect("request");
            let (parts, body) = response.into_parts();
            let collected = body.collect().await.expect("body");
            let trailers = collected.trailers().cloned().unwrap_or_default();
            (parts.status, parts.headers, collected.to_bytes(), trailers)
        })
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer in 15 s"))
    }
}

/// GET `path` through one of two sessions of the hostile agent, whose
/// answer the relay's HTTP/2 client refuses: 502 `agent_lost`, and the
/// relay says why. The agents are returned still running.
async fn refused_answer(s: &Setup, path: &str) -> [HostileAgent; 2] {
    let agents = [s.hostile(), s.hostile()];
    s.relay.wait_sessions(2).await;
    let (status, headers, body, _) = s.get(&format!("/v1/routes/sample{path}")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem_code(&headers, &body), "agent_lost");
    until(Duration::from_secs(5), "the relay log says why", || async {
        s.relay
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("request not re-sent"))
    })
    .await;
    agents
}

/// Stops `agents` (their logs are then complete) and checks that exactly
/// one of them received `path`.
fn sent_once(agents: &mut [HostileAgent; 2], path: &str) {
    let saw: Vec<usize> = agents
        .iter_mut()
        .map(|a| {
            a.stop();
            a.requests(path)
        })
        .collect();
    assert_eq!(
        saw.iter().sum::<usize>(),
        1,
        "one session saw the request, the other never did: {saw:?}"
    );
}

#[tokio::test]
async fn a_100_kb_response_header_is_refused_once_and_its_session_lives_on() {
    // Over the 64 KiB the relay's HTTP/2 client takes, under what makes
    // it end the connection: only that stream is refused.
    let s = setup();
    let mut agents = refused_answer(&s, "/headers/100000").await;
    assert_eq!(s.relay.sessions().await, 2);
    let (status, _, _, _) = s.get("/v1/routes/sample/echo").await;
    assert_eq!(status, StatusCode::OK);
    sent_once(&mut agents, "/headers/100000");
}

#[tokio::test]
async fn an_answer_that_breaks_its_session_is_not_sent_to_the_next_one() {
    // 300 KB of header, uncompressed: far over the limit, so the relay's
    // HTTP/2 client ends that whole session with a GOAWAY of its own.
    let s = setup();
    let mut agents = refused_answer(&s, "/headers/300000").await;
    s.relay.wait_sessions(1).await;
    until(
        Duration::from_secs(5),
        "the broken session closed",
        || async { agents.iter().any(|a| a.saw("closed")) },
    )
    .await;
    let (status, _, _, _) = s.get("/v1/routes/sample/echo").await;
    assert_eq!(status, StatusCode::OK, "the other session serves");
    sent_once(&mut agents, "/headers/300000");
    let [a, b] = &agents;
    let (broken, other) = if a.saw("closed") { (a, b) } else { (b, a) };
    assert_eq!(broken.requests("/headers/300000"), 1, "the one it broke");
    assert!(!other.saw("closed"), "the other session lived on");
    assert_eq!(other.requests("/echo"), 1);
}

#[tokio::test]
async fn a_20_kb_response_header_passes_whole() {
    let s = setup();
    let mut agent = s.hostile();
    s.relay.wait_sessions(1).await;
    let (status, headers, body, _) = s.get("/v1/routes/sample/headers/20000").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["x-big"].len(), 20_000);
    assert_eq!(body, "ok");
    agent.stop();
    assert_eq!(agent.requests("/headers/20000"), 1, "sent once");
}

#[tokio::test]
async fn tether_fields_an_agent_relays_never_reach_the_caller() {
    let s = setup();
    let mut agent = s.hostile();
    s.relay.wait_sessions(1).await;
    let (status, headers, body, trailers) = s.get("/v1/routes/sample/tether").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "served");
    let tether: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("tether-"))
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(tether.len(), 2, "only the relay's own: {tether:?}");
    assert_eq!(headers["tether-agent"], "hostile");
    let id = headers["tether-request-id"].to_str().unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "the relay's request id, not the agent's: {id}"
    );
    assert_eq!(headers["x-ok"], "1");
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.to_str().unwrap()),
        Some("done")
    );
    assert!(
        trailers.keys().all(|n| !n.as_str().starts_with("tether-")),
        "no Tether-* trailer either: {trailers:?}"
    );
    agent.stop();
    assert_eq!(agent.requests("/tether"), 1);
}

#[tokio::test]
async fn request_trailers_reach_an_agent_filtered_and_do_not_hang() {
    let s = setup();
    let mut agent = s.hostile();
    s.relay.wait_sessions(1).await;
    let request = format!(
        "POST /v1/routes/sample/echo HTTP/1.1\r\nHost: relay\r\nProxy-Authorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nTrailer: Connection, Tether-X, Proxy-Authorization, X-Ok\r\n\r\n\
         5\r\nhello\r\n0\r\nConnection: close\r\nTether-X: 1\r\nProxy-Authorization: x\r\nX-Ok: 1\r\n\r\n",
        s.key
    );
    let response =
        raw_http::exchange(s.relay.public, request.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(response.status, 200, "{response:?}");
    let doc: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(doc["body"], "hello");
    assert_eq!(
        doc["trailers"],
        serde_json::json!([["x-ok", "1"]]),
        "the agent got only X-Ok: {doc}"
    );
    agent.stop();
    assert_eq!(agent.requests("/echo"), 1);
}

#[tokio::test]
async fn an_agents_connect_refusal_reaches_the_caller_without_its_tether_fields() {
    let s = setup();
    let agent = s.hostile();
    s.relay.wait_sessions(1).await;
    let request = format!(
        "CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\
         Proxy-Authorization: Bearer {}\r\n\r\n",
        s.key
    );
    let proxy = s.relay.proxy.unwrap();
    let response = raw_http::exchange(proxy, request.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(response.status, 403, "{response:?}");
    until(
        Duration::from_secs(5),
        "the agent saw the CONNECT",
        || async { agent.saw("request CONNECT internal.example:443") },
    )
    .await;
    assert_eq!(response.header("tether-foo"), None, "{response:?}");
    assert_eq!(response.body, br#"{"code":"denied"}"#);
}

#[tokio::test]
async fn agent_info_that_would_forge_log_lines_is_refused() {
    let s = setup();
    let agent = HostileAgent::start_with(
        s.relay.public,
        &s.token,
        "hostile",
        "sample",
        &[
            "--instance",
            "pod-1\n2026-01-01T00:00:00Z  INFO tether_relay: forged line",
        ],
    );
    until(
        Duration::from_secs(10),
        "the relay closes the session",
        || async { agent.saw("closed") },
    )
    .await;
    assert_eq!(s.relay.sessions().await, 0);
    until(Duration::from_secs(5), "the relay says why", || async {
        s.relay
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("agent info has control characters"))
    })
    .await;
    let log = s.relay.log.lock().unwrap();
    assert!(!log.iter().any(|l| l.starts_with("2026-01-01T00:00:00Z")));
}
