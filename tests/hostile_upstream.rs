//! An internal service that answers strangely cannot take down a session,
//! mislead the relay or the caller, or smuggle fields through trailers.
//! The hostile upstream is a raw TCP server written here: it sends what
//! no well-behaved HTTP library would.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw HTTP/1.1 upstream on 127.0.0.1: reads one request head per
/// connection and answers by path:
/// - `/big/N`: 200 with an `X-Big` header of N bytes;
/// - `/tether`: 200 with `Tether-*` and `Connection`-named fields;
/// - `/flood`: interim `102` responses, up to 100,000, then nothing;
/// - `/bigtrailer`: a chunked 200 whose trailer is 100 KB;
/// - anything else: 200 `ok`.
struct HostileUpstream {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileUpstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, counted.clone()));
            }
        });
        Self { addr, hits, task }
    }

    fn route(&self, name: &str) -> String {
        format!(
            "[routes.{name}]\nurl = \"http://{}\"\nmethods = [\"GET\"]\npaths = [\"/**\"]\ntimeout = \"30s\"\n",
            self.addr
        )
    }

    /// Requests that reached it for `/big/N` with N over 60,000.
    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for HostileUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut stream: TcpStream, hits: Arc<AtomicU64>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let out: Vec<u8> = if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        if n > 60_000 {
            hits.fetch_add(1, Ordering::SeqCst);
        }
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            "b".repeat(n)
        )
        .into_bytes()
    } else if path == "/tether" {
        b"HTTP/1.1 200 OK\r\nTether-Peer-Miss: 1\r\nTether-Agent: spoofed\r\n\
          Tether-Request-Id: spoofed\r\nConnection: close, x-named\r\nX-Named: 1\r\n\
          content-length: 6\r\n\r\nserved"
            .to_vec()
    } else if path == "/flood" {
        for _ in 0..100_000 {
            if stream
                .write_all(b"HTTP/1.1 102 Processing\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
        return;
    } else if path == "/bigtrailer" {
        format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-big\r\nconnection: close\r\n\r\n\
             4\r\nbody\r\n0\r\nx-big: {}\r\n\r\n",
            "t".repeat(100_000)
        )
        .into_bytes()
    } else {
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_vec()
    };
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// A stack whose agent also has route `hostile` to a [`HostileUpstream`].
async fn stack_with_hostile() -> (Stack, HostileUpstream) {
    let hostile = HostileUpstream::start().await;
    let stack = Stack::start_with("", &hostile.route("hostile")).await;
    (stack, hostile)
}

fn sessions_ended(agent: &Agent) -> usize {
    agent
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("session ended"))
        .count()
}

#[tokio::test]
async fn a_huge_response_header_fails_that_request_alone() {
    let (s, hostile) = stack_with_hostile().await;
    let auth = s.auth();
    let h = [(auth.0, auth.1.as_str())];

    // A stream in flight on the same sessions while the hostile answers come.
    let streaming = {
        let url = s.relay.url("/v1/routes/sample/sse/20");
        let auth = auth.1.clone();
        tokio::spawn(async move {
            let (status, _, body) = get(&url, &[("proxy-authorization", &auth)]).await;
            (status, body)
        })
    };

    // 65,400: just under 64 KiB as written, over it once the agent's
    // HTTP/2 server adds its date field.
    for n in [65_400, 100_000, 300_000] {
        let (status, headers, body) =
            get(&s.relay.url(&format!("/v1/routes/hostile/big/{n}")), &h).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{n}");
        assert_eq!(problem_code(&headers, &body), "upstream_headers_too_large");
    }
    // Each went to the upstream once: never re-sent on another session.
    assert_eq!(hostile.hits(), 3, "each sent once");

    // A 20 KB header is within the session's limit and passes whole.
    let (status, headers, body) = get(&s.relay.url("/v1/routes/hostile/big/20000"), &h).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-big"].len(), 20_000);
    assert_eq!(&body[..], b"ok");

    let (status, body) = streaming.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8_lossy(&body).matches("data:").count(),
        20,
        "the other stream completed whole"
    );
    assert_eq!(sessions_ended(&s.agent), 0, "no session died");
    assert_eq!(s.relay.sessions().await, 2);
}

#[tokio::test]
async fn oversized_response_trailers_reset_only_their_stream() {
    let (s, _hostile) = stack_with_hostile().await;
    let auth = s.auth();
    let req = Request::get(s.relay.url("/v1/routes/hostile/bigtrailer"))
        .header(auth.0, &auth.1)
        .header("te", "trailers")
        .body(tether_wire::empty_body())
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await;
    if let Ok(c) = collected {
        assert!(
            c.trailers().is_none_or(|t| !t.contains_key("x-big")),
            "a 100 KB trailer must never reach the caller"
        );
    }
    let (status, _, _) = get(
        &s.relay.url("/v1/routes/sample/echo"),
        &[(auth.0, auth.1.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sessions_ended(&s.agent), 0, "no session died");
}

#[tokio::test]
async fn a_flood_of_interim_responses_is_cut_short() {
    let (s, _hostile) = stack_with_hostile().await;
    let auth = s.auth();
    // The route's timeout is 30 s: a 504 would mean the flood was not
    // bounded, a 502 that the agent cut it.
    let (status, headers, body) = get(
        &s.relay.url("/v1/routes/hostile/flood"),
        &[(auth.0, auth.1.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem_code(&headers, &body), "upstream_unreachable");
    assert!(String::from_utf8_lossy(&body).contains("interim"));
    assert_eq!(sessions_ended(&s.agent), 0);
}

#[tokio::test]
async fn upstream_tether_fields_never_reach_the_caller() {
    let (s, _hostile) = stack_with_hostile().await;
    let auth = s.auth();
    let (status, headers, body) = get(
        &s.relay.url("/v1/routes/hostile/tether"),
        &[(auth.0, auth.1.as_str())],
    )
    .await;
    // Served by the upstream: the relay must not turn it into a miss.
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"served");
    assert!(!headers.contains_key("tether-peer-miss"));
    assert!(!headers.contains_key("x-named"));
    assert_eq!(headers["tether-agent"], "agent-a");
    assert_ne!(headers["tether-request-id"], "spoofed");
    assert_eq!(headers.get_all("tether-request-id").iter().count(), 1);
    assert_eq!(headers.get_all("tether-agent").iter().count(), 1);
}

/// An upstream that answers with the trailers and the headers it got.
async fn trailer_echo() -> std::net::SocketAddr {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let headers = req.headers().clone();
                let collected = req.into_body().collect().await;
                let trailers = collected
                    .ok()
                    .and_then(|c| c.trailers().cloned())
                    .unwrap_or_default();
                let show = |map: &http::HeaderMap| {
                    map.iter()
                        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v.as_bytes())))
                        .collect::<Vec<_>>()
                        .join(";")
                };
                let text = format!("headers:{}\ntrailers:{}", show(&headers), show(&trailers));
                Ok::<_, std::convert::Infallible>(http::Response::new(body(text)))
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// Sends a chunked request with `trailers` to the relay over raw HTTP/1.1;
/// the whole answer as text.
async fn post_with_trailers(
    relay: &Relay,
    path: &str,
    key: &str,
    trailers: &[(&str, &str)],
) -> String {
    let names: Vec<&str> = trailers.iter().map(|(n, _)| *n).collect();
    let mut text = format!(
        "POST {path} HTTP/1.1\r\nhost: relay\r\nproxy-authorization: Bearer {key}\r\n\
         transfer-encoding: chunked\r\nte: trailers\r\ntrailer: {}\r\nconnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\n",
        names.join(", ")
    );
    for (n, v) in trailers {
        text.push_str(&format!("{n}: {v}\r\n"));
    }
    text.push_str("\r\n");
    let mut stream = TcpStream::connect(relay.public).await.unwrap();
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn request_trailers_follow_the_header_rules() {
    let echo = trailer_echo().await;
    let relay = Relay::start("");
    let token = relay.token("acme");
    let key = relay.key("acme");
    let route = format!(
        "[routes.t]\nurl = \"http://{echo}\"\nmethods = [\"POST\"]\npaths = [\"/**\"]\n\
         headers = {{ X-Api-Key = \"${{{{ secrets.tok }}}}\" }}\n\n\
         [secrets.tok]\nenv = \"TRAILER_TOKEN\"\n"
    );
    let config = format!(
        "[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n[agent]\nname = \"a\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{route}",
        relay.agent_url()
    );
    let _agent = Agent::spawn(&config, &[("TRAILER_TOKEN", "injected-value")]);
    relay.wait_sessions(2).await;

    let answer = post_with_trailers(
        &relay,
        "/v1/routes/t/x",
        &key,
        &[
            ("x-api-key", "caller-chosen"),
            ("content-type", "text/evil"),
            ("x-sum", "ok"),
        ],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let trailers = answer.lines().find(|l| l.starts_with("trailers:")).unwrap();
    assert_eq!(trailers, "trailers:x-sum=ok", "{answer}");
    assert!(answer.contains("x-api-key=injected-value"), "{answer}");

    // A placeholder in a trailer is refused, never expanded.
    let answer = post_with_trailers(
        &relay,
        "/v1/routes/t/x",
        &key,
        &[("x-sum", "${{ secrets.tok }}")],
    )
    .await;
    assert!(!answer.contains("trailers:x-sum"), "{answer}");
    assert!(!answer.contains("x-sum=injected-value"), "{answer}");
}

#[tokio::test]
async fn method_override_headers_are_removed_unless_the_route_keeps_them() {
    let upstream = Upstream::start().await;
    let relay = Relay::start("");
    let token = relay.token("acme");
    let key = relay.key("acme");
    let routes = format!(
        "{}\n{}allow_override_headers = true\n",
        upstream.route("strict", r#"["GET"]"#, r#"["/echo/**"]"#),
        upstream.route("legacy", r#"["GET"]"#, r#"["/echo/**"]"#),
    );
    let _agent = Agent::start(&relay.agent_url(), &token, "a", &routes);
    relay.wait_sessions(2).await;
    let auth = format!("Bearer {key}");
    let sent = [
        ("proxy-authorization", auth.as_str()),
        ("X-HTTP-Method-Override", "DELETE"),
        ("x-original-url", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("x-method-override", "PUT"),
    ];
    let (status, _, body) = get(&relay.url("/v1/routes/strict/echo/x"), &sent).await;
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for name in [
        "x-http-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x-method-override",
    ] {
        assert!(
            seen["headers"].get(name).is_none(),
            "{name} reached the upstream: {seen}"
        );
    }
    let (status, _, body) = get(&relay.url("/v1/routes/legacy/echo/x"), &sent).await;
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        seen["headers"]["x-http-method-override"][0], "DELETE",
        "{seen}"
    );
}
