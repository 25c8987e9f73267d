//! The agent reaches the relay through an HTTP CONNECT proxy when told so
//! (`[relay] proxy`, or HTTP(S)_PROXY unless NO_PROXY names the relay),
//! with Basic credentials when given; a test proxy counts the tunnels.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::connect_proxy::ConnectProxy;
use support::*;

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
        if proxy.refused() > 0 {
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
