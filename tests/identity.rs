//! End-user identity through the real binaries (DESIGN.md, "End-user
//! identity, group rules, policy as code"), with a real issuer: panva's
//! certified `oidc-provider` (tests/support/oidc/) on 127.0.0.1, whose
//! keys the agent fetches itself over loopback http. Tokens the test
//! crafts (alg none, HMAC with the public key, a tampered signature) are
//! made from the issuer's real tokens.

mod support;

#[path = "support/oidc_issuer.rs"]
mod oidc_issuer;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::{HeaderMap, StatusCode};
use oidc_issuer::Issuer;
use support::*;

/// A relay, one upstream, an issuer and an agent trusting it, with the
/// routes the tests use; `identity_extra`: more `[identity]` keys.
struct World {
    relay: Relay,
    upstream: Upstream,
    issuer: Issuer,
    agent: Agent,
    key: String,
    dir: tempfile::TempDir,
}

const POLICY: &str = r#"package tether

default allow := false

allow if {
    input.method == "GET"
    "group:default/platform" in input.groups
    not input.headers.authorization
    not input.headers.cookie
}

reason := sprintf("%s may only read\r\n", [input.user]) if input.method != "GET"
reason := "credentials reached the policy" if input.headers.authorization
"#;

impl World {
    async fn start(identity_extra: &str) -> Self {
        let issuer = Issuer::start(0, "key-1");
        Self::start_with(issuer, identity_extra, &[]).await
    }

    /// `identity_extra` may set `jwks_url` itself; `env`: the agent's.
    async fn start_with(issuer: Issuer, identity_extra: &str, env: &[(&str, &str)]) -> Self {
        let relay = Relay::start("");
        let upstream = Upstream::start().await;
        let token = relay.token("acme");
        let key = relay.key("acme");
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("k8s.rego");
        std::fs::write(&policy, POLICY).unwrap();
        let audit = dir.path().join("audit.jsonl");
        let up = upstream.addr;
        let iss = issuer.url();
        let jwks_url = if identity_extra.contains("jwks_url") {
            String::new()
        } else {
            format!("jwks_url = \"{iss}/jwks\"")
        };
        let config = format!(
            r#"drain_timeout = "2s"
[relay]
url = "{relay_url}"
token = "{token}"

[agent]
name = "agent-a"

[admin]
listen = "127.0.0.1:0"

[audit]
file = "{audit}"

[identity]
issuer = "{iss}"
{jwks_url}
audiences = ["tether"]
groups_claim = "groups"
{identity_extra}

[secrets.k8s_sa]
env = "K8S_SA"

[routes.k8s]
url = "http://{up}"
methods = ["GET", "POST"]
paths = ["/**"]
groups = ["group:default/platform"]
headers = {{ Authorization = "Bearer ${{{{ secrets.k8s_sa }}}}", Impersonate-User = "${{{{ user.name }}}}", Impersonate-Group = "tether:${{{{ user.groups }}}}" }}

[routes.admins]
url = "http://{up}"
paths = ["/**"]
users = ["bob"]
groups = ["group:default/platform-admins-none"]

[routes.open]
url = "http://{up}"
paths = ["/**"]

[routes.passthrough]
url = "http://{up}"
paths = ["/**"]
identity = "required"
forward_identity = true

[routes.policed]
url = "http://{up}"
methods = ["GET", "POST"]
paths = ["/**"]
identity = "required"
policy = "{policy}"

[forward]
allow = ["127.0.0.1/32"]
"#,
            relay_url = relay.agent_url(),
            audit = audit.display(),
            policy = policy.display(),
        );
        let mut env = env.to_vec();
        env.push(("K8S_SA", "sa-token"));
        let agent = Agent::spawn(&config, &env);
        relay.wait_sessions(2).await;
        Self {
            relay,
            upstream,
            issuer,
            agent,
            key,
            dir,
        }
    }

    /// A GET of the relay's `path` with the end-user `token`.
    async fn call_path(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        self.request("GET", path, token, &[]).await
    }

    /// A request to `route` with the end-user `token` (if any) and extra
    /// headers.
    async fn call(
        &self,
        method: &str,
        route_path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        self.request(method, &format!("/v1/routes/{route_path}"), token, extra)
            .await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(self.relay.url(path))
            .header("proxy-authorization", format!("Bearer {}", self.key));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let (status, headers, bytes) = send(req.body(body("")).unwrap()).await;
        let doc = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, doc)
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn header_values(doc: &serde_json::Value, name: &str) -> Vec<String> {
    doc["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_invalid(status: StatusCode, headers: &HeaderMap, doc: &serde_json::Value, token: &str) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{doc}");
    assert_eq!(doc["code"], "identity_invalid", "{doc}");
    assert_eq!(
        headers.get("www-authenticate").map(|v| v.to_str().unwrap()),
        Some("Bearer error=\"invalid_token\"")
    );
    let detail = doc["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("authorization"), "{detail}");
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(
        signature.is_empty() || !detail.contains(signature),
        "the detail echoes the token: {detail}"
    );
}

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

    // The audit line names the user and the issuer.
    let lines = w.audit_lines();
    let line = lines
        .iter()
        .find(|l| l["route"] == "k8s" && l["status"] == 200)
        .expect("audit line");
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

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_is_picked_up_without_a_restart() {
    // A long periodic refresh: only the unknown `kid` makes the agent
    // fetch the keys again.
    let mut w = World::start("jwks_refresh = \"1h\"").await;
    let old = w.issuer.token("jane").await;
    let (status, _, _) = w.call("GET", "k8s/x", Some(&old), &[]).await;
    assert_eq!(status, StatusCode::OK);

    let port = w.issuer.port;
    w.issuer.kill();
    w.issuer = Issuer::start(port, "key-2");
    let new = w.issuer.token("jane").await;
    let (status, _, doc) = w.call("GET", "k8s/x", Some(&new), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    // The old key is gone from the JWKS: its tokens no longer pass (the
    // cache was emptied when the keys changed).
    let (status, headers, doc) = w.call("GET", "k8s/x", Some(&old), &[]).await;
    assert_invalid(status, &headers, &doc, &old);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_issuer_means_cached_keys_then_502() {
    let mut w = World::start("jwks_refresh = \"1s\"\njwks_max_age = \"15s\"").await;
    let jane = w.issuer.token("jane").await;
    let bob = w.issuer.token("bob").await;
    let (status, _, _) = w.call("GET", "k8s/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::OK);
    w.issuer.kill();
    until(Duration::from_secs(30), "a failed key refresh", || async {
        w.agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("cannot fetch the issuer's keys"))
    })
    .await;
    // A reload (SIGHUP) keeps the keys it has: the issuer need not be up.
    w.agent.signal("HUP");
    until(Duration::from_secs(20), "the reload", || async {
        w.agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("configuration reloaded"))
    })
    .await;
    // A token never seen before still verifies with the cached keys.
    let (status, _, doc) = w.call("GET", "admins/x", Some(&bob), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    until(
        Duration::from_secs(30),
        "keys past jwks_max_age",
        || async {
            let (status, _, doc) = w.call("GET", "k8s/x", Some(&jane), &[]).await;
            status == StatusCode::BAD_GATEWAY && doc["code"] == "identity_unavailable"
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn route_policies_decide_with_their_reason_and_never_see_credentials() {
    let w = World::start("").await;
    let jane = w.issuer.token("jane").await;
    let (status, _, doc) = w
        .call("GET", "policed/x", Some(&jane), &[("cookie", "s=1")])
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let (status, _, doc) = w.call("POST", "policed/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{doc}");
    assert_eq!(doc["code"], "denied");
    let detail = doc["detail"].as_str().unwrap();
    assert!(detail.ends_with("policy: jane may only read"), "{detail}");
    let bob = w.issuer.token("bob").await;
    let (status, _, doc) = w.call("GET", "policed/x", Some(&bob), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{doc}");

    // SIGHUP with a policy that does not compile: the running one stays.
    std::fs::write(
        w.dir.path().join("k8s.rego"),
        "package tether\nallow if {\n",
    )
    .unwrap();
    w.agent.signal("HUP");
    until(Duration::from_secs(20), "the reload refused", || async {
        w.agent
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("configuration reload refused"))
    })
    .await;
    let (status, _, doc) = w.call("GET", "policed/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    // A policy that allows everything, reloaded: taken.
    std::fs::write(
        w.dir.path().join("k8s.rego"),
        "package tether\nallow := true\n",
    )
    .unwrap();
    w.agent.signal("HUP");
    until(Duration::from_secs(20), "the new policy", || async {
        let (status, _, _) = w.call("GET", "policed/x", Some(&bob), &[]).await;
        status == StatusCode::OK
    })
    .await;
}

#[test]
fn policy_test_runs_test_rules_and_fails_on_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("k8s.rego");
    std::fs::write(&policy, POLICY).unwrap();
    let tests = dir.path().join("k8s_test.rego");
    std::fs::write(
        &tests,
        r#"package tether_test

import data.tether

test_platform_may_read if {
    tether.allow with input as {"method": "GET", "groups": ["group:default/platform"], "headers": {}}
}

test_writes_are_denied if {
    not tether.allow with input as {"method": "POST", "groups": ["group:default/platform"], "headers": {}}
}
"#,
    )
    .unwrap();
    let run = |files: &[&std::path::Path]| {
        std::process::Command::new(bin("tether-agent"))
            .arg("policy")
            .arg("test")
            .args(files)
            .output()
            .unwrap()
    };
    let out = run(&[&policy, &tests]);
    let text = all_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 passed, 0 failed"), "{text}");

    let failing = dir.path().join("failing_test.rego");
    std::fs::write(
        &failing,
        "package failing_test\n\nimport data.tether\n\ntest_anyone_may_write if {\n    tether.allow with input as {\"method\": \"POST\", \"groups\": [], \"headers\": {}}\n}\n",
    )
    .unwrap();
    let out = run(&[&policy, &tests, &failing]);
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAIL") && text.contains("test_anyone_may_write"),
        "{text}"
    );
}

#[test]
fn check_compiles_policies_and_config_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.rego");
    std::fs::write(&broken, "package tether\nallow if {\n").unwrap();
    let base = "[relay]\nurl = \"wss://relay.example.invalid/v1/agent/connect\"\ntoken = \"t\"\n\n[agent]\nname = \"a\"\n\n";
    let identity = "[identity]\nissuer = \"https://idp.example.invalid\"\njwks_url = \"https://idp.example.invalid/jwks\"\n\n";
    let check = |text: &str| {
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(bin("tether-agent"))
            .args(["check", "--offline", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (out.status.success(), all_output(&out))
    };
    let (ok, text) = check(&format!(
        "{base}[routes.r]\nurl = \"http://127.0.0.1:1\"\npaths = [\"/**\"]\npolicy = \"broken.rego\"\n"
    ));
    assert!(!ok, "{text}");
    assert!(text.contains("broken.rego"), "{text}");

    // A user placeholder on a route that does not require identity.
    let (ok, text) = check(&format!(
        "{base}{identity}[routes.r]\nurl = \"http://127.0.0.1:1\"\npaths = [\"/**\"]\nheaders = {{ X-User = \"${{{{ user.name }}}}\" }}\n"
    ));
    assert!(!ok, "{text}");
    assert!(
        text.contains("agent.toml:15:") && text.contains("user."),
        "{text}"
    );
    // The token may not arrive in Cookie; http only to a loopback host.
    let (ok, text) = check(&format!(
        "{base}[identity]\nissuer = \"x\"\njwks_url = \"http://idp.example.invalid/jwks\"\nheader = \"Cookie\"\n"
    ));
    assert!(!ok, "{text}");
    assert!(
        text.contains("agent.toml:10:") && text.contains("https"),
        "{text}"
    );
    assert!(
        text.contains("agent.toml:11:") && text.contains("Cookie"),
        "{text}"
    );
    // users without [identity].
    let (ok, text) = check(&format!(
        "{base}[routes.r]\nurl = \"http://127.0.0.1:1\"\npaths = [\"/**\"]\nusers = [\"jane\"]\n"
    ));
    assert!(!ok, "{text}");
    assert!(text.contains("needs an [identity] section"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_redirects_and_oversized_documents_are_not_taken() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let key = relay.key("acme");
    let token = relay.token("acme");
    let up = upstream.addr;
    // A JWKS URL that redirects (to a document that would be usable), and
    // one over 256 KiB.
    let cases = [
        (
            "redirected",
            format!("http://{up}/redirect/127.0.0.1:{}/", up.port()),
            "answered 302",
        ),
        (
            "oversized",
            format!("http://{up}/bytes/300000"),
            "over 262144 bytes",
        ),
    ];
    let mut agents = Vec::new();
    for (name, jwks_url, _) in &cases {
        let config = format!(
            "[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n\n[agent]\nname = \"{name}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [identity]\nissuer = \"http://127.0.0.1\"\njwks_url = \"{jwks_url}\"\n\n\
             [routes.{name}]\nurl = \"http://{up}\"\npaths = [\"/**\"]\nidentity = \"required\"\n",
            relay.agent_url()
        );
        agents.push(Agent::spawn(&config, &[]));
    }
    relay.wait_sessions(4).await;
    for ((name, _, logged), agent) in cases.iter().zip(&agents) {
        let (status, headers, bytes) = get(
            &relay.url(&format!("/v1/routes/{name}/x")),
            &[
                ("proxy-authorization", &format!("Bearer {key}")),
                ("authorization", "Bearer a.b.c"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{name}");
        assert_eq!(problem_code(&headers, &bytes), "identity_unavailable");
        let log = agent.log.lock().unwrap().join("\n");
        assert!(log.contains(logged), "{name}: {log}");
    }
}

/// An https server for one name (certificate from a CA of the test's own)
/// answering every request with `document`; the certificate's PEM.
async fn https_jwks(name: &str, document: String) -> (std::net::SocketAddr, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let pem = certified.cert.pem();
    let key =
        rustls_pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, document) = (acceptor.clone(), document.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(b) = tls.read_u8().await else { return };
                    head.push(b);
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{document}",
                    document.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, pem)
}

/// A CONNECT proxy that sends every tunnel to `to` (so a name that does
/// not resolve still reaches a server on loopback) and records the
/// targets asked for.
async fn pinning_proxy(
    to: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(b) = client.read_u8().await else {
                        return;
                    };
                    head.push(b);
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(line);
                let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, asked)
}

// In a network namespace of its own (loopback only, no name server): the
// JWKS host is a name only the proxy knows; were the proxy not used, the
// agent's lookup of it fails there without a packet leaving the machine.
netns_test!(
    the_jwks_is_fetched_over_https_through_the_egress_proxy_with_the_configured_ca,
    jwks_through_the_proxy
);

async fn jwks_through_the_proxy() {
    let issuer = Issuer::start(0, "key-1");
    let document = issuer.jwks().await.to_string();
    let (server, pem) = https_jwks("idp.example.test", document).await;
    let (proxy, asked) = pinning_proxy(server).await;
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), pem).unwrap();
    let extra = format!(
        "jwks_url = \"https://idp.example.test/jwks\"\nca_file = \"{}\"",
        ca.path().display()
    );
    let proxy_url = format!("http://{proxy}");
    let w = World::start_with(issuer, &extra, &[("HTTPS_PROXY", proxy_url.as_str())]).await;
    let jane = w.issuer.token("jane").await;
    let (status, _, doc) = w.call("GET", "k8s/x", Some(&jane), &[]).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|l| l.starts_with("CONNECT idp.example.test:443 ")),
        "{asked:?}"
    );
}
