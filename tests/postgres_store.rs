//! The relay store on a real Postgres, shared by two relay processes.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

#[tokio::test]
async fn two_relays_share_tokens_keys_and_revocations_through_postgres() {
    let pg = Postgres::start().await;
    let a = Relay::start_on("", Some(&pg.url));
    let b = Relay::start_on("", Some(&pg.url));
    // Created through A's CLI, used on B.
    let token = a.token("acme");
    let key = a.key("acme");
    let upstream = Upstream::start().await;
    let _agent = Agent::start(
        &b.agent_url(),
        &token,
        "pg-agent",
        &upstream.route("r", "[\"GET\"]", "[\"/**\"]"),
    );
    b.wait_sessions(2).await;
    let auth = format!("Bearer {key}");
    let (status, _, _) = get(
        &b.url("/v1/routes/r/echo"),
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The tables hold hashes only.
    let dump = pg.psql(
        "SELECT * FROM agent_tokens; SELECT * FROM api_keys; SELECT * FROM credential_events;",
    );
    assert!(dump.contains(&token[4..20]), "ids are stored: {dump}");
    assert!(
        !dump.contains(&token[21..]) && !dump.contains(&key[21..]),
        "a secret in the tables"
    );

    // Listing from B shows what A created.
    let list: serde_json::Value =
        serde_json::from_str(&b.cli_output(&["tokens", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Revoked through A: B closes the sessions within a second.
    let started = Instant::now();
    a.cli_output(&["tokens", "revoke", &token[4..20]]);
    while b.sessions().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "B kept the sessions"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gap = started.elapsed();
    eprintln!("revoke on relay A → sessions closed on relay B: {gap:?}");
    assert!(gap < Duration::from_secs(1), "took {gap:?}");
    a.cli_output(&["keys", "revoke", &key[4..20]]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, _) = get(
        &b.url("/v1/routes/r/echo"),
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
