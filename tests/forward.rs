//! Forward mode through the real binaries: `/v1/forward/{scheme}/{host}/…`
//! reaches only what the agent's `[forward]` lists admit, never the
//! agent's admin listener or a special address a name resolves to, with
//! the agent's own headers for that target.
//!
//! Each test re-runs itself inside a network namespace of its own that has
//! nothing but loopback (`support::netns`), relay, agent and upstream
//! included: a broken guard cannot send a packet off the machine, even to
//! the metadata address these tests aim at. More of the guard (the agent's
//! own host, deny names, one answer for every refusal): `forward_guard.rs`.

mod support;

use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use support::*;

/// An agent with `forward` config and two secrets: `tok` (agent-owned
/// headers only) and `placed`, which callers may put in `X-Caller`
/// towards `placed_target` only.
fn agent_with_forward(relay: &Relay, token: &str, forward: &str) -> Agent {
    agent_placing(relay, token, forward, "http://127.0.0.1:1")
}

fn agent_placing(relay: &Relay, token: &str, forward: &str, placed_target: &str) -> Agent {
    Agent::spawn(
        &format!(
            "[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n[agent]\nname = \"fwd\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[secrets.tok]\nenv = \"FWD_TOKEN\"\n\n\
             [secrets.placed]\nenv = \"FWD_TOKEN\"\n\
             callers = {{ targets = [\"{placed_target}\"], headers = [\"x-caller\"] }}\n\n{forward}",
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

netns_test!(
    forward_reaches_allowed_targets_with_agent_headers_and_refuses_the_rest,
    forward_reaches_allowed_targets_with_agent_headers_and_refuses_the_rest_body
);

async fn forward_reaches_allowed_targets_with_agent_headers_and_refuses_the_rest_body() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let port = upstream.addr.port();
    let agent = agent_placing(
        &relay,
        &token,
        &format!(
            "[forward]\nallow = [\"127.0.0.1/32\", \"localhost\"]\n\
             [forward.headers.\"http://127.0.0.1:{port}\"]\nX-Injected = \"Bearer ${{{{ secrets.tok }}}}\"\n"
        ),
        &format!("http://127.0.0.1:{port}"),
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

    // Callers may place `placed` in X-Caller towards this target only, and
    // never `tok`.
    let auth = format!("Bearer {key}");
    let placed = "${{ secrets.placed }}";
    let url = relay.url(&format!("/v1/forward/http/127.0.0.1:{port}/echo"));
    let (status, _, body) = get(
        &url,
        &[("proxy-authorization", &auth), ("x-caller", placed)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["headers"]["x-caller"][0], "injected-secret");
    let (status, _, _) = get(&url, &[("proxy-authorization", &auth), ("x-other", placed)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "not in a listed header");
    let (status, _, _) = get(
        &url,
        &[
            ("proxy-authorization", &auth),
            ("x-caller", "${{ secrets.tok }}"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "tok has no callers binding");

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
        4,
        "refused requests never reached it"
    );
}

netns_test!(
    a_name_resolving_to_loopback_is_refused_without_a_loopback_cidr,
    a_name_resolving_to_loopback_is_refused_without_a_loopback_cidr_body
);

async fn a_name_resolving_to_loopback_is_refused_without_a_loopback_cidr_body() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let _agent = agent_with_forward(
        &relay,
        &token,
        "[forward]\nallow = [\"localhost\", \"0.0.0.0/0\", \"::/0\"]\ndeny = [\"10.9.0.0/16\"]\n",
    );
    relay.wait_sessions(2).await;
    let port = upstream.addr.port();
    for target in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("0177.0.0.1:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        "10.9.1.1".to_owned(),
        "169.254.169.254".to_owned(),
        "[fd00:ec2::254]".to_owned(),
        "100.100.100.200".to_owned(),
        "0.0.0.0".to_owned(),
        // Other clouds' metadata addresses, and special IPv4 addresses
        // spelled as IPv6: IPv4-compatible, NAT64 (well-known and local
        // use), 6to4, Teredo.
        "168.63.129.16".to_owned(),
        "192.0.0.192".to_owned(),
        "[::a9fe:a9fe]".to_owned(),
        format!("[64:ff9b::7f00:1]:{port}"),
        "[64:ff9b::a9fe:a9fe]".to_owned(),
        "[64:ff9b:1::a9fe:a9fe]".to_owned(),
        "[2002:a9fe:a9fe::]".to_owned(),
        "[2001:0:4136:e378:8000:63bf:5601:5601]".to_owned(),
        "[64:ff9b::a09:101]".to_owned(),
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

netns_test!(
    an_agent_without_forward_is_never_chosen_and_star_is_refused,
    an_agent_without_forward_is_never_chosen_and_star_is_refused_body
);

async fn an_agent_without_forward_is_never_chosen_and_star_is_refused_body() {
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

netns_test!(
    redirects_are_returned_to_the_caller_not_followed,
    redirects_body
);

async fn redirects_body() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let _agent = agent_with_forward(&relay, &token, "[forward]\nallow = [\"127.0.0.1/32\"]\n");
    relay.wait_sessions(2).await;
    let auth = format!("Bearer {key}");
    let (status, headers, _) = get(
        &relay.url(&format!(
            "/v1/forward/http/127.0.0.1:{}/redirect/169.254.169.254",
            upstream.addr.port()
        )),
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "http://169.254.169.254/");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        upstream.count().await,
        1,
        "one request, the redirect not followed"
    );
}

/// curl with `args` through the forward proxy: success, and its output.
async fn curl(args: &[&str]) -> (bool, String) {
    run(
        "curl",
        args.iter().map(|a| (*a).to_owned()).collect(),
        vec![],
    )
    .await
}

/// Runs `program args…` off the async runtime, without proxy settings from
/// the environment; its exit success and stdout+stderr.
async fn run(program: &str, args: Vec<String>, env: Vec<(&'static str, String)>) -> (bool, String) {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&program)
            .args(&args)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .envs(env)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        (out.status.success(), all_output(&out))
    })
    .await
    .unwrap()
}

netns_test!(
    proxy_listener_serves_absolute_form_and_connect_to_curl_and_a_library,
    proxy_listener_body
);

async fn proxy_listener_body() {
    let relay = Relay::start_with_proxy("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let port = upstream.addr.port();
    let agent = agent_with_forward(
        &relay,
        &token,
        &format!(
            "[forward]\nallow = [\"127.0.0.1/32\"]\nconnect_ports = [{port}]\n\
             [forward.headers.\"http://127.0.0.1:{port}\"]\nX-Injected = \"Bearer ${{{{ secrets.tok }}}}\"\n"
        ),
    );
    relay.wait_sessions(2).await;
    let proxy = format!("http://{}", relay.proxy.unwrap());
    let target = format!("http://127.0.0.1:{port}/echo/through");

    // curl, absolute form, Basic with the key as password: injected header.
    let user = format!("portal:{key}");
    let (ok, out) = curl(&["-sS", "-x", &proxy, "--proxy-user", &user, &target]).await;
    assert!(ok, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["path"], "/echo/through");
    assert_eq!(doc["headers"]["x-injected"][0], "Bearer injected-secret");
    assert!(doc["headers"].get("proxy-authorization").is_none());

    // curl, CONNECT tunnel (-p): end to end, nothing injected.
    let bearer = format!("Proxy-Authorization: Bearer {key}");
    let (ok, out) = curl(&[
        "-sS",
        "-p",
        "-x",
        &proxy,
        "--proxy-header",
        &bearer,
        &target,
    ])
    .await;
    assert!(ok, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["path"], "/echo/through");
    assert!(
        doc["headers"].get("x-injected").is_none(),
        "nothing injected into a tunnel"
    );

    // CONNECT to a port outside connect_ports (the agent's admin port): refused.
    let admin = format!("http://127.0.0.1:{}/metrics", agent.admin.port());
    let (ok, out) = curl(&["-sS", "-p", "-x", &proxy, "--proxy-user", &user, &admin]).await;
    assert!(!ok && out.contains("403"), "{out}");

    // No key: 407 with a challenge.
    let (_, out) = curl(&["-sS", "-i", "-x", &proxy, &target]).await;
    assert!(out.starts_with("HTTP/1.1 407"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("proxy-authenticate: basic"),
        "{out}"
    );
    assert!(out.contains("proxy_auth_required"), "{out}");

    // A plain HTTP library honouring HTTP_PROXY (Python's urllib).
    let authed = format!("http://portal:{key}@{}", relay.proxy.unwrap());
    let (ok, out) = run(
        "python3",
        vec![
            "-c".into(),
            format!(
                "import urllib.request; print(urllib.request.urlopen('{target}').read().decode())"
            ),
        ],
        vec![("HTTP_PROXY", authed)],
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("\"/echo/through\"") && out.contains("injected-secret"),
        "{out}"
    );
}

netns_test!(
    connect_through_the_proxy_listener_is_held_to_the_callers_rate,
    connect_caller_rate_body
);

/// `[limits] caller_rate` counts a key's CONNECTs like its other requests:
/// a burst of 40 with `caller_rate = 5` gets 429 `rate_limited` past the
/// key's budget, and a tunnel the budget admits works end to end.
async fn connect_caller_rate_body() {
    let relay = Relay::start_with_proxy("[limits]\ncaller_rate = 5\n");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let port = upstream.addr.port();
    let _agent = agent_with_forward(
        &relay,
        &token,
        &format!("[forward]\nallow = [\"127.0.0.1/32\"]\nconnect_ports = [{port}]\n"),
    );
    relay.wait_sessions(2).await;
    let proxy = relay.proxy.unwrap();
    let target = format!("127.0.0.1:{port}");

    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..40 {
        let (head, _tunnel) =
            raw_http::connect(proxy, &target, &key, Duration::from_secs(10)).await;
        if head.status == 429 {
            limited = Some(head.problem_code());
        }
        statuses.push(head.status);
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(statuses[0], 200, "the first CONNECT is within the budget");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        admitted < 40,
        "some of 40 CONNECTs over caller_rate refused: {statuses:?}"
    );
    assert_eq!(limited.as_deref(), Some("rate_limited"));
    assert_eq!(
        relay.metric("tether_relay_caller_rate_limited_total").await,
        (40 - admitted) as u64
    );
    // A tunnel once the key is within its rate again (bounded wait).
    let mut answer = None;
    for _ in 0..100 {
        let (head, tunnel) = raw_http::connect(proxy, &target, &key, Duration::from_secs(10)).await;
        if head.status == 200 {
            answer = Some((head, tunnel));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (head, tunnel) = answer.expect("a CONNECT admitted again within 5 s");
    assert_eq!(head.header("tether-agent"), Some("fwd"));
    let request =
        format!("GET /echo/tunnelled HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    let echoed =
        raw_http::exchange_on(tunnel.unwrap(), request.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(echoed.status, 200, "{echoed:?}");
    let doc: serde_json::Value = serde_json::from_slice(&echoed.body).unwrap();
    assert_eq!(doc["path"], "/echo/tunnelled");
}
