//! HTTP helpers of the tests: a plain client, whole-response sends and
//! problem+json reading.

use super::*;

pub type TestClient = Client<HttpConnector, BoxBody>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

pub fn body(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Sends `req` and collects the whole response.
pub async fn send(req: Request<BoxBody>) -> (StatusCode, HeaderMap, Bytes) {
    let response = client().request(req).await.expect("request");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, bytes)
}

/// GET with headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(tether_wire::empty_body()).unwrap()).await
}

/// The `code` member of a problem document.
pub fn problem_code(headers: &HeaderMap, body: &[u8]) -> String {
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/problem+json"),
        "body: {}",
        String::from_utf8_lossy(body)
    );
    let doc: serde_json::Value = serde_json::from_slice(body).expect("problem json");
    doc["code"].as_str().unwrap_or_default().to_owned()
}

/// Sends a request with a JSON body and returns the status and JSON answer.
pub async fn json_call(
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body_json: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let payload = body_json.map(|j| j.to_string()).unwrap_or_default();
    let (status, _, bytes) = send(req.body(body(payload)).unwrap()).await;
    let doc = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, doc)
}
