//! End-to-end: what the relay and the agent refuse, and how they say it.

mod support;

use http::{Request, StatusCode};
use support::*;

// In process: nothing here needs a process of its own.
#[tokio::test]
async fn policy_denies_path_method_and_dot_dot() {
    let s = in_process::stack()
        .route("api", r#"["GET"]"#, r#"["/echo/allowed/**"]"#)
        .start()
        .await;
    let relay = &s.relay;
    let auth = format!("Bearer {}", s.key);
    let h = [("proxy-authorization", auth.as_str())];

    let (status, _, _) = get(&relay.url("/v1/routes/api/echo/allowed/x"), &h).await;
    assert_eq!(status, StatusCode::OK);

    for path in [
        "/v1/routes/api/echo/other",
        "/v1/routes/api/echo/allowed/../../secret",
        "/v1/routes/api/echo/allowed/%2e%2e/%2e%2e/secret",
        "/v1/routes/api/echo/allowed/..;/..;/secret",
        "/v1/routes/api/echo/allowed%2f..%2fsecret",
        "/v1/routes/api/../../../etc/passwd",
    ] {
        let (status, headers, body) = get(&relay.url(path), &h).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(problem_code(&headers, &body), "denied", "{path}");
    }

    let req = Request::post(relay.url("/v1/routes/api/echo/allowed/x"))
        .header("proxy-authorization", &auth)
        .body(body("x"))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(problem_code(&headers, &body), "denied");
    assert!(String::from_utf8_lossy(&body).contains("method POST"));
}

// In process: nothing here needs a process of its own.
#[tokio::test]
async fn missing_or_bad_key_is_401() {
    let s = in_process::stack().start().await;
    let url = s.relay.url("/v1/routes/sample/echo");
    for headers in [
        vec![],
        vec![(
            "proxy-authorization",
            "Bearer ttk_0000000000000000_".to_owned() + &"0".repeat(64),
        )],
        vec![("proxy-authorization", "Bearer nonsense".to_owned())],
        vec![("proxy-authorization", format!("Basic {}", s.key))],
        // The caller's own Authorization is not an API key.
        vec![("authorization", format!("Bearer {}", s.key))],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, resp_headers, body) = get(&url, &h).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(problem_code(&resp_headers, &body), "unauthorized");
    }
}

#[tokio::test]
async fn key_of_another_account_reaches_no_agent() {
    let s = Stack::start().await;
    let other = s.relay.key("globex");
    let auth = format!("Bearer {other}");
    let (status, headers, body) = get(
        &s.relay.url("/v1/routes/sample/echo"),
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_code(&headers, &body), "no_agent");
}

#[tokio::test]
async fn unknown_route_is_404_and_unmatched_selector_503() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let (status, headers, body) = get(&s.relay.url("/v1/routes/nope/x"), &[(k, &v)]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem_code(&headers, &body), "no_such_route");
    let (status, headers, body) = get(
        &s.relay.url("/v1/routes/sample/echo"),
        &[(k, &v), ("tether-selector", "us-east")],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_code(&headers, &body), "no_agent");
}

#[tokio::test]
async fn killed_agent_gives_503_no_agent() {
    let mut s = Stack::start().await;
    let (k, v) = s.auth();
    let url = s.relay.url("/v1/routes/sample/echo");
    assert_eq!(get(&url, &[(k, &v)]).await.0, StatusCode::OK);
    s.agent.kill();
    s.relay.wait_sessions(0).await;
    let (status, headers, body) = get(&url, &[(k, &v)]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_code(&headers, &body), "no_agent");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // Bind and drop a listener: its port is closed for the test's duration.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let relay = Relay::start("");
    let token = relay.token("acme");
    let key = relay.key("acme");
    let routes = format!("[routes.down]\nurl = \"http://127.0.0.1:{port}\"\npaths = [\"/**\"]\n");
    let _agent = Agent::start(&relay.agent_url(), &token, "a", &routes);
    relay.wait_sessions(2).await;
    let auth = format!("Bearer {key}");
    let (status, headers, body) = get(
        &relay.url("/v1/routes/down/x"),
        &[("proxy-authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem_code(&headers, &body), "upstream_unreachable");
}

#[tokio::test]
async fn oversized_headers_are_431_and_bodies_over_the_cap_413() {
    let s = Stack::start_with("", "").await;
    let (k, v) = s.auth();
    let huge = "x".repeat(100 * 1024);
    let (status, _, _) = get(
        &s.relay.url("/v1/routes/sample/echo"),
        &[(k, &v), ("x-big", &huge)],
    )
    .await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    let capped = Stack::start_with("[limits]\nmax_body_bytes = 1024", "").await;
    let (k, v) = capped.auth();
    let req = Request::post(capped.relay.url("/v1/routes/sample/upload"))
        .header(k, &v)
        .body(body(vec![0u8; 4096]))
        .unwrap();
    let (status, headers, body_bytes) = send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_code(&headers, &body_bytes), "payload_too_large");
    // Under the cap still passes.
    let req = Request::post(capped.relay.url("/v1/routes/sample/upload"))
        .header(k, &v)
        .body(body(vec![0u8; 512]))
        .unwrap();
    assert_eq!(send(req).await.0, StatusCode::OK);
}

#[tokio::test]
async fn stalled_clients_do_not_block_others() {
    use tokio::io::AsyncWriteExt;
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let mut stalled = Vec::new();
    // Half a request head, then nothing.
    for _ in 0..50 {
        let mut c = tokio::net::TcpStream::connect(s.relay.public)
            .await
            .unwrap();
        c.write_all(b"GET /v1/routes/sample/echo HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(c);
    }
    // A full head announcing a body that never comes: it reaches the
    // upstream, whose read waits; that stream must not hold up others.
    let mut c = tokio::net::TcpStream::connect(s.relay.public)
        .await
        .unwrap();
    let head = format!(
        "POST /v1/routes/sample/upload HTTP/1.1\r\nHost: x\r\n{k}: {v}\r\ncontent-length: 100000\r\n\r\npartial"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    stalled.push(c);

    for _ in 0..10 {
        let (status, _, _) = get(&s.relay.url("/v1/routes/sample/echo"), &[(k, &v)]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = get(&s.relay.url("/healthz"), &[]).await;
    assert_eq!(status, StatusCode::OK);
}
