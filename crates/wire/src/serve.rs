//! The HTTP accept loop used by every listener (relay public and admin,
//! agent admin, sample upstream): HTTP/1.1 and HTTP/2 (with upgrades),
//! optional TLS, header-size and header-read-time limits, and a graceful
//! stop driven by a [`CancellationToken`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::BoxBody;

/// A boxed response future.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<BoxBody>> + Send>>;

/// What a listener does with each request: `(request, peer address)`.
pub type Handler = Arc<dyn Fn(Request<Incoming>, SocketAddr) -> ResponseFuture + Send + Sync>;

/// Limits applied to every connection of a listener.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request head; HTTP/1 answers 431 above it.
    pub max_header_bytes: usize,
    /// A client must send its request head within this time.
    pub header_read_timeout: Duration,
    /// On shutdown, how long open connections get to finish.
    pub drain_timeout: Duration,
    /// TLS handshake deadline.
    pub tls_handshake_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts connections on `listener` until `shutdown` is cancelled, then
/// lets open connections finish (bounded by `drain_timeout`). Connection
/// tasks are spawned on `tracker`, so the caller can wait for them.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    options: ServeOptions,
    handler: Handler,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually EMFILE: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let options = options.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            match tls {
                None => serve_connection(tcp, remote, &options, handler, shutdown).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(options.tls_handshake_timeout, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, remote, &options, handler, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    remote: SocketAddr,
    options: &ServeOptions,
    handler: Handler,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .adaptive_window(true)
        // HTTP/2 callers' WebSocket upgrades (RFC 8441).
        .enable_connect_protocol();
    let service = service_fn(move |req| {
        let response = handler(req, remote);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(options.drain_timeout, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// A handler from an async function.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    Arc::new(move |req, remote| Box::pin(f(req, remote)))
}
