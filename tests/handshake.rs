//! The agent endpoint refuses bad handshakes before upgrading, and survives
//! hostile peers after it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http::StatusCode;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn bad_token_version_or_name_is_refused_before_upgrade() {
    let relay = Relay::start("");
    let token = relay.token("acme");
    let key = relay.key("acme");

    let forged = format!("{}0", &token[..token.len() - 1]);
    let forged = if forged == token {
        format!("{}1", &token[..token.len() - 1])
    } else {
        forged
    };
    for bad in [
        None,
        Some(forged.as_str()),
        Some(key.as_str()),
        Some("garbage"),
    ] {
        let (status, headers, body) =
            send(upgrade_request(&relay, bad, Some("tether.v1"), Some("a"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(problem_code(&headers, &body), "unauthorized");
    }

    for protocol in [None, Some("tether.v0"), Some("chat")] {
        let (status, headers, body) =
            send(upgrade_request(&relay, Some(&token), protocol, Some("a"))).await;
        assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(problem_code(&headers, &body), "unsupported_version");
        assert_eq!(headers["tether-supported-versions"], "tether.v1");
    }

    let (status, headers, body) = send(upgrade_request(
        &relay,
        Some(&token),
        Some("tether.v1"),
        None,
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_code(&headers, &body), "bad_request");
    assert_eq!(relay.sessions().await, 0);
}

#[tokio::test]
async fn agent_with_a_bad_token_never_gets_a_session() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let bad = format!("tta_{}_{}", "0".repeat(16), "0".repeat(64));
    let agent = Agent::start(
        &relay.agent_url(),
        &bad,
        "a",
        &upstream.route("r", "[\"GET\"]", "[\"/**\"]"),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(relay.sessions().await, 0);
    let (status, _, _) = get(&format!("http://{}/readyz", agent.admin), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// Opens a real WebSocket as an agent would, then misbehaves.
async fn raw_agent_socket(
    relay: &Relay,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let mut req = relay.agent_url().into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert("authorization", format!("Bearer {token}").parse().unwrap());
    h.insert("sec-websocket-protocol", "tether.v1".parse().unwrap());
    h.insert("tether-agent-name", "rogue".parse().unwrap());
    let tcp = TcpStream::connect(relay.public).await.unwrap();
    let (ws, response) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

#[tokio::test]
async fn garbage_after_the_upgrade_closes_that_session_only() {
    let relay = Relay::start("");
    let token = relay.token("acme");
    for garbage in [
        Message::Binary(Bytes::from_static(b"this is not an HTTP/2 preface at all")),
        Message::Binary(Bytes::from(vec![0xffu8; 70_000])),
        Message::text("hello"),
    ] {
        let mut ws = raw_agent_socket(&relay, &token).await;
        let _ = ws.send(garbage).await;
        // The relay must end the session: reading yields close or error.
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            use futures_util::StreamExt;
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "relay kept a garbage session open");
    }
    // Silent peer: upgraded but never speaks HTTP/2; must not be registered.
    let _silent = raw_agent_socket(&relay, &token).await;
    assert_eq!(relay.sessions().await, 0);

    // The relay is still fine, and a real agent still gets in.
    let (status, _, _) = get(&relay.url("/healthz"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let upstream = Upstream::start().await;
    let _agent = Agent::start(
        &relay.agent_url(),
        &token,
        "a",
        &upstream.route("r", "[\"GET\"]", "[\"/**\"]"),
    );
    relay.wait_sessions(2).await;
}

#[tokio::test]
async fn min_version_refuses_older_agents_and_versions_are_shown() {
    let version = env!("CARGO_PKG_VERSION");
    // Newer than this agent: refused at the handshake with 426, the agent
    // says why and keeps trying.
    let relay = Relay::start("[agents]\nmin_version = \"99.0.0\"\n");
    let token = relay.token("acme");
    let old = Agent::start(&relay.agent_url(), &token, "old", "");
    until(
        Duration::from_secs(20),
        "the agent logs the refusal",
        || async {
            let log = old.log.lock().unwrap();
            log.iter()
                .filter(|l| {
                    l.contains("426") && l.contains("requires tether-agent 99.0.0 or later")
                })
                .count()
                >= 2
        },
    )
    .await;
    assert_eq!(relay.sessions().await, 0);
    // An agent that sends no version at all is refused too.
    let (status, headers, body) = send(upgrade_request(
        &relay,
        Some(&token),
        Some("tether.v1"),
        Some("a"),
    ))
    .await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(problem_code(&headers, &body), "unsupported_version");
    assert!(String::from_utf8_lossy(&body).contains("no Tether-Agent-Version"));
    drop(old);

    // At or above the minimum: accepted, its version listed and counted.
    let relay = Relay::start(&format!("[agents]\nmin_version = \"{version}\"\n"));
    let token = relay.token("acme");
    let _agent = Agent::start(&relay.agent_url(), &token, "new", "");
    relay.wait_sessions(2).await;
    let metrics = {
        let (_, _, body) = get(&format!("http://{}/metrics", relay.admin), &[]).await;
        String::from_utf8_lossy(&body).into_owned()
    };
    assert!(
        metrics.contains(&format!(
            "tether_relay_agent_versions{{version=\"{version}\"}} 2"
        )),
        "{metrics}"
    );
}
