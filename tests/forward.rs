//! Forward mode through the real binaries: `/v1/forward/{scheme}/{host}/…`
//! reaches only what the agent's `[forward]` lists admit, never the
//! agent's admin listener or a special address a name resolves to, with
//! the agent's own headers for that target. Only 127.0.0.1 is ever
//! contacted: every refusal here happens before a connection.

mod support;

use std::process::Command;

use http::StatusCode;
use support::*;

fn agent_with_forward(relay: &Relay, token: &str, forward: &str) -> Agent {
    Agent::spawn(
        &format!(
            "[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n[agent]\nname = \"fwd\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[secrets.tok]\nenv = \"FWD_TOKEN\"\n\n{forward}",
            relay.agent_url()
        ),
        &[("FWD_TOKEN", "injected-secret")],
    )
}

async fn call(relay: &Relay, key: &str, path: &str) -> (StatusCode, String, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let (status, headers, body) = get(&relay.url(path), &[("proxy-authorization", &auth)]).await;
    let code = if status.is_success() {
        String::new()
    } else {
        problem_code(&headers, &body)
    };
    (
        status,
        code,
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

#[tokio::test]
async fn forward_reaches_allowed_targets_with_agent_headers_and_refuses_the_rest() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let port = upstream.addr.port();
    let agent = agent_with_forward(
        &relay,
        &token,
        &format!(
            "[forward]\nallow = [\"127.0.0.1/32\", \"localhost\"]\n\
             [forward.headers.\"http://127.0.0.1:{port}\"]\nX-Injected = \"Bearer ${{{{ secrets.tok }}}}\"\n"
        ),
    );
    relay.wait_sessions(2).await;

    // Allowed by a CIDR inside loopback: reached, with the agent's header.
    let (status, _, doc) = call(
        &relay,
        &key,
        &format!("/v1/forward/http/127.0.0.1:{port}/echo/a/../b?q=1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["path"], "/echo/b", "normalised path");
    assert_eq!(doc["query"], "q=1");
    assert_eq!(doc["headers"]["x-injected"][0], "Bearer injected-secret");

    // The same address written as a decimal integer is the same target.
    let (status, _, _) = call(
        &relay,
        &key,
        &format!("/v1/forward/http/2130706433:{port}/echo"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The agent's own admin listener: never, even with loopback allowed.
    let (status, code, _) = call(
        &relay,
        &key,
        &format!("/v1/forward/http/127.0.0.1:{}/metrics", agent.admin.port()),
    )
    .await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "denied"));

    // Allowed by name and resolving to loopback, which 127.0.0.1/32 (a
    // CIDR inside the loopback range) admits. Without it: the next test.
    let (status, _, _) = call(
        &relay,
        &key,
        &format!("/v1/forward/http/localhost:{port}/echo"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Not on the list.
    let (status, code, _) = call(&relay, &key, "/v1/forward/http/10.1.2.3/echo").await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "denied"));
    let (status, code, _) = call(&relay, &key, "/v1/forward/ftp/127.0.0.1/x").await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    assert_eq!(
        upstream.count().await,
        3,
        "refused requests never reached it"
    );
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_without_a_loopback_cidr() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let _agent = agent_with_forward(
        &relay,
        &token,
        "[forward]\nallow = [\"localhost\", \"0.0.0.0/0\"]\ndeny = [\"10.9.0.0/16\"]\n",
    );
    relay.wait_sessions(2).await;
    let port = upstream.addr.port();
    for target in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("0177.0.0.1:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        "10.9.1.1".to_owned(),
    ] {
        let (status, code, _) =
            call(&relay, &key, &format!("/v1/forward/http/{target}/echo")).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "denied"),
            "{target}"
        );
    }
    assert_eq!(upstream.count().await, 0);
}

#[tokio::test]
async fn an_agent_without_forward_is_never_chosen_and_star_is_refused() {
    let relay = Relay::start("");
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let _agent = agent_with_forward(&relay, &token, "");
    relay.wait_sessions(2).await;
    let (status, code, _) = call(&relay, &key, "/v1/forward/http/127.0.0.1/x").await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "no_such_route")
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "[relay]\nurl = \"wss://r/v1/agent/connect\"\ntoken = \"t\"\n[agent]\nname = \"a\"\n\n[forward]\nallow = [\"*\"]\n",
    )
    .unwrap();
    let out = Command::new(bin("tether-agent"))
        .args(["check", "--offline", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("agent.toml:8:") && err.contains("admits every host"),
        "{err}"
    );
}
