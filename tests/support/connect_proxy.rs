//! A CONNECT proxy for tests: what an agent's egress proxy is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A CONNECT proxy on 127.0.0.1 that counts the tunnels it opens and,
/// if `credentials` is set, answers 407 without them.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    tunnels: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl ConnectProxy {
    pub async fn start(credentials: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let expected = credentials.map(|c| {
            format!(
                "proxy-authorization: basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
            .to_ascii_lowercase()
        });
        let (count, no) = (tunnels.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (count, no, expected) = (count.clone(), no.clone(), expected.clone());
                tokio::spawn(async move {
                    let Some(head) = super::raw_http::read_head(&mut client).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let target = head
                        .strip_prefix("connect ")
                        .and_then(|r| r.split_whitespace().next())
                        .unwrap_or_default()
                        .to_owned();
                    let authorized = expected
                        .as_ref()
                        .is_none_or(|e| head.lines().any(|l| l.trim() == e));
                    if target.is_empty() || !authorized {
                        no.fetch_add(1, Ordering::Relaxed);
                        let _ = client
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                    let Ok(mut upstream) = TcpStream::connect(&target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Self {
            addr,
            tunnels,
            refused,
        }
    }

    /// Tunnels opened.
    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Ordering::Relaxed)
    }

    /// Requests refused (407).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
