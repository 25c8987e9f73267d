//! A relay cannot hijack or brick the agent's credential: tokens pushed on
//! rotation notices are written only in the exact form and with the id of
//! the token in use, and a pushed token the relay then refuses falls back
//! to the previous one. The hostile relay is a stand-in speaking the real
//! handshake and HTTP/2 (Python `h2`); the agent's reconnections meet a
//! real relay behind it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use http::StatusCode;
use support::standin::StandIn;
use support::*;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn notice(claimed_id: &str, token: &str) -> serde_json::Value {
    serde_json::json!({ "token_id": claimed_id, "valid_until": null, "token": token })
}

// Multi-threaded: the stand-in's commands block one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_tokens_of_another_id_or_form_are_refused_and_a_refused_push_falls_back() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let token = relay.token("acme");
    let key = relay.key("acme");
    let id = &token[4..20];
    let mut standin = StandIn::start(relay.public);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let agent = Agent::spawn(
        &format!(
            "drain_timeout = \"2s\"\n[relay]\nurl = \"{}\"\ntoken_file = \"{}\"\naccept_rotation = true\n\
             connections = 1\n\n[agent]\nname = \"a\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
            standin.url(),
            token_file.display(),
            upstream.route("sample", "[\"GET\"]", "[\"/**\"]"),
        ),
        &[],
    );
    standin.wait_held();

    // Another account's token (well-formed), claimed under either id; the
    // token in use with CR/LF after it; the same id in a wrong form.
    let other = relay.token("other");
    let other_id = &other[4..20];
    let same_id_new = format!("tta_{id}_{}", "5".repeat(64));
    let hostile = [
        notice(other_id, &other),
        notice(id, &other),
        notice(id, &format!("{same_id_new}\r\nX-Injected: yes")),
        notice(id, &format!("{same_id_new}\n")),
        notice(id, &format!("tta_{id}_{}", "5".repeat(63))),
        notice(id, &format!("tta_{id}_{}", "F".repeat(64))),
        notice(id, "garbage"),
    ];
    let answers: Vec<String> = hostile.iter().map(|n| standin.notice(n)).collect();
    // A time no clock can hold, and no token: logged, nothing else.
    let far = serde_json::json!({ "token_id": id, "valid_until": i64::MAX });
    assert_eq!(standin.notice(&far), "status 204", "answered, no panic");
    assert_eq!(read(&token_file), token, "token_file untouched");
    assert!(!dir.path().join("token.prev").exists());
    assert!(answers.iter().all(|a| a == "status 403"), "{answers:?}");

    // A well-formed token of the same id with a secret the relay never
    // issued: written (the old one kept in .prev), then refused by the
    // real relay at the handshake, so the agent goes back to .prev. A
    // second push right behind it, before any session used the first,
    // must not push the working token out of .prev (two pushes used to
    // leave no working token on disk).
    let same_id_second = format!("tta_{id}_{}", "6".repeat(64));
    assert_eq!(standin.notice(&notice(id, &same_id_new)), "status 204");
    let second = standin.notice(&notice(id, &same_id_second));
    until(
        Duration::from_secs(20),
        "fell back to the previous token",
        || async {
            read(&token_file) == token
                && dir.path().join("token.refused").exists()
                && relay.sessions().await == 1
        },
    )
    .await;
    // Almost always refused outright; if a redial restored the working
    // token between the two notices, the second was a fresh push that
    // fell back the same way.
    let raced = second != "status 403";
    assert_eq!(read(&token_file), token, "the working token is back");
    assert_eq!(read(&dir.path().join("token.prev")), token);
    for file in ["token", "token.prev", "token.refused"] {
        assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
    }
    let auth = format!("Bearer {key}");
    let (status, _, _) = get(
        &relay.url("/v1/routes/sample/echo"),
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "served through the real relay");

    let (status, _, _) = get(&format!("http://{}/readyz", agent.admin), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = agent.metrics().await;
    let series_expected = if raced {
        Vec::new()
    } else {
        vec![
            r#"tether_agent_token_rotations_total{outcome="refused"} 8"#,
            r#"tether_agent_token_rotations_total{outcome="accepted"} 1"#,
            r#"tether_agent_token_rotations_total{outcome="restored_previous"} 1"#,
        ]
    };
    for series in series_expected {
        assert!(metrics.contains(series), "{series} not in {metrics}");
    }
    let log = agent.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|l| l.contains("accepted the previous one")),
        "the fallback is logged"
    );
    for line in &log {
        for secret in [
            &token[21..],
            &other[21..],
            &same_id_new[21..],
            &same_id_second[21..],
        ] {
            assert!(!line.contains(secret), "a token in a log line: {line}");
        }
    }
}
