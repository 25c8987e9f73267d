//! `/metrics` on both admin listeners counts what really happened.

mod support;

use http::{Request, StatusCode};
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
