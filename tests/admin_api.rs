//! The relay's admin API: admin listener only, bearer admin key, and the
//! `agents` command that asks it.

mod support;

use http::{Method, StatusCode};
use serde_json::json;
use support::*;

#[tokio::test]
async fn admin_api_needs_the_key_and_is_never_on_the_public_listener() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, "adm-SECRET-9\n").unwrap();
    let relay = Relay::start(&format!("[admin]\nkey_file = \"{}\"\n", key_file.display()));
    let admin = |path: &str| format!("http://{}{path}", relay.admin);
    let good = [("authorization", "Bearer adm-SECRET-9")];

    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let (status, doc) =
            json_call(Method::GET, &admin("/v1/admin/agents"), &headers, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{doc}");
    }
    let (status, _) = json_call(Method::GET, &relay.url("/v1/admin/agents"), &good, None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "never on the public listener"
    );

    // Create a token through the API; an agent connects with it.
    let (status, created) = json_call(
        Method::POST,
        &admin("/v1/admin/tokens"),
        &good,
        Some(json!({ "account": "acme", "name": "eu" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let upstream = Upstream::start().await;
    let _agent = Agent::start(
        &relay.agent_url(),
        &token,
        "api-agent",
        &upstream.route("r", "[\"GET\"]", "[\"/**\"]"),
    );
    relay.wait_sessions(2).await;

    let (status, agents) = json_call(Method::GET, &admin("/v1/admin/agents"), &good, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(agents.as_array().unwrap().len(), 2);
    assert_eq!(agents[0]["name"], "api-agent");
    assert_eq!(agents[0]["token_id"], id.as_str());
    let cli = relay.cli_output(&["agents", "--json", "--admin", &relay.admin.to_string()]);
    assert!(cli.contains("api-agent"), "{cli}");

    let (status, tokens) = json_call(
        Method::GET,
        &admin("/v1/admin/tokens?account=acme"),
        &good,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tokens[0]["id"], id.as_str());
    assert!(
        !tokens.to_string().contains(&token[21..]),
        "never a secret in a listing"
    );

    let (status, rotated) = json_call(
        Method::POST,
        &admin(&format!("/v1/admin/tokens/{id}/rotate")),
        &good,
        Some(json!({ "grace": "1h" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["id"], id.as_str());
    assert_ne!(rotated["token"], token.as_str());

    let (status, _) = json_call(
        Method::POST,
        &admin(&format!("/v1/admin/tokens/{id}/revoke")),
        &good,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    relay.wait_sessions(0).await;
}

#[tokio::test]
async fn without_a_key_the_admin_api_is_off_but_probes_stay() {
    let relay = Relay::start("");
    let (status, _) = json_call(
        Method::GET,
        &format!("http://{}/v1/admin/agents", relay.admin),
        &[("authorization", "Bearer anything")],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, _) = get(&format!("http://{}{probe}", relay.admin), &[]).await;
        assert_eq!(status, StatusCode::OK, "{probe}");
    }
}
