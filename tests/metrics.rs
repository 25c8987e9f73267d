//! `/metrics` on both admin listeners counts what really happened.

mod support;

use http::{Request, StatusCode};
use support::isolation::Isolation;
use support::standin::StandIn;
use support::*;

/// The value of the sample line starting with `series ` (name and labels
/// exactly as written), or panics showing the text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, headers, body) = get(&format!("http://{addr}/metrics"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn request_denial_session_and_agent_counters_move() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    for _ in 0..3 {
        let (status, _, _) = get(&s.relay.url("/v1/routes/sample/bytes/1000"), &[(k, &v)]).await;
        assert_eq!(status, StatusCode::OK);
    }
    // DELETE is not among the route's methods: denied by the agent.
    let req = Request::delete(s.relay.url("/v1/routes/sample/echo"))
        .header(k, &v)
        .body(body(""))
        .unwrap();
    assert_eq!(send(req).await.0, StatusCode::FORBIDDEN);
    // No such route: answered by the relay alone.
    let (status, _, _) = get(&s.relay.url("/v1/routes/nope/x"), &[(k, &v)]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let agent = scrape(s.agent.admin).await;
    assert_eq!(
        sample(
            &agent,
            r#"tether_agent_requests_total{route="sample",code="200"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &agent,
            r#"tether_agent_requests_total{route="sample",code="403"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &agent,
            r#"tether_agent_policy_denials_total{route="sample"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &agent,
            r#"tether_agent_response_bytes_total{route="sample"}"#
        ),
        3000.0
    );
    assert_eq!(
        sample(
            &agent,
            r#"tether_agent_request_duration_seconds_count{route="sample"}"#
        ),
        4.0
    );
    assert_eq!(sample(&agent, "tether_agent_sessions"), 2.0);
    assert_eq!(sample(&agent, "tether_agent_requests_in_flight"), 0.0);
    assert_eq!(sample(&agent, "tether_agent_reconnects_total"), 0.0);

    let relay = scrape(s.relay.admin).await;
    assert_eq!(
        sample(&relay, r#"tether_relay_requests_total{code="200"}"#),
        3.0
    );
    assert_eq!(
        sample(&relay, r#"tether_relay_requests_total{code="403"}"#),
        1.0
    );
    assert_eq!(
        sample(&relay, r#"tether_relay_requests_total{code="404"}"#),
        1.0
    );
    assert_eq!(
        sample(&relay, r#"tether_relay_agents_connected{account="acme"}"#),
        1.0
    );
    assert_eq!(sample(&relay, "tether_relay_agent_sessions"), 2.0);
    assert_eq!(sample(&relay, "tether_relay_auth_failures_total"), 0.0);
}

// In a network namespace of its own: the forward targets below are outside
// `allow` and must never be dialled, but if the agent ever did, nothing
// would leave the machine.
isolated_test!(
    metrics_series_stay_bounded_whatever_callers_or_the_relay_send,
    Isolation::default(),
    metrics_series_stay_bounded_body
);

/// Callers choose forward targets and (through a compromised relay) route
/// names: neither may become a metrics label, or every new one grows the
/// agent's memory and `/metrics`.
async fn metrics_series_stay_bounded_body() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let standin = StandIn::start(relay.public);
    let agent = Agent::spawn(
        &format!(
            "[relay]\nurl = \"{}\"\ntoken = \"{token}\"\nconnections = 2\n\n[agent]\nname = \"a\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[forward]\nallow = [\"127.0.0.1/32\"]\n\n{}",
            standin.url(),
            upstream.route("sample", "[\"GET\"]", "[\"/**\"]"),
        ),
        &[],
    );
    let mut standin = tokio::task::block_in_place(|| {
        standin.wait_held();
        standin
    });
    // One session on the stand-in, the other through to the real relay.
    relay.wait_sessions(1).await;
    let auth = format!("Bearer {key}");
    let h = [("proxy-authorization", auth.as_str())];
    assert_eq!(
        get(&relay.url("/v1/routes/sample/echo"), &h).await.0,
        StatusCode::OK
    );
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let before = series(&agent.metrics().await);

    // 2,000 routes the agent does not have, straight from the relay.
    let answer = tokio::task::block_in_place(|| {
        standin.command("flood tunnel.tether.invalid /v1/routes/r 2000")
    });
    assert_eq!(answer, r#"statuses {"404": 2000}"#);
    // 2,000 callers' forward targets outside `allow`, through the relay.
    let mut workers = Vec::new();
    for w in 0..16u32 {
        let (url, auth) = (relay.url(""), auth.clone());
        workers.push(tokio::spawn(async move {
            let mut denied = 0;
            for i in (w * 125)..((w + 1) * 125) {
                let target = format!(
                    "{url}/v1/forward/http/10.77.{}.{}:{}/x",
                    i / 200,
                    i % 200,
                    1000 + i
                );
                let (status, headers, body) = get(&target, &[("proxy-authorization", &auth)]).await;
                if status == StatusCode::FORBIDDEN && problem_code(&headers, &body) == "denied" {
                    denied += 1;
                }
            }
            denied
        }));
    }
    let mut denied = 0;
    for w in workers {
        denied += w.await.unwrap();
    }
    assert_eq!(denied, 2000);

    let text = agent.metrics().await;
    let after = series(&text);
    eprintln!(
        "/metrics: {before} series before, {after} after 4,000 requests ({} bytes)",
        text.len()
    );
    // Two new label values (unknown, forward): a histogram each and a few
    // counters, whatever the number of targets or names.
    assert!(after - before < 60, "{before} -> {after} series:\n{text}");
    let mut labels = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.split("route=\"").nth(1) {
            labels.insert(rest.split('"').next().unwrap().to_owned());
        }
    }
    assert_eq!(
        labels,
        ["forward", "sample", "unknown"].map(str::to_owned).into(),
        "route labels only from the configuration and the fixed set"
    );
    assert_eq!(
        sample(
            &text,
            r#"tether_agent_policy_denials_total{route="forward"}"#
        ),
        2000.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tether_agent_requests_total{route="unknown",code="404"}"#
        ),
        2000.0
    );
}
