//! `[listen] route_domain` through the real relay and agent: a request for
//! `{route}.{route_domain}` reaches that route with its path unchanged,
//! decided per request from its own head; hosts that are not one route
//! label, or that a request names twice differently, reach nothing.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

const DOMAIN: &str = "routes.relay.example.com";

/// A relay with `route_domain` (and a proxy listener), the sample
/// upstream behind routes `sample`, `second` (sets `x-route: second`),
/// `my_route` (not a DNS label) and `locked` (another key only).
struct HostStack {
    relay: Relay,
    upstream: Upstream,
    _agent: Agent,
    key: String,
}

impl HostStack {
    async fn start() -> Self {
        let relay = Relay::start_listening(&format!("route_domain = \"{DOMAIN}\""), "", true);
        let upstream = Upstream::start().await;
        let token = relay.token("acme");
        let key = relay.key("acme");
        let other = relay.key("acme");
        let other_id = &other[4..20];
        let routes = format!(
            "{}\n{}headers = {{ x-route = \"second\" }}\n\n{}\n{}keys = [\"{other_id}\"]\n",
            upstream.route("sample", r#"["GET"]"#, r#"["/**"]"#),
            upstream.route("second", r#"["GET"]"#, r#"["/**"]"#),
            upstream.route("my_route", r#"["GET"]"#, r#"["/**"]"#),
            upstream.route("locked", r#"["GET"]"#, r#"["/**"]"#),
        );
        let agent = Agent::start(&relay.agent_url(), &token, "agent-a", &routes);
        relay.wait_sessions(2).await;
        Self {
            relay,
            upstream,
            _agent: agent,
            key,
        }
    }

    /// GET `path` on the public listener (HTTP/1.1) with `Host: host`.
    async fn get(&self, host: &str, path: &str) -> (StatusCode, String, serde_json::Value) {
        let auth = format!("Bearer {}", self.key);
        let (status, headers, body) = get(
            &self.relay.url(path),
            &[("host", host), ("proxy-authorization", &auth)],
        )
        .await;
        let code = if status.is_success() {
            String::new()
        } else {
            problem_code(&headers, &body)
        };
        (
            status,
            code,
            serde_json::from_slice(&body).unwrap_or_default(),
        )
    }
}

#[tokio::test]
async fn a_route_addressed_by_host_gets_the_path_unchanged_and_its_own_rules() {
    let stack = HostStack::start().await;

    let (status, _, doc) = stack.get(&format!("sample.{DOMAIN}"), "/echo/a?q=1").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["path"], "/echo/a");
    assert_eq!(doc["query"], "q=1");
    assert!(doc["headers"].get("x-route").is_none());

    // Upper case, a port, a trailing dot: the same host.
    let (status, _, doc) = stack
        .get("SAMPLE.Routes.Relay.Example.COM.:443", "/echo/b")
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["path"], "/echo/b");

    // A host match wins over the relay's own paths.
    for path in ["/v1/routes/second/echo", "/healthz", "/v1/agent/connect"] {
        let (status, _, doc) = stack.get(&format!("sample.{DOMAIN}"), path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {doc}");
        assert_eq!(doc["path"], path, "reached the upstream of route sample");
        assert!(doc["headers"].get("x-route").is_none(), "not route second");
    }

    // Hosts under the domain that are not one route label reach nothing.
    for host in [
        format!("a.sample.{DOMAIN}"),
        format!(".{DOMAIN}"),
        format!("my_route.{DOMAIN}"),
        format!("-x.{DOMAIN}"),
    ] {
        let (status, code, _) = stack.get(&host, "/echo").await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "no_such_route"),
            "{host}"
        );
    }
    // A route name that is not a DNS label is reachable by path only.
    let (status, _, doc) = stack.get(DOMAIN, "/v1/routes/my_route/echo").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["path"], "/echo");

    // The route's `keys` apply by host as by path.
    let (status, code, _) = stack.get(&format!("locked.{DOMAIN}"), "/echo").await;
    assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "denied"));
    let (status, _, _) = get(
        &stack.relay.url("/echo"),
        &[("host", &format!("sample.{DOMAIN}"))],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no key");

    assert_eq!(
        stack.upstream.count().await,
        6,
        "only the admitted requests"
    );
}

#[tokio::test]
async fn hosts_are_read_per_request_and_must_agree() {
    let stack = HostStack::start().await;
    let auth = format!("Bearer {}", stack.key);

    // One HTTP/2 connection, two hosts: each request goes where its own
    // :authority says (never where the connection was opened for).
    let tcp = tokio::net::TcpStream::connect(stack.relay.public)
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake::<_, _, tether_wire::BoxBody>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (status, doc) = h2_get(&mut h2, &auth, &format!("sample.{DOMAIN}"), None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(doc["headers"].get("x-route").is_none());
    let (status, doc) = h2_get(&mut h2, &auth, &format!("second.{DOMAIN}:443"), None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["headers"]["x-route"][0], "second");

    // :authority and Host disagreeing: refused, whichever is a route.
    let (status, doc) = h2_get(
        &mut h2,
        &auth,
        &format!("sample.{DOMAIN}"),
        Some(&format!("second.{DOMAIN}")),
    )
    .await;
    assert_eq!(
        (status, doc["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (status, _) = h2_get(
        &mut h2,
        &auth,
        "127.0.0.1",
        Some(&format!("second.{DOMAIN}")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Agreeing (written differently): one host.
    let (status, _) = h2_get(
        &mut h2,
        &auth,
        &format!("second.{DOMAIN}"),
        Some(&format!("Second.{DOMAIN}.")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // HTTP/1.1 absolute form whose authority differs from Host: 400.
    let raw = |target: &str, host: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {auth}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let limit = Duration::from_secs(10);
    let mismatch = raw(
        &format!("http://sample.{DOMAIN}/echo"),
        &format!("second.{DOMAIN}"),
    );
    let response = raw_http::exchange(stack.relay.public, mismatch.as_bytes(), limit).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(response.problem_code(), "bad_request");
    let agreed = raw(
        &format!("http://sample.{DOMAIN}/echo"),
        &format!("sample.{DOMAIN}"),
    );
    let response = raw_http::exchange(stack.relay.public, agreed.as_bytes(), limit).await;
    assert_eq!(response.status, 200, "{response:?}");

    // The proxy listener ignores route_domain: an absolute-form request
    // for a route host is forward mode there (no forward agent here).
    let response = raw_http::exchange(stack.relay.proxy.unwrap(), agreed.as_bytes(), limit).await;
    assert_ne!(response.status, 200, "{response:?}");

    assert_eq!(
        stack.upstream.count().await,
        4,
        "the admitted requests only"
    );
}

/// GET `/echo` on an open HTTP/2 connection with `:authority` and, if
/// given, a `Host` field too.
async fn h2_get(
    h2: &mut hyper::client::conn::http2::SendRequest<tether_wire::BoxBody>,
    auth: &str,
    authority: &str,
    host: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req =
        Request::get(format!("http://{authority}/echo")).header("proxy-authorization", auth);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    let response = h2
        .send_request(req.body(tether_wire::empty_body()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body: Bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}
