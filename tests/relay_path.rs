//! End-to-end: caller → relay → agent → upstream and back, through the real
//! binaries on 127.0.0.1 (one test builds them in process instead).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use support::*;

// In process: nothing here needs a process of its own.
#[tokio::test]
async fn path_and_query_reach_the_upstream_unchanged() {
    let s = in_process::stack().start().await;
    let (k, v) = s.auth();
    let url = s.relay.url("/v1/routes/sample/echo/a/b?x=1&y=%20two&x=3");
    let (status, headers, body) = get(&url, &[(k, &v)]).await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["path"], "/echo/a/b");
    assert_eq!(doc["query"], "x=1&y=%20two&x=3");
    assert_eq!(headers["tether-agent"], "agent-a");
    assert_eq!(headers["tether-request-id"].len(), 32);
}

#[tokio::test]
async fn header_values_with_separators_survive_both_ways() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let url = s.relay.url("/v1/routes/sample/echo");
    let tricky = "a:b, c;d=e; f=\"g,h\"";
    let (status, headers, body) = get(&url, &[(k, &v), ("x-tricky", tricky)]).await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["headers"]["x-tricky"][0], tricky);
    assert_eq!(headers["x-upstream-note"], "a:b, c;d=e");
}

#[tokio::test]
async fn caller_authorization_passes_proxy_auth_and_tether_headers_do_not() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let url = s.relay.url("/v1/routes/sample/echo");
    let (status, _, body) = get(
        &url,
        &[
            (k, &v),
            ("authorization", "Bearer caller-own-token"),
            ("tether-selector", "agent-a"),
            ("tether-caller-key-id", "forged"),
            ("connection", "x-hop"),
            ("x-hop", "should be dropped"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let headers = doc["headers"].as_object().unwrap();
    assert_eq!(headers["authorization"][0], "Bearer caller-own-token");
    assert!(!headers.contains_key("proxy-authorization"), "{headers:?}");
    assert!(!headers.contains_key("x-hop"), "{headers:?}");
    assert!(
        !headers.keys().any(|h| h.starts_with("tether-")),
        "{headers:?}"
    );
    assert!(!v.is_empty() && !body.windows(20).any(|w| w == &s.key.as_bytes()[..20]));

    // Neither the API key nor the agent token reaches any log line, at
    // debug level, dependencies included.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for log in [&s.relay.log, &s.agent.log] {
        let lines = log.lock().unwrap();
        assert!(lines.len() > 10);
        for line in lines.iter() {
            assert!(
                !line.contains(&s.key[21..]),
                "API key in a log line: {line}"
            );
            assert!(
                !line.contains(&s.token[21..]),
                "agent token in a log line: {line}"
            );
        }
    }
}

#[tokio::test]
async fn eight_mib_upload_arrives_byte_exact() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expected: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let req = Request::post(s.relay.url("/v1/routes/sample/upload"))
        .header(k, v)
        .body(body(data))
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["length"], 8 * 1024 * 1024);
    assert_eq!(doc["sha256"], expected);
}

#[tokio::test]
async fn large_download_streams_byte_exact_with_flat_memory() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    const SIZE: u64 = 256 * 1024 * 1024;
    let req = Request::get(s.relay.url(&format!("/v1/routes/sample/bytes/{SIZE}")))
        .header(k, v)
        .body(tether_wire::empty_body())
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut offset = 0u64;
    let mut peak_relay = 0;
    let mut peak_agent = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            for (i, b) in data.iter().enumerate() {
                assert_eq!(*b, tether_sample_upstream::pattern_byte(offset + i as u64));
            }
            offset += data.len() as u64;
            if offset % (16 * 1024 * 1024) < data.len() as u64 {
                peak_relay = peak_relay.max(rss_kib(s.relay.pid()));
                peak_agent = peak_agent.max(rss_kib(s.agent.pid()));
            }
        }
    }
    assert_eq!(offset, SIZE);
    eprintln!(
        "peak RSS during {SIZE} byte download: relay {peak_relay} KiB, agent {peak_agent} KiB"
    );
    // Whole-body buffering would need ≥ 256 MiB; streaming stays far below.
    assert!(peak_relay < 96 * 1024, "relay RSS {peak_relay} KiB");
    assert!(peak_agent < 96 * 1024, "agent RSS {peak_agent} KiB");
}

#[tokio::test]
async fn server_sent_events_are_not_buffered() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let req = Request::get(s.relay.url("/v1/routes/sample/sse/5"))
        .header(k, v)
        .body(tether_wire::empty_body())
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = loop {
        let frame = body.frame().await.expect("a frame").unwrap();
        if let Ok(data) = frame.into_data() {
            break data;
        }
    };
    // The upstream sends one event every 200 ms: a buffering hop would
    // hand over several at once (or all five at the end).
    assert_eq!(first, Bytes::from_static(b"data: event 0\n\n"));
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest.iter().filter(|b| **b == b'\n').count(), 8);
}

#[tokio::test]
async fn trailers_are_preserved() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let req = Request::get(s.relay.url("/v1/routes/sample/trailers"))
        .header(k, v)
        .header("te", "trailers")
        .body(tether_wire::empty_body())
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-checksum"], "done");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"body"));
}

#[tokio::test]
async fn hundred_slow_requests_are_multiplexed() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let url = s.relay.url("/v1/routes/sample/slow/1000");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let url = url.clone();
        let v = v.clone();
        tasks.push(tokio::spawn(async move { get(&url, &[(k, &v)]).await }));
    }
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, Bytes::from_static(b"slow"));
    }
    let elapsed = started.elapsed();
    // One at a time would take 100 s; concurrently about one second. The
    // bound is loose on purpose: it tells multiplexing from serialisation,
    // it does not measure speed.
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
}

#[tokio::test]
async fn request_ids_reach_the_upstream_the_logs_and_every_relay_answer() {
    let s = Stack::start().await;
    let (k, v) = s.auth();
    let url = s.relay.url("/v1/routes/sample/echo/id");

    // No id of the caller's: the upstream gets the relay's.
    let (status, headers, body) = get(&url, &[(k, &v)]).await;
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let relay_id = headers["tether-request-id"].to_str().unwrap().to_owned();
    assert_eq!(seen["headers"]["x-request-id"][0], relay_id.as_str());

    // The caller's own is kept, and audited beside the relay's.
    let (status, headers, body) = get(&url, &[(k, &v), ("x-request-id", "trace-42")]).await;
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["x-request-id"][0], "trace-42");
    let relay_id = headers["tether-request-id"].to_str().unwrap().to_owned();
    until(
        Duration::from_secs(10),
        "the audit line names both ids",
        || {
            let found = s.agent.log.lock().unwrap().iter().any(|l| {
                l.contains("tether::audit")
                    && l.contains(&relay_id)
                    && l.contains("caller_request_id=trace-42")
            });
            async move { found }
        },
    )
    .await;

    // One too long is replaced by the relay's.
    let long = "x".repeat(129);
    let (_, headers, body) = get(&url, &[(k, &v), ("x-request-id", &long)]).await;
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        seen["headers"]["x-request-id"][0],
        headers["tether-request-id"].to_str().unwrap()
    );

    // Answers the relay makes itself carry an id, in the header and the
    // problem document, and the relay logs them with it.
    for (path, auth) in [
        ("/v1/routes/sample/echo", None),
        ("/no/such/endpoint", Some((k, v.as_str()))),
        ("/v1/routes/nothing-serves-this/x", Some((k, v.as_str()))),
    ] {
        let headers_sent: Vec<(&str, &str)> = auth.into_iter().collect();
        let (status, headers, body) = get(&s.relay.url(path), &headers_sent).await;
        assert!(
            status.is_client_error() || status.is_server_error(),
            "{path}"
        );
        let id = headers["tether-request-id"].to_str().unwrap().to_owned();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["request_id"], id.as_str(), "{path}");
        until(Duration::from_secs(10), "the relay logs its answer", || {
            let found = s
                .relay
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("answered by the relay") && l.contains(&id));
            async move { found }
        })
        .await;
    }
}
