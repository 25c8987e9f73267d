//! The agent's audit file and per-caller route restrictions, end to end.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use http::{Request, StatusCode};
use support::isolation::{Isolation, tmpfs_dir};
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

// Its own mount namespace holds a 64 KiB tmpfs for the audit file: a full
// disk without touching the machine's.
isolated_test!(
    a_full_disk_refuses_requests_until_their_lines_can_be_written,
    Isolation { tmpfs: Some("64k") },
    full_disk_body
);

/// No answer without its audit line: once the audit file cannot be
/// written, requests are refused (503 `audit_unavailable`) rather than
/// served without a trace; lines already queued are written when space
/// returns, and so are those of the requests served after.
async fn full_disk_body() {
    use std::io::Write;
    let disk = tmpfs_dir();
    let audit_file = disk.join("audit.jsonl");
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let (token, key) = (relay.token("acme"), relay.key("acme"));
    let agent = Agent::spawn(
        &format!(
            "drain_timeout = \"2s\"\n[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n\n[agent]\nname = \"a\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nfile = \"{}\"\n\n{}",
            relay.agent_url(),
            audit_file.display(),
            upstream.route("sample", "[\"GET\"]", "[\"/**\"]"),
        ),
        &[],
    );
    relay.wait_sessions(2).await;
    let auth = format!("Bearer {key}");
    let call = || async {
        let (status, headers, body) = get(
            &relay.url("/v1/routes/sample/echo/x"),
            &[("proxy-authorization", auth.as_str())],
        )
        .await;
        let id = headers
            .get("tether-request-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let code = if status.is_success() {
            String::new()
        } else {
            problem_code(&headers, &body)
        };
        (status, code, id, body)
    };
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let (status, _, id, _) = call().await;
        assert_eq!(status, StatusCode::OK);
        served.insert(id.unwrap());
    }
    wait_lines(&audit_file, 3).await;

    // Fill the disk (64 KiB: bounded).
    let fill = disk.join("fill");
    let mut f = std::fs::File::create(&fill).unwrap();
    while matches!(f.write(&[0u8; 4096]), Ok(n) if n > 0) {}
    drop(f);
    // Served while lines still fit in the file's last page; then refused.
    let mut refusal = None;
    for _ in 0..300 {
        let (status, code, id, body) = call().await;
        match status {
            StatusCode::OK => {
                served.insert(id.unwrap());
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(code, "audit_unavailable");
                refusal = Some(String::from_utf8_lossy(&body).into_owned());
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refusal = refusal.expect("requests refused once the audit file cannot be written");
    assert!(!refusal.contains(disk.to_str().unwrap()), "{refusal}");
    let (status, _, _) = get(&format!("http://{}/readyz", agent.admin), &[]).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready meanwhile"
    );
    let metrics = agent.metrics().await;
    assert!(
        metrics.contains("tether_agent_audit_available 0"),
        "{metrics}"
    );

    // Space again: requests are served and every line is written, whole.
    std::fs::remove_file(&fill).unwrap();
    let mut again = false;
    for _ in 0..500 {
        let (status, _, id, _) = call().await;
        if status == StatusCode::OK {
            served.insert(id.unwrap());
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again, "served again within 10 s of space returning");
    let (status, _, _) = get(&format!("http://{}/readyz", agent.admin), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let records = wait_lines(&audit_file, served.len()).await;
    let logged: std::collections::BTreeSet<String> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(records.len(), served.len(), "one line per request served");
    assert_eq!(logged, served);
    eprintln!("{} requests served, each with its line", served.len());
}

#[tokio::test]
async fn a_request_its_caller_abandons_still_has_its_audit_line() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let req = http::Request::post(s.relay.url("/v1/routes/sample/slow/2000"))
        .header(k, &v)
        .header("x-request-id", "abandoned-1")
        .body(body("do-something"))
        .unwrap();
    // The caller gives up while the upstream is still working on it.
    let sent = tokio::time::timeout(Duration::from_millis(300), client().request(req)).await;
    assert!(sent.is_err(), "the upstream answers only after 2 s");
    until(
        Duration::from_secs(10),
        "the abandoned request's audit line",
        || {
            let found = s.agent.log.lock().unwrap().iter().any(|l| {
                l.contains("tether::audit")
                    && l.contains("caller_request_id=abandoned-1")
                    && l.contains("status=499")
                    && l.contains("decision=cancelled")
            });
            async move { found }
        },
    )
    .await;
}
