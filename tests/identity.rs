//! End-user identity through the real binaries (DESIGN.md, "End-user
//! identity, group rules, policy as code"), with a real issuer: panva's
//! certified `oidc-provider` (tests/support/oidc/) on 127.0.0.1, whose
//! keys the agent fetches itself over loopback http. Tokens the test
//! crafts (alg none, HMAC with the public key, a tampered signature) are
//! made from the issuer's real tokens. The keys' life cycle is in
//! identity_keys.rs, policies in policy.rs.

mod support;

#[path = "support/oidc_issuer.rs"]
mod oidc_issuer;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::StatusCode;
use oidc_issuer::{Issuer, World, assert_invalid, header_values};
use support::*;

/// `header.payload.signature` with its parts replaced.
fn forge(token: &str, header: Option<serde_json::Value>, signature: Option<&str>) -> String {
    let mut parts = token.split('.');
    let (h, p, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let h = header.map_or_else(|| h.to_owned(), |h| B64.encode(h.to_string()));
    format!("{h}.{p}.{}", signature.unwrap_or(s))
}

/// HMAC-SHA256 (RFC 2104), for the "public key as HMAC secret" forgery.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn group_members_reach_the_route_with_impersonation_from_their_claims() {
    let w = World::start("").await;
    let jane = w.issuer.token("jane").await;
    let (status, _, doc) = w
        .call(
            "GET",
            "k8s/api/v1/pods",
            Some(&jane),
            &[
                ("impersonate-user", "system:admin"),
                ("impersonate-group", "system:masters"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    // The route's headers, filled from the verified claims; the caller's
    // own Impersonate-* and the user's token never reach the upstream.
    assert_eq!(header_values(&doc, "impersonate-user"), ["jane"]);
    assert_eq!(
        header_values(&doc, "impersonate-group"),
        ["tether:group:default/platform", "tether:dev"]
    );
    assert_eq!(header_values(&doc, "authorization"), ["Bearer sa-token"]);

    // The audit line (written in batches, within ~10 ms) names the user
    // and the issuer.
    let k8s_ok = |l: &serde_json::Value| l["route"] == "k8s" && l["status"] == 200;
    until(Duration::from_secs(5), "the audit line", || async {
        w.audit_lines().iter().any(k8s_ok)
    })
    .await;
    let lines = w.audit_lines();
    let line = lines.iter().find(|l| k8s_ok(l)).expect("audit line");
    assert_eq!(line["user"], "jane");
    assert_eq!(line["issuer"], w.issuer.url());

    // Exact, case-sensitive group match: bob is in group:default/Platform.
    let bob = w.issuer.token("bob").await;
    let (status, _, doc) = w.call("GET", "k8s/api", Some(&bob), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{doc}");
    assert_eq!(doc["code"], "denied");
    // users OR groups: bob is listed by name on `admins`, jane is not.
    let (status, _, _) = w.call("GET", "admins/x", Some(&bob), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, doc) = w.call("GET", "admins/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{doc}");
    // Metrics are never labelled by user.
    let metrics = w.agent.metrics().await;
    assert!(!metrics.contains("jane"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_forged_and_foreign_tokens_are_401() {
    let w = World::start("").await;
    let jane = w.issuer.token("jane").await;
    let before = w.upstream.count().await;

    let (status, headers, doc) = w.call("GET", "k8s/api", None, &[]).await;
    assert_invalid(status, &headers, &doc, "");

    // A tampered signature.
    let sig = jane.rsplit('.').next().unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let tampered = forge(&jane, None, Some(&format!("{flipped}{}", &sig[1..])));
    let (status, headers, doc) = w.call("GET", "k8s/api", Some(&tampered), &[]).await;
    assert_invalid(status, &headers, &doc, &tampered);

    // alg none, and HS256 keyed with the issuer's public key.
    let kid = "key-1";
    let none = forge(
        &jane,
        Some(serde_json::json!({"alg": "none", "kid": kid})),
        Some(""),
    );
    let (status, headers, doc) = w.call("GET", "k8s/api", Some(&none), &[]).await;
    assert_invalid(status, &headers, &doc, &none);
    let public = w.issuer.jwks().await["keys"][0].to_string();
    let unsigned = forge(
        &jane,
        Some(serde_json::json!({"alg": "HS256", "kid": kid})),
        Some("x"),
    );
    let signing_input = unsigned.rsplit_once('.').unwrap().0;
    let mac = B64.encode(hmac_sha256(public.as_bytes(), signing_input.as_bytes()));
    let hmac = format!("{signing_input}.{mac}");
    let (status, headers, doc) = w.call("GET", "k8s/api", Some(&hmac), &[]).await;
    assert_invalid(status, &headers, &doc, &hmac);
    // A `jku` pointing elsewhere is never followed: still the agent's keys.
    let jku = forge(
        &jane,
        Some(serde_json::json!({"alg": "ES256", "kid": "other", "jku": "http://127.0.0.1:9/jwks"})),
        None,
    );
    let (status, headers, doc) = w.call("GET", "k8s/api", Some(&jku), &[]).await;
    assert_invalid(status, &headers, &doc, &jku);

    // A real token of another issuer (its own key, its own `iss`).
    let other = Issuer::start(0, "key-1");
    let foreign = other.token("jane").await;
    let (status, headers, doc) = w.call("GET", "k8s/api", Some(&foreign), &[]).await;
    assert_invalid(status, &headers, &doc, &foreign);

    assert_eq!(w.upstream.count().await, before, "the upstream was called");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_header_reaches_only_routes_that_forward_it() {
    let w = World::start("").await;
    let jane = w.issuer.token("jane").await;
    // A route without identity rules does not look at the token, and
    // does not pass it on either.
    let (status, _, doc) = w.call("GET", "open/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(header_values(&doc, "authorization").is_empty(), "{doc}");
    let (status, _, doc) = w
        .call("GET", "open/x", None, &[("impersonate-user", "admin")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(header_values(&doc, "impersonate-user").is_empty(), "{doc}");
    // Nor does forward mode.
    let (status, _, doc) = w
        .call_path(
            &format!("/v1/forward/http/{}/echo", w.upstream.addr),
            Some(&jane),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(header_values(&doc, "authorization").is_empty(), "{doc}");
    // forward_identity = true passes it on, verified.
    let (status, _, doc) = w.call("GET", "passthrough/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(
        header_values(&doc, "authorization"),
        [format!("Bearer {jane}")]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_are_filled_once_and_unsafe_claims_are_refused() {
    let w = World::start("").await;
    // A group holding a placeholder is text, never expanded (single pass).
    let curly = w.issuer.token("curly").await;
    let (status, _, doc) = w.call("GET", "k8s/x", Some(&curly), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(
        header_values(&doc, "impersonate-group"),
        [
            "tether:group:default/platform",
            "tether:${{ secrets.k8s_sa }}"
        ]
    );
    // CR/LF in a claim, and more than 100 groups: 403.
    for user in ["mallory", "crowd"] {
        let token = w.issuer.token(user).await;
        let (status, _, doc) = w.call("GET", "k8s/x", Some(&token), &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{user}: {doc}");
        assert_eq!(doc["code"], "denied");
    }
    // A caller placing a user placeholder itself.
    let jane = w.issuer.token("jane").await;
    let (status, _, doc) = w
        .call(
            "GET",
            "k8s/x",
            Some(&jane),
            &[("x-who", "${{ user.name }}")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tokens_are_refused() {
    let w = World::start("leeway = \"0s\"").await;
    // `brief` tokens live 1 s; the verified-token cache ends at `exp` too.
    let brief = w.issuer.token("brief").await;
    until(Duration::from_secs(20), "the token expires", || async {
        let (status, _, doc) = w.call("GET", "k8s/x", Some(&brief), &[]).await;
        status == StatusCode::UNAUTHORIZED && doc["code"] == "identity_invalid"
    })
    .await;
    let jane = w.issuer.token("jane").await;
    let (status, _, _) = w.call("GET", "k8s/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::OK);
}
