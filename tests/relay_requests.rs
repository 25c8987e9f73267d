//! What the relay does with requests no well-behaved client sends: bodies
//! with broken chunked framing or over the cap, raw non-ASCII bytes in the
//! target, hop-by-hop and `Tether-*` trailers; and the mode of its SQLite
//! file. Raw TCP clients send exactly the bytes under test.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::raw_http::{self, RawResponse};
use support::*;

const LIMIT: Duration = Duration::from_secs(10);

/// `METHOD target` with the stack's key, `extra` header lines (each ending
/// in CRLF) and `body` bytes after the head.
fn raw(method: &str, target: &[u8], key: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{method} ").into_bytes();
    bytes.extend_from_slice(target);
    bytes.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: relay\r\nProxy-Authorization: Bearer {key}\r\n{extra}\r\n")
            .as_bytes(),
    );
    bytes.extend_from_slice(body);
    bytes
}

/// Waits (bounded) until the relay has logged a line containing `text`:
/// its log reaches the test through a pipe, a moment after the answer.
async fn logged(relay: &Relay, text: &str) {
    until(Duration::from_secs(5), text, || async {
        relay.log.lock().unwrap().iter().any(|l| l.contains(text))
    })
    .await;
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400_and_one_over_the_cap_413() {
    let s = Stack::start_with("[limits]\nmax_body_bytes = 1000\n", "").await;
    let chunked = "Transfer-Encoding: chunked\r\n";

    let bad_size_line = raw(
        "POST",
        b"/v1/routes/sample/upload",
        &s.key,
        chunked,
        b"5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
    );
    let response = raw_http::exchange(s.relay.public, &bad_size_line, LIMIT).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(response.problem_code(), "bad_request");
    logged(&s.relay, "request body unreadable").await;

    let mut over_cap = Vec::new();
    for _ in 0..3 {
        over_cap.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "x".repeat(600)).as_bytes());
    }
    over_cap.extend_from_slice(b"0\r\n\r\n");
    let request = raw(
        "POST",
        b"/v1/routes/sample/upload",
        &s.key,
        chunked,
        &over_cap,
    );
    let response = raw_http::exchange(s.relay.public, &request, LIMIT).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.problem_code(), "payload_too_large");
    logged(&s.relay, "request body over [limits] max_body_bytes").await;

    // Under the cap, chunked still works.
    let body = b"5\r\nhello\r\n0\r\n\r\n";
    let request = raw("POST", b"/v1/routes/sample/upload", &s.key, chunked, body);
    let response = raw_http::exchange(s.relay.public, &request, LIMIT).await;
    assert_eq!(response.status, 200, "{response:?}");
}

#[tokio::test]
async fn raw_non_ascii_and_unsafe_bytes_in_targets_are_400_on_both_listeners() {
    let relay = Relay::start_with_proxy("");
    let upstream = Upstream::start().await;
    let token = relay.token("acme");
    let key = relay.key("acme");
    let routes = format!(
        "{}\n[forward]\nallow = [\"127.0.0.1/32\"]\n",
        upstream.route("sample", r#"["GET"]"#, r#"["/**"]"#)
    );
    let _agent = Agent::start(&relay.agent_url(), &token, "agent-a", &routes);
    relay.wait_sessions(2).await;
    let refused = |response: &RawResponse| {
        assert_eq!(response.status, 400, "{response:?}");
        assert_eq!(response.problem_code(), "bad_request");
    };

    let targets: [&[u8]; 4] = [
        b"/v1/routes/sample/caf\xc3\xa9",
        b"/v1/routes/sample/a\\..\\b",
        b"/v1/routes/sample/echo?q=\xc3\xa9",
        b"/v1/routes/sample/a%zz",
    ];
    for target in targets {
        let request = raw("GET", target, &key, "", b"");
        refused(&raw_http::exchange(relay.public, &request, LIMIT).await);
    }
    // Bytes that are not UTF-8 hyper refuses itself, before the relay.
    let request = raw("GET", b"/v1/routes/sample/\xff", &key, "", b"");
    let response = raw_http::exchange(relay.public, &request, LIMIT).await;
    assert_eq!(response.status, 400, "{response:?}");

    let proxy = relay.proxy.unwrap();
    let target = format!("http://{}/caf\u{e9}", upstream.addr);
    let request = raw("GET", target.as_bytes(), &key, "", b"");
    refused(&raw_http::exchange(proxy, &request, LIMIT).await);

    // The same targets, percent-encoded, are relayed.
    let request = raw("GET", b"/v1/routes/sample/caf%C3%A9", &key, "", b"");
    let response = raw_http::exchange(relay.public, &request, LIMIT).await;
    assert_eq!(response.status, 200, "{response:?}");
    let target = format!("http://{}/caf%C3%A9", upstream.addr);
    let request = raw("GET", target.as_bytes(), &key, "", b"");
    let response = raw_http::exchange(proxy, &request, LIMIT).await;
    assert_eq!(response.status, 200, "{response:?}");
}

/// The trailer sections an upstream received, one per request.
type SeenTrailers = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// An upstream answering every request with the trailers it received,
/// as a JSON list of `[name, value]`; it keeps them for the test too.
async fn trailer_echo() -> (SocketAddr, SeenTrailers) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = SeenTrailers::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let record = record.clone();
                async move {
                    let collected = req.into_body().collect().await;
                    let trailers: Vec<(String, String)> = collected
                        .ok()
                        .and_then(|c| c.trailers().cloned())
                        .unwrap_or_default()
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
                        .collect();
                    let json = serde_json::to_vec(&trailers).unwrap();
                    record.lock().unwrap().push(trailers);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(json))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn request_trailers_reach_the_upstream_filtered_and_do_not_hang() {
    let (echo, seen) = trailer_echo().await;
    let route = format!(
        "[routes.trailers]\nurl = \"http://{echo}\"\nmethods = [\"POST\"]\npaths = [\"/**\"]\n"
    );
    let s = Stack::start_with("", &route).await;
    let request = raw(
        "POST",
        b"/v1/routes/trailers/in",
        &s.key,
        "Transfer-Encoding: chunked\r\nTrailer: Connection, TE, Upgrade, Tether-X, Proxy-Authorization, X-Ok\r\n",
        b"5\r\nhello\r\n0\r\nConnection: close\r\nTE: trailers\r\nUpgrade: h2c\r\nTether-X: 1\r\n\
          Proxy-Authorization: x\r\nX-Ok: 1\r\n\r\n",
    );
    let response = raw_http::exchange(s.relay.public, &request, LIMIT).await;
    assert_eq!(response.status, 200, "{response:?}");
    let got = seen.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![vec![("x-ok".to_owned(), "1".to_owned())]],
        "the upstream saw only X-Ok"
    );
}

#[tokio::test]
async fn a_new_sqlite_store_is_private_to_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[store]\nurl = \"sqlite://{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let relay = |args: &str| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "umask 022 && exec {} --config {} {args}",
            bin("tether-relay").display(),
            config.display()
        ));
        cmd
    };
    let out = relay("tokens create --account acme").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db), 0o600, "the database file");

    // While a relay has it open, its WAL and shared-memory files exist.
    let serving = relay("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serving = KillOnDrop(serving);
    let wal = dir.path().join("relay.db-wal");
    let shm = dir.path().join("relay.db-shm");
    until(LIMIT, "the relay opened its store", || async {
        wal.exists() && shm.exists()
    })
    .await;
    assert_eq!((mode(&wal), mode(&shm)), (0o600, 0o600), "-wal and -shm");
}

/// A child process killed (and reaped) when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_request_head_over_the_session_limit_is_431_and_no_session_dies() {
    // A relay taking heads up to 512 KiB from callers: what it relays is
    // still bounded by the sessions' 64 KiB header list limit, since a
    // head far over what the agent takes would end the agent's session.
    let s = Stack::start_with("[limits]\nmax_header_bytes = 524288\n", "").await;
    let big = "b".repeat(100_000);
    let auth = format!("Bearer {}", s.key);
    let key = ("proxy-authorization", auth.as_str());
    let (status, headers, body) = get(
        &s.relay.url("/v1/routes/sample/echo"),
        &[key, ("x-big", big.as_str())],
    )
    .await;
    assert_eq!(status, 431, "{}", String::from_utf8_lossy(&body));
    assert_eq!(problem_code(&headers, &body), "headers_too_large");
    assert_eq!(s.upstream.count().await, 0);
    assert_eq!(s.relay.sessions().await, 2);
    let (status, _, _) = get(&s.relay.url("/v1/routes/sample/echo"), &[key]).await;
    assert_eq!(status, 200);
}
