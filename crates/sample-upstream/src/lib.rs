//! A small HTTP service that stands in for an internal service.
//!
//! | path | answer |
//! |---|---|
//! | `/bytes/{n}` | `n` bytes of the pattern `i % 251`, streamed in 64 KiB chunks |
//! | `/upload` | reads the whole body as a stream; `{"length":…, "sha256":"…"}` |
//! | `/slow/{ms}` | waits `ms` milliseconds, then `slow` |
//! | `/sse/{n}` | `n` server-sent events, 200 ms apart (tests that nothing buffers) |
//! | `/trailers` | a body followed by the trailer `x-checksum: done` |
//! | `/status/{code}` | that status, empty body |
//! | `/redirect/{host}` | `302` to `http://{host}/` (tests that redirects are passed on, not followed) |
//! | `/__count` | how many requests this server answered before (not counted) |
//! | anything else | a JSON echo of method, path, query, headers and body (first 64 KiB) |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tether_wire::serve::{self, ServeOptions};
use tether_wire::{BoxBody, BoxError, full_body};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Binds `addr` and serves until `shutdown`; returns the bound address.
pub async fn start(addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    start_with_tls(addr, None, shutdown).await
}

/// Like [`start`], speaking HTTPS when given a TLS acceptor.
pub async fn start_with_tls(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    tokio::spawn(serve::serve(
        listener,
        tls,
        ServeOptions::default(),
        serve::handler(move |req, _| handle(req, served.clone())),
        shutdown,
        TaskTracker::new(),
    ));
    Ok(local)
}

async fn handle(req: Request<Incoming>, served: Arc<AtomicU64>) -> Response<BoxBody> {
    let path = req.uri().path().to_owned();
    if path == "/__count" {
        return Response::new(full_body(served.load(Ordering::Relaxed).to_string()));
    }
    served.fetch_add(1, Ordering::Relaxed);
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let first = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("");
    match first {
        "bytes" => match arg.parse::<u64>() {
            Ok(n) => {
                let mut r = Response::new(PatternBody { left: n, offset: 0 }.boxed());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            Err(_) => status(StatusCode::BAD_REQUEST),
        },
        "upload" => upload(req.into_body()).await,
        "slow" => {
            let ms = arg.parse::<u64>().unwrap_or(0).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full_body("slow"))
        }
        "sse" => sse(arg.parse::<u32>().unwrap_or(3).min(1000)),
        "trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("done"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"body"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            let mut r = Response::new(body.map_err(|never| match never {}).boxed());
            r.headers_mut()
                .insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
            r
        }
        "status" => status(
            arg.parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST),
        ),
        "redirect" => {
            let mut r = status(StatusCode::FOUND);
            if let Ok(v) = HeaderValue::from_str(&format!("http://{arg}/")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        _ => echo(req).await,
    }
}

fn status(code: StatusCode) -> Response<BoxBody> {
    let mut r = Response::new(tether_wire::empty_body());
    *r.status_mut() = code;
    r
}

async fn echo(req: Request<Incoming>) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let body = http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
        .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
        .unwrap_or_else(|_| "<body over 64 KiB>".to_owned());
    let req = Request::from_parts(parts, ());
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = headers
            .entry(name.as_str().to_owned())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(list) = entry {
            list.push(
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            );
        }
    }
    let doc = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
        "body": body,
    });
    let mut r = Response::new(full_body(doc.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("x-upstream-note", HeaderValue::from_static("a:b, c;d=e"));
    r
}

async fn upload(mut body: Incoming) -> Response<BoxBody> {
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    length += data.len() as u64;
                    hasher.update(data);
                }
            }
            Err(_) => return status(StatusCode::BAD_REQUEST),
        }
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let doc = serde_json::json!({ "length": length, "sha256": digest });
    Response::new(full_body(doc.to_string()))
}

fn sse(events: u32) -> Response<BoxBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tokio::spawn(async move {
        for i in 0..events {
            let event = Frame::data(Bytes::from(format!("data: event {i}\n\n")));
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let body = http_body_util::StreamBody::new(ReceiverStream(rx));
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// A channel receiver as a stream (avoids a dependency for one adapter).
struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_util::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// `n` bytes of `i % 251`, produced on demand in 64 KiB frames.
struct PatternBody {
    left: u64,
    offset: u64,
}

const CHUNK: usize = 64 * 1024;

/// `CHUNK + 251` bytes of the pattern, built once.
fn pattern_buffer() -> Bytes {
    static BUFFER: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BUFFER
        .get_or_init(|| (0..(CHUNK + 251) as u64).map(pattern_byte).collect())
        .clone()
}

/// The byte at position `i` of every `/bytes/{n}` answer.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64);
        // The pattern repeats every 251 bytes: a chunk is a slice of one
        // precomputed buffer, so producing data costs no copy at all.
        let phase = (self.offset % 251) as usize;
        let chunk = pattern_buffer().slice(phase..phase + n as usize);
        self.left -= n;
        self.offset += n;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}
