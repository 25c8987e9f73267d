//! Faults, through the real binaries on 127.0.0.1: agents killed, frozen
//! and drained, the relay killed and drained, a link that stalls, slows
//! or is cut; several agents with selectors; the limits that protect
//! agents and the relay.

mod support;

use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::fault::{FaultProxy, Mode};
use support::*;

/// Relay keepalive short enough for a test to watch it work.
const FAST_PINGS: &str = "[agents]\nping_interval = \"1s\"\nping_timeout = \"2s\"\n";

/// An agent with one session, `tags`, extra `[relay]` keys and the
/// upstream's `sample` route (GET and POST).
fn agent(
    relay_url: &str,
    token: &str,
    name: &str,
    tags: &[&str],
    relay_extra: &str,
    upstream: &Upstream,
) -> Agent {
    let tags: Vec<String> = tags.iter().map(|t| format!("{t:?}")).collect();
    Agent::spawn(
        &format!(
            "drain_timeout = \"5s\"\n[relay]\nurl = \"{relay_url}\"\ntoken = \"{token}\"\nconnections = 1\n\
             {relay_extra}\n[agent]\nname = \"{name}\"\ntags = [{}]\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
            tags.join(", "),
            upstream.route("sample", r#"["GET", "POST"]"#, r#"["/**"]"#)
        ),
        &[],
    )
}

/// A relay (with `relay_extra`), an upstream, a token and a key of account
/// `acme`.
async fn setup(relay_extra: &str) -> (Relay, Upstream, String, String) {
    let relay = Relay::start(relay_extra);
    let upstream = Upstream::start().await;
    let token = relay.token("acme");
    let key = relay.key("acme");
    (relay, upstream, token, key)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Sends `method` to `url` with the key; status, headers and body.
async fn call(
    method: &str,
    url: &str,
    key: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("proxy-authorization", bearer(key));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let body = if method == "POST" {
        body("payload")
    } else {
        body("")
    };
    send(req.body(body).unwrap()).await
}

#[tokio::test]
async fn selectors_need_every_tag_and_load_spreads_over_agents() {
    let (relay, upstream, token, key) = setup("").await;
    let url = relay.agent_url();
    let _a1 = agent(&url, &token, "a1", &["eu", "prod"], "", &upstream);
    let _a2 = agent(&url, &token, "a2", &["eu"], "", &upstream);
    let _a3 = agent(&url, &token, "a3", &["us", "prod"], "", &upstream);
    relay.wait_sessions(3).await;
    let target = relay.url("/v1/routes/sample/echo");

    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..90 {
        let (status, headers, _) = call("GET", &target, &key, &[]).await;
        assert_eq!(status, StatusCode::OK);
        let name = headers["tether-agent"].to_str().unwrap().to_owned();
        *seen.entry(name).or_default() += 1;
    }
    // Sequential requests tie on load; ties are broken at random.
    for name in ["a1", "a2", "a3"] {
        let n = seen.get(name).copied().unwrap_or(0);
        assert!(n >= 10, "{name} served {n} of 90: {seen:?}");
    }

    for _ in 0..10 {
        let (status, headers, _) =
            call("GET", &target, &key, &[("tether-selector", "eu, prod")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["tether-agent"], "a1", "only a1 has eu AND prod");
    }
    let (status, headers, _) = call("GET", &target, &key, &[("tether-selector", "a3")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["tether-agent"], "a3", "the name counts as a tag");
    let (status, headers, body) = call("GET", &target, &key, &[("tether-selector", "eu,us")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_code(&headers, &body), "no_agent");
}

/// Starts `method path` from a caller task and returns once the upstream
/// has received it (the request is in flight); the caller's answer comes
/// from the handle.
async fn in_flight(
    relay: &Relay,
    upstream: &Upstream,
    key: &str,
    method: &str,
    path: &str,
) -> tokio::task::JoinHandle<(StatusCode, http::HeaderMap, bytes::Bytes)> {
    let before = upstream.count().await;
    let (target, key, method) = (relay.url(path), key.to_owned(), method.to_owned());
    let caller = tokio::spawn(async move { call(&method, &target, &key, &[]).await });
    until(
        Duration::from_secs(5),
        "request reaches the upstream",
        || async { upstream.count().await > before },
    )
    .await;
    caller
}

/// Sends `method` to a slow upstream path through agent A; once the
/// upstream has it, starts agent B (also matching) and SIGKILLs A. The
/// caller's answer, and how many requests the upstream saw in the end.
async fn kill_agent_during(method: &str) -> (StatusCode, http::HeaderMap, bytes::Bytes, u64) {
    let (relay, upstream, token, key) = setup("").await;
    let url = relay.agent_url();
    let mut first = agent(&url, &token, "agent-a", &["pool"], "", &upstream);
    relay.wait_sessions(1).await;
    let caller = in_flight(
        &relay,
        &upstream,
        &key,
        method,
        "/v1/routes/sample/slow/1000",
    )
    .await;
    // Another agent that matches is up before the first dies.
    let _second = agent(&url, &token, "agent-b", &["pool"], "", &upstream);
    relay.wait_sessions(2).await;
    first.kill();
    let (status, headers, body) = caller.await.unwrap();
    // Past the time the upstream takes for a request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (status, headers, body, upstream.count().await)
}

#[tokio::test]
async fn agent_killed_during_a_post_gives_agent_lost_and_the_post_is_never_resent() {
    let (status, headers, body, seen) = kill_agent_during("POST").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem_code(&headers, &body), "agent_lost");
    assert_eq!(
        seen, 1,
        "the POST was sent once only, though agent-b matched"
    );
}

#[tokio::test]
async fn agent_killed_during_a_get_is_answered_by_the_other_agent() {
    let (status, headers, body, seen) = kill_agent_during("GET").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["tether-agent"], "agent-b");
    assert_eq!(seen, 2, "the GET was sent again, once");
}

#[tokio::test]
async fn frozen_agent_leaves_rotation_and_requests_keep_succeeding() {
    let (relay, upstream, token, key) = setup(FAST_PINGS).await;
    let url = relay.agent_url();
    let frozen = agent(&url, &token, "agent-a", &[], "", &upstream);
    let _healthy = agent(&url, &token, "agent-b", &[], "", &upstream);
    relay.wait_sessions(2).await;

    frozen.signal("STOP");
    let stopped = Instant::now();
    let target = relay.url("/v1/routes/sample/echo");
    // Requests sent meanwhile: those that land on the frozen agent wait
    // for the keepalive to drop its session, then go to the other agent
    // (GET is idempotent).
    let callers: Vec<_> = (0..6)
        .map(|i| {
            let (target, key) = (target.clone(), key.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300 * i)).await;
                tokio::time::timeout(Duration::from_secs(15), call("GET", &target, &key, &[])).await
            })
        })
        .collect();
    let detected = until(Duration::from_secs(10), "frozen agent dropped", || async {
        relay.sessions().await == 1
    })
    .await;
    eprintln!("frozen agent out of rotation after {detected:?} (ping 1 s + timeout 2 s)");
    for caller in callers {
        let (status, headers, _) = caller.await.unwrap().expect("answered within 15 s");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["tether-agent"], "agent-b");
    }
    for _ in 0..5 {
        let (status, headers, _) = call("GET", &target, &key, &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["tether-agent"], "agent-b");
    }
    assert!(stopped.elapsed() > Duration::from_secs(1));
    frozen.signal("CONT");
    // Thawed, it notices its session is gone and comes back.
    relay.wait_sessions(2).await;
}

#[tokio::test]
async fn sigterm_lets_a_request_in_flight_finish_then_exits_zero() {
    let (relay, upstream, token, key) = setup("").await;
    let mut agent = agent(&relay.agent_url(), &token, "agent-a", &[], "", &upstream);
    relay.wait_sessions(1).await;
    let caller = in_flight(
        &relay,
        &upstream,
        &key,
        "GET",
        "/v1/routes/sample/slow/2000",
    )
    .await;
    agent.signal("TERM");
    let (status, _, body) = caller.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"slow");
    let exit = tokio::task::spawn_blocking(move || agent.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(upstream.count().await, 1);
}

#[tokio::test]
async fn relay_sigterm_finishes_requests_in_flight() {
    let (mut relay, upstream, token, key) = setup("").await;
    let _agent = agent(&relay.agent_url(), &token, "agent-a", &[], "", &upstream);
    relay.wait_sessions(1).await;
    let caller = in_flight(
        &relay,
        &upstream,
        &key,
        "GET",
        "/v1/routes/sample/slow/1500",
    )
    .await;
    relay.signal("TERM");
    let (status, _, body) = caller.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let exit = tokio::task::spawn_blocking(move || relay.wait())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_under_load_answers_every_caller_and_agents_return() {
    let (mut relay, upstream, token, key) = setup("").await;
    let url = relay.agent_url();
    let _a = agent(&url, &token, "agent-a", &[], "", &upstream);
    let _b = agent(&url, &token, "agent-b", &[], "", &upstream);
    relay.wait_sessions(2).await;
    let target = relay.url("/v1/routes/sample/echo");

    // Eight callers, 100 requests each at most, for 6 s at most.
    let deadline = Instant::now() + Duration::from_secs(6);
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (target, key) = (target.clone(), key.clone());
            tokio::spawn(async move {
                let client = client();
                let (mut ok, mut problems, mut refused, mut hung) = (0u32, 0u32, 0u32, 0u32);
                for _ in 0..100 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let req = Request::get(&target)
                        .header("proxy-authorization", bearer(&key))
                        .body(body(""))
                        .unwrap();
                    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                        Err(_) => hung += 1,
                        // The relay was gone: connection refused or reset.
                        Ok(Err(_)) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Ok(Ok(response)) if response.status() == StatusCode::OK => ok += 1,
                        Ok(Ok(response)) => {
                            let ct = response.headers().get("content-type").cloned();
                            assert_eq!(
                                ct.as_ref().map(|v| v.to_str().unwrap()),
                                Some("application/problem+json"),
                                "status {}",
                                response.status()
                            );
                            problems += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ok, problems, refused, hung)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(800)).await;
    tokio::task::block_in_place(|| relay.restart());
    let back = until(Duration::from_secs(10), "agents back", || async {
        relay.sessions().await == 2
    })
    .await;
    eprintln!("both agents back {back:?} after the restarted relay listened");

    let mut totals = (0, 0, 0, 0);
    for caller in callers {
        let (ok, problems, refused, hung) = caller.await.unwrap();
        totals = (
            totals.0 + ok,
            totals.1 + problems,
            totals.2 + refused,
            totals.3 + hung,
        );
    }
    eprintln!(
        "ok {}, problem+json {}, refused {}, hung {}",
        totals.0, totals.1, totals.2, totals.3
    );
    assert_eq!(totals.3, 0, "no caller waited out its timeout");
    assert!(totals.0 > 0);
    // And after it all, requests succeed.
    let (status, _, _) = call("GET", &target, &key, &[]).await;
    assert_eq!(status, StatusCode::OK);
}

/// An agent whose only way to the relay is `proxy`, keepalive 1 s / 2 s
/// on both ends.
fn agent_through(proxy: &FaultProxy, token: &str, upstream: &Upstream) -> Agent {
    let url = format!("ws://{}/v1/agent/connect", proxy.addr);
    agent(
        &url,
        token,
        "agent-a",
        &[],
        "ping_interval = \"1s\"\nping_timeout = \"2s\"\n",
        upstream,
    )
}

#[tokio::test]
async fn half_open_link_is_detected_by_both_ends_and_the_agent_reconnects() {
    let (relay, upstream, token, key) = setup(FAST_PINGS).await;
    let proxy = FaultProxy::start(relay.public).await;
    let agent = agent_through(&proxy, &token, &upstream);
    relay.wait_sessions(1).await;

    proxy.set(Mode::Stall);
    let relay_saw = until(
        Duration::from_secs(10),
        "relay drops the silent session",
        || async { relay.sessions().await == 0 },
    )
    .await;
    let agent_saw = until(
        Duration::from_secs(10),
        "agent drops the silent session",
        || async {
            agent
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("session ended"))
        },
    )
    .await;
    eprintln!(
        "half-open link: relay dropped it after {relay_saw:?}, agent after {agent_saw:?} more"
    );
    // Readiness follows the relay session.
    let ready = format!("http://{}/readyz", agent.admin);
    assert_eq!(get(&ready, &[]).await.0, StatusCode::SERVICE_UNAVAILABLE);
    // While stalled, callers are told at once that no agent is there.
    let target = relay.url("/v1/routes/sample/echo");
    let (status, headers, body) = call("GET", &target, &key, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_code(&headers, &body), "no_agent");

    proxy.set(Mode::Pass);
    relay.wait_sessions(1).await;
    assert!(proxy.accepted() >= 2, "the agent dialled again");
    until(Duration::from_secs(5), "agent ready again", || async {
        get(&ready, &[]).await.0 == StatusCode::OK
    })
    .await;
    let (status, _, _) = call("GET", &target, &key, &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn slow_link_still_carries_requests_and_a_cut_link_is_redialled() {
    let (relay, upstream, token, key) = setup(FAST_PINGS).await;
    let proxy = FaultProxy::start(relay.public).await;
    let _agent = agent_through(&proxy, &token, &upstream);
    relay.wait_sessions(1).await;
    let target = relay.url("/v1/routes/sample/echo");

    proxy.set(Mode::Delay(Duration::from_millis(150)));
    for _ in 0..3 {
        let (status, _, _) = call("POST", &target, &key, &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    proxy.set(Mode::Pass);

    proxy.cut();
    let back = until(Duration::from_secs(10), "agent redials", || async {
        proxy.accepted() >= 2 && relay.sessions().await == 1
    })
    .await;
    eprintln!("cut link: agent back after {back:?}");
    let (status, _, _) = call("GET", &target, &key, &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn callers_over_their_rate_get_429_with_retry_after() {
    let (relay, upstream, token, key) =
        setup("[limits]\ncaller_rate = 1\ncaller_burst = 3\n").await;
    let other = relay.key("acme");
    let _agent = agent(&relay.agent_url(), &token, "agent-a", &[], "", &upstream);
    relay.wait_sessions(1).await;
    let target = relay.url("/v1/routes/sample/echo");
    let mut limited = 0;
    for _ in 0..8 {
        let (status, headers, body) = call("GET", &target, &key, &[]).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(problem_code(&headers, &body), "rate_limited");
            assert_eq!(headers["retry-after"], "1");
            limited += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert!((4..=5).contains(&limited), "{limited} of 8 limited");
    let (status, _, _) = call("GET", &target, &other, &[]).await;
    assert_eq!(status, StatusCode::OK, "each key has its own budget");
}

#[tokio::test]
async fn a_session_at_its_stream_limit_takes_no_more_requests() {
    let (relay, upstream, token, key) = setup("[agents]\nmax_streams = 2\n").await;
    let _agent = agent(&relay.agent_url(), &token, "agent-a", &[], "", &upstream);
    relay.wait_sessions(1).await;
    let slow = relay.url("/v1/routes/sample/slow/1500");
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (slow, key) = (slow.clone(), key.clone());
            tokio::spawn(async move { call("GET", &slow, &key, &[]).await })
        })
        .collect();
    until(
        Duration::from_secs(5),
        "both requests reach the upstream",
        || async { upstream.count().await == 2 },
    )
    .await;
    let (status, headers, body) =
        call("GET", &relay.url("/v1/routes/sample/echo"), &key, &[]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem_code(&headers, &body), "rate_limited");
    for b in busy {
        assert_eq!(b.await.unwrap().0, StatusCode::OK);
    }
    let (status, _, _) = call("GET", &relay.url("/v1/routes/sample/echo"), &key, &[]).await;
    assert_eq!(status, StatusCode::OK);
}
