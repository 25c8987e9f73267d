//! The agent's audit file and per-caller route restrictions, end to end.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use http::{Request, StatusCode};
use support::*;

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

async fn wait_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let l = lines(path);
        if l.len() >= n {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("audit file has {} lines, expected {n}", lines(path).len());
}

#[tokio::test]
async fn audit_lines_record_every_request_without_secrets_and_survive_rotation() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let token = relay.token("acme");
    let key = relay.key("acme");
    let other_key = relay.key("acme");
    let key_id = &key[4..20];
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit.jsonl");
    let config = format!(
        "drain_timeout = \"2s\"\n[relay]\nurl = \"{relay_url}\"\ntoken = \"{token}\"\n\n[agent]\nname = \"a\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nfile = \"{audit}\"\n\n\
         [routes.open]\nurl = \"http://{up}\"\nmethods = [\"GET\", \"POST\"]\npaths = [\"/echo/**\", \"/upload\"]\n\
         headers = {{ X-Token = \"${{{{ secrets.tok }}}}\" }}\n\n\
         [routes.restricted]\nurl = \"http://{up}\"\npaths = [\"/**\"]\nkeys = [\"{key_id}\"]\n\n\
         [secrets.tok]\nenv = \"AUDIT_TOKEN\"\n",
        relay_url = relay.agent_url(),
        audit = audit_file.display(),
        up = upstream.addr,
    );
    let agent = Agent::spawn(&config, &[("AUDIT_TOKEN", "au-SECRET-8")]);
    relay.wait_sessions(2).await;
    let auth = format!("Bearer {key}");
    let other_auth = format!("Bearer {other_key}");
    let h = [("proxy-authorization", auth.as_str())];

    let (status, headers, _) = get(&relay.url("/v1/routes/open/echo/x?q=private-query"), &h).await;
    assert_eq!(status, StatusCode::OK);
    let allowed_id = headers["tether-request-id"].to_str().unwrap().to_owned();
    let req = Request::post(relay.url("/v1/routes/open/upload"))
        .header("proxy-authorization", &auth)
        .body(body(vec![7u8; 1000]))
        .unwrap();
    assert_eq!(send(req).await.0, StatusCode::OK);
    let (status, _, _) = get(&relay.url("/v1/routes/open/admin"), &h).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Per-caller restriction: only `key` may use `restricted`.
    let (status, headers, body_bytes) = get(
        &relay.url("/v1/routes/restricted/echo"),
        &[("proxy-authorization", &other_auth)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem_code(&headers, &body_bytes), "denied");
    assert_eq!(
        get(&relay.url("/v1/routes/restricted/echo"), &h).await.0,
        StatusCode::OK
    );

    let records = wait_lines(&audit_file, 5).await;
    let allowed = records
        .iter()
        .find(|r| r["request_id"] == allowed_id.as_str())
        .expect("a line for the allowed request");
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(allowed["route"], "open");
    assert_eq!(allowed["path"], "/echo/x");
    assert_eq!(allowed["caller_key_id"], key_id);
    assert_eq!(allowed["secrets"], serde_json::json!(["tok"]));
    assert!(allowed["bytes_out"].as_u64().unwrap() > 0);
    let upload = records.iter().find(|r| r["path"] == "/upload").unwrap();
    assert_eq!(upload["bytes_in"], 1000);
    assert_eq!(upload["method"], "POST");
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r["decision"] == "denied")
        .collect();
    assert_eq!(denied.len(), 2, "{records:?}");
    let text = std::fs::read_to_string(&audit_file).unwrap();
    assert!(
        !text.contains("au-SECRET-8") && !text.contains("private-query"),
        "{text}"
    );
    let mode = std::fs::metadata(&audit_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // logrotate: move the file away, SIGHUP, and new lines go to a new file.
    std::fs::rename(&audit_file, dir.path().join("audit.jsonl.1")).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&relay.url("/v1/routes/open/echo/after"), &h).await.0,
        StatusCode::OK
    );
    let fresh = wait_lines(&audit_file, 1).await;
    assert_eq!(fresh[0]["path"], "/echo/after");
    assert_eq!(
        lines(&dir.path().join("audit.jsonl.1")).len(),
        records.len()
    );
}
