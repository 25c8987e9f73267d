//! A raw HTTP/1.1 exchange over TCP, for requests no HTTP library sends:
//! malformed chunked bodies, raw non-ASCII bytes in the target, trailers;
//! and CONNECT tunnels through the proxy listener.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads a head (through its blank line) byte by byte, at most 64 KiB;
/// `None` if the peer ends or sends more first.
pub async fn read_head(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= 64 * 1024 {
            return None;
        }
        head.push(io.read_u8().await.ok()?);
    }
    Some(head)
}

/// A response read off the socket.
pub struct RawResponse {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `code` of a problem+json body.
    pub fn problem_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let doc: serde_json::Value = serde_json::from_slice(&self.body).expect("problem json");
        doc["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends `request` as it is to `addr` and reads one response (bounded by
/// `limit`, so a hang fails the test instead of stalling it).
pub async fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> RawResponse {
    tokio::time::timeout(limit, async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request).await.expect("write request");
        read_response(&mut tcp).await
    })
    .await
    .unwrap_or_else(|_| panic!("no whole response within {limit:?}"))
}

/// Sends `request` on an open connection (a tunnel) and reads one
/// response, bounded by `limit`.
pub async fn exchange_on(mut tcp: TcpStream, request: &[u8], limit: Duration) -> RawResponse {
    tokio::time::timeout(limit, async {
        tcp.write_all(request).await.expect("write request");
        read_response(&mut tcp).await
    })
    .await
    .unwrap_or_else(|_| panic!("no whole response within {limit:?}"))
}

/// `CONNECT target` through the proxy listener at `proxy` with the API
/// key `key`. The answer's head (and, for a refusal, its body), and on 200
/// the open tunnel.
pub async fn connect(
    proxy: SocketAddr,
    target: &str,
    key: &str,
    limit: Duration,
) -> (RawResponse, Option<TcpStream>) {
    tokio::time::timeout(limit, async {
        let mut tcp = TcpStream::connect(proxy).await.expect("connect");
        let request = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Bearer {key}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .expect("write CONNECT");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            read_more(&mut tcp, &mut buf).await;
        };
        let (status, headers) = parse_head(&buf[..head_end]);
        if status == 200 {
            assert_eq!(buf.len(), head_end + 4, "nothing after a tunnel's 200 head");
            let response = RawResponse {
                status,
                headers,
                body: Vec::new(),
            };
            return (response, Some(tcp));
        }
        let mut body = buf[head_end + 4..].to_vec();
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        while body.len() < len {
            read_more(&mut tcp, &mut body).await;
        }
        (
            RawResponse {
                status,
                headers,
                body,
            },
            None,
        )
    })
    .await
    .unwrap_or_else(|_| panic!("no CONNECT answer within {limit:?}"))
}

/// A status line and header fields (names lower-cased).
fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let head = String::from_utf8_lossy(head).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

async fn read_response(tcp: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        read_more(tcp, &mut buf).await;
    };
    let (status, headers) = parse_head(&buf[..head_end]);
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            read_more(tcp, &mut rest).await;
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(tcp, rest).await
    } else {
        let _ = tcp.read_to_end(&mut rest).await;
        rest
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

async fn dechunk(tcp: &mut TcpStream, mut buf: Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf, b"\r\n") {
                break i;
            }
            read_more(tcp, &mut buf).await;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        buf.drain(..line_end + 2);
        if size == 0 {
            return body;
        }
        while buf.len() < size + 2 {
            read_more(tcp, &mut buf).await;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = tcp.read(&mut chunk).await.expect("read");
    assert!(
        n > 0,
        "connection closed mid-response: {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
