//! Token lifecycle end to end: revocation, rotation under load, expiry and
//! the failed-authentication limiter, through the real binaries.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

/// The id part of a `tta_<id>_<secret>` token.
fn token_id(token: &str) -> &str {
    &token[4..20]
}

fn agent_with_token_file(
    relay: &Relay,
    token_file: &std::path::Path,
    upstream: &Upstream,
) -> Agent {
    Agent::spawn(
        &format!(
            "drain_timeout = \"5s\"\n[relay]\nurl = \"{}\"\ntoken_file = \"{}\"\n\n[agent]\nname = \"a\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
            relay.agent_url(),
            token_file.display(),
            upstream.route("sample", "[\"GET\"]", "[\"/**\"]"),
        ),
        &[],
    )
}

/// An agent handshake with `token`, as a real agent sends it.
async fn handshake(relay: &Relay, token: &str) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    send(upgrade_request(
        relay,
        Some(token),
        Some("tether.v1"),
        Some("a"),
    ))
    .await
}

/// Replaces a file atomically, as a secret manager or kubelet would.
fn replace_file(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn revoke_closes_every_session_of_the_token_within_a_second() {
    let s = Stack::start().await;
    let tokens = s.relay.cli_output(&["tokens", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&tokens).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["status"], "active");
    assert!(!tokens.contains("tta_"), "a listing never shows a secret");

    let started = Instant::now();
    s.relay.cli_output(&["tokens", "revoke", &id]);
    let revoke_returned = started.elapsed();
    while s.relay.sessions().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "sessions still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gap = started.elapsed();
    eprintln!("revoke → sessions closed: {gap:?} (CLI itself took {revoke_returned:?})");
    assert!(gap < Duration::from_secs(1), "took {gap:?}");

    // The agent keeps trying, and is refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.relay.sessions().await, 0);
    let list: serde_json::Value =
        serde_json::from_str(&s.relay.cli_output(&["tokens", "list", "--json"])).unwrap();
    assert_eq!(list[0]["status"], "revoked");
    let (k, v) = s.auth();
    let (status, _, _) = get(&s.relay.url("/v1/routes/sample/echo"), &[(k, &v)]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn rotation_under_load_fails_no_request() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let token = relay.token("acme");
    let key = relay.key("acme");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    replace_file(&token_file, &format!("{token}\n"));
    let agent = agent_with_token_file(&relay, &token_file, &upstream);
    relay.wait_sessions(2).await;

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let url = relay.url("/v1/routes/sample/slow/20");
        let auth = format!("Bearer {key}");
        workers.push(tokio::spawn(async move {
            // Bounded: stops when told, or after 2,000 requests.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (status, _, _) = get(&url, &[("proxy-authorization", &auth)]).await;
                if status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed during rotation: {status}");
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    let new_token = relay.cli(&["tokens", "rotate", token_id(&token), "--grace", "1h"]);
    assert_eq!(
        token_id(&new_token),
        token_id(&token),
        "rotation keeps the id"
    );
    assert_ne!(new_token, token);
    replace_file(&token_file, &format!("{new_token}\n"));

    // The agent opens sessions with the new token, then drains the old ones.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rotation under load: {ok} requests succeeded, {failed} failed");
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert_eq!(failed, 0);
    relay.wait_sessions(2).await;
    let list: serde_json::Value =
        serde_json::from_str(&relay.cli_output(&["tokens", "list", "--json"])).unwrap();
    assert!(
        list[0]["status"]
            .as_str()
            .unwrap()
            .starts_with("rotating until")
    );
    // The relay told the agent on its old sessions.
    let noticed = agent
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("rotated this agent's token"));
    assert!(noticed, "no rotation notice in the agent's log");
}

#[tokio::test]
async fn old_secret_works_inside_the_grace_only_and_expired_tokens_are_refused() {
    let relay = Relay::start("");
    let old = relay.token("acme");
    let new = relay.cli(&["tokens", "rotate", token_id(&old), "--grace", "2s"]);
    for token in [&old, &new] {
        let (status, _, _) = handshake(&relay, token).await;
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    }
    // Grace ends are rounded up to the next whole second: wait grace + 1 s.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (status, _, _) = handshake(&relay, &old).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "old secret after the grace"
    );
    let (status, _, _) = handshake(&relay, &new).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);

    let short = relay.cli(&[
        "tokens",
        "create",
        "--account",
        "acme",
        "--expires-in",
        "1s",
    ]);
    let (status, _, _) = handshake(&relay, &short).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _, _) = handshake(&relay, &short).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "expired");
}

#[tokio::test]
async fn failed_authentications_are_rate_limited_but_valid_credentials_are_not() {
    let relay = Relay::start("");
    let good = relay.token("acme");
    let key = relay.key("acme");
    let mut unauthorized = 0;
    let mut limited = 0;
    for i in 0..200u32 {
        let bad = format!("tta_{:016x}_{}", i, "0".repeat(64));
        let (status, headers, body) = handshake(&relay, &bad).await;
        match status {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(problem_code(&headers, &body), "rate_limited");
                limited += 1
            }
            other => panic!("unexpected {other}"),
        }
    }
    eprintln!("200 bad tokens: {unauthorized} answered 401, {limited} answered 429");
    assert!(
        unauthorized >= 20 && limited >= 100,
        "{unauthorized} / {limited}"
    );
    assert_eq!(relay.metric("tether_relay_auth_failures_total").await, 200);
    // Same address, valid credentials: never limited.
    let (status, _, _) = handshake(&relay, &good).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    let auth = format!("Bearer {key}");
    let (status, headers, body) = get(
        &relay.url("/v1/routes/x/y"),
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_code(&headers, &body), "no_agent");
}

#[tokio::test]
async fn accept_rotation_writes_the_pushed_token_and_the_agent_moves_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, "adm-key").unwrap();
    let relay = Relay::start(&format!("[admin]\nkey_file = \"{}\"\n", key_file.display()));
    let upstream = Upstream::start().await;
    let token = relay.token("acme");
    let key = relay.key("acme");
    let token_file = dir.path().join("token");
    replace_file(&token_file, &format!("{token}\n"));
    let agent = Agent::spawn(
        &format!(
            "[relay]\nurl = \"{}\"\ntoken_file = \"{}\"\naccept_rotation = true\n\n[agent]\nname = \"a\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
            relay.agent_url(),
            token_file.display(),
            upstream.route("sample", "[\"GET\"]", "[\"/**\"]"),
        ),
        &[],
    );
    relay.wait_sessions(2).await;

    let (status, rotated) = json_call(
        http::Method::POST,
        &format!(
            "http://{}/v1/admin/tokens/{}/rotate",
            relay.admin,
            token_id(&token)
        ),
        &[("authorization", "Bearer adm-key")],
        Some(serde_json::json!({ "grace": "3s" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_token = rotated["token"].as_str().unwrap().to_owned();

    let started = Instant::now();
    while std::fs::read_to_string(&token_file).unwrap().trim() != new_token {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "token file not updated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);
    // The token it replaced is kept, for the fallback (see tests/rotation.rs).
    let prev = dir.path().join("token.prev");
    assert_eq!(std::fs::read_to_string(&prev).unwrap().trim(), token);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&prev).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o600);
    // Past the grace, sessions on the old secret are closed; the agent's
    // new ones keep serving.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    relay.wait_sessions(2).await;
    let auth = format!("Bearer {key}");
    let (status, _, _) = get(
        &relay.url("/v1/routes/sample/echo"),
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for log in [&relay.log, &agent.log] {
        for line in log.lock().unwrap().iter() {
            assert!(
                !line.contains(&new_token[21..]),
                "pushed token in a log line: {line}"
            );
        }
    }
}
