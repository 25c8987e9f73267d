//! The agent reaches the relay through an HTTP CONNECT proxy when told so
//! (`[relay] proxy`, or HTTP(S)_PROXY unless NO_PROXY names the relay),
//! with Basic credentials when given; a test proxy counts the tunnels.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CONNECT proxy on 127.0.0.1 that counts the tunnels it opens and,
/// if `credentials` is set, answers 407 without them.
struct ConnectProxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl ConnectProxy {
    async fn start(credentials: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let expected = credentials.map(|c| {
            format!(
                "proxy-authorization: basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
            .to_ascii_lowercase()
        });
        let (count, no) = (tunnels.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (count, no, expected) = (count.clone(), no.clone(), expected.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let Ok(b) = client.read_u8().await else {
                            return;
                        };
                        head.push(b);
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let target = head
                        .strip_prefix("connect ")
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or_default()
                        .to_owned();
                    let authorized = expected
                        .as_ref()
                        .is_none_or(|e| head.lines().any(|l| l.trim() == e));
                    if target.is_empty() || !authorized {
                        no.fetch_add(1, Ordering::Relaxed);
                        let _ = client
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                    let Ok(mut upstream) = TcpStream::connect(&target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Self {
            addr,
            tunnels,
            refused,
        }
    }

    fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }
}

fn agent_config(relay: &Relay, token: &str, relay_extra: &str, upstream: &Upstream) -> String {
    format!(
        "[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n{relay_extra}\n[agent]\nname = \"agent-a\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        relay.agent_url(),
        upstream.route("sample", r#"["GET"]"#, r#"["/**"]"#)
    )
}

async fn request_works(relay: &Relay, key: &str) {
    let auth = format!("Bearer {key}");
    let (status, _, _) = get(
        &relay.url("/v1/routes/sample/echo"),
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn configured_proxy_carries_every_session_with_basic_credentials() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let proxy = ConnectProxy::start(Some("tether:s3cret")).await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("proxy-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let _agent = Agent::spawn(
        &agent_config(
            &relay,
            &token,
            &format!(
                "proxy = \"http://{}\"\nproxy_username = \"tether\"\nproxy_password_file = \"{}\"\n",
                proxy.addr,
                password.display()
            ),
            &upstream,
        ),
        // The environment's proxy loses to the configured one.
        &[("HTTP_PROXY", "http://127.0.0.1:9")],
    );
    relay.wait_sessions(2).await;
    assert_eq!(proxy.tunnels(), 2, "each session through its own tunnel");
    request_works(&relay, &key).await;
}

#[tokio::test]
async fn environment_proxy_is_used_unless_no_proxy_names_the_relay() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let proxy = ConnectProxy::start(Some("u:p@ss")).await;
    // Credentials in the environment's URL, percent-encoded.
    let env_proxy = format!("http://u:p%40ss@{}", proxy.addr);

    let agent = Agent::spawn(
        &agent_config(&relay, &token, "", &upstream),
        &[("http_proxy", &env_proxy)],
    );
    relay.wait_sessions(2).await;
    assert_eq!(proxy.tunnels(), 2);
    request_works(&relay, &key).await;
    // The password never reaches the log.
    assert!(
        !agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("p@ss") || l.contains("p%40ss"))
    );
    drop(agent);
    relay.wait_sessions(0).await;

    let _direct = Agent::spawn(
        &agent_config(&relay, &token, "", &upstream),
        &[
            ("http_proxy", &env_proxy),
            ("NO_PROXY", "localhost,127.0.0.0/8"),
        ],
    );
    relay.wait_sessions(2).await;
    assert_eq!(proxy.tunnels(), 2, "NO_PROXY: no new tunnel");
}

#[tokio::test]
async fn wrong_proxy_credentials_keep_the_agent_out_with_a_clear_log() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let token = relay.token("acme");
    let proxy = ConnectProxy::start(Some("tether:right")).await;
    let agent = Agent::spawn(
        &agent_config(&relay, &token, "", &upstream),
        &[("HTTP_PROXY", &format!("http://tether:wrong@{}", proxy.addr))],
    );
    for _ in 0..100 {
        if proxy.refused.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(relay.sessions().await, 0);
    assert_eq!(proxy.tunnels(), 0);
    let log = agent.log.lock().unwrap().join("\n");
    assert!(log.contains("407"), "{log}");
    assert!(!log.contains("wrong"), "the password is not logged: {log}");
}
