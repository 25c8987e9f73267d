//! Route policies as code (Rego, regorus) through the real binaries:
//! decisions and reasons on requests, SIGHUP keeping a policy that
//! compiles, `tether-agent policy test`, and `check` compiling policies
//! and naming the line of identity config errors.

mod support;

#[path = "support/oidc_issuer.rs"]
mod oidc_issuer;

use std::time::Duration;

use http::StatusCode;
use oidc_issuer::{POLICY, World};
use support::*;

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
