//! SIGHUP re-reads the agent's routes and secrets without failing a
//! request; a file that does not validate changes nothing.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

fn config(relay: &Relay, token: &str, upstream: &Upstream, paths: &str, extra: &str) -> String {
    format!(
        "drain_timeout = \"5s\"\n[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n[agent]\nname = \"agent-a\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{}\n{extra}",
        relay.agent_url(),
        upstream.route("sample", r#"["GET"]"#, paths)
    )
}

async fn status(relay: &Relay, key: &str, path: &str) -> StatusCode {
    let auth = format!("Bearer {key}");
    get(&relay.url(path), &[("proxy-authorization", &auth)])
        .await
        .0
}

#[tokio::test]
async fn sighup_applies_new_routes_without_failing_requests_and_refuses_a_bad_file() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let agent = Agent::spawn(
        &config(&relay, &token, &upstream, r#"["/echo/**", "/slow/*"]"#, ""),
        &[],
    );
    relay.wait_sessions(2).await;
    assert_eq!(
        status(&relay, &key, "/v1/routes/sample/bytes/10").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&relay, &key, "/v1/routes/extra/echo").await,
        StatusCode::NOT_FOUND
    );

    // Requests keep flowing across the reload, one of them long.
    let slow = {
        let (url, auth) = (
            relay.url("/v1/routes/sample/slow/1500"),
            format!("Bearer {key}"),
        );
        tokio::spawn(async move { get(&url, &[("proxy-authorization", &auth)]).await.0 })
    };
    let steady = {
        let (url, auth) = (
            relay.url("/v1/routes/sample/echo/x"),
            format!("Bearer {key}"),
        );
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                statuses.push(get(&url, &[("proxy-authorization", &auth)]).await.0);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let extra = format!(
        "[routes.extra]\nurl = \"http://{}\"\npaths = [\"/**\"]\n",
        upstream.addr
    );
    std::fs::write(
        &agent.config,
        config(&relay, &token, &upstream, r#"["/**"]"#, &extra),
    )
    .unwrap();
    agent.signal("HUP");

    let mut reloaded = false;
    for _ in 0..100 {
        if status(&relay, &key, "/v1/routes/extra/echo").await == StatusCode::OK {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the relay learned the new route");
    assert_eq!(
        status(&relay, &key, "/v1/routes/sample/bytes/10").await,
        StatusCode::OK
    );
    assert_eq!(
        slow.await.unwrap(),
        StatusCode::OK,
        "the request in flight finished"
    );
    let statuses = steady.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(
        agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("configuration reloaded"))
    );

    // A broken file: refused with its line, the running config stays.
    std::fs::write(
        &agent.config,
        "[relay]\nurl = \"wss://x\"\n\n[routes.bad]\nnope = 1\n",
    )
    .unwrap();
    agent.signal("HUP");
    let mut refused = String::new();
    for _ in 0..100 {
        if let Some(line) = agent
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("reload refused"))
        {
            refused = line.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused.contains("agent.toml:"),
        "names the file and line: {refused}"
    );
    assert_eq!(
        status(&relay, &key, "/v1/routes/extra/echo").await,
        StatusCode::OK
    );
    assert_eq!(relay.sessions().await, 2);
}
