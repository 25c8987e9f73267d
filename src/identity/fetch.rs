//! Fetching the issuer's JWKS document: by the agent itself, never through
//! the relay session (DESIGN.md: https only, http only to a loopback host,
//! through `HTTPS_PROXY`/`NO_PROXY` and `[identity] ca_file`, 10 s, at most
//! 256 KiB, no redirects).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::config::{IdentitySettings, KeySource};
use super::jwks::MAX_JWKS_BYTES;

/// Time allowed for one whole fetch: connect, TLS, head and body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the keys could not be fetched (for the agent's log; callers only
/// ever see `identity_unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Could not connect, TLS failed, or the connection broke.
    #[error("cannot reach the JWKS URL: {0}")]
    Connect(String),
    /// Not answered within [`FETCH_TIMEOUT`].
    #[error("no answer within {}", humantime::format_duration(FETCH_TIMEOUT))]
    Timeout,
    /// An answer other than 200 (redirects are not followed).
    #[error("the JWKS URL answered {0} (redirects are not followed)")]
    Status(StatusCode),
    /// A body over [`MAX_JWKS_BYTES`].
    #[error("the JWKS document is over {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// The local file could not be read.
    #[error("cannot read the JWKS file: {0}")]
    File(std::io::Error),
    /// The trust roots could not be built.
    #[error(transparent)]
    Tls(#[from] crate::upstream::TlsConfigError),
}

/// How the agent reaches the issuer's keys.
#[derive(Clone)]
pub struct Fetcher {
    source: KeySource,
    proxy: Option<crate::egress::Proxy>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Fetcher {
    /// The fetcher `settings` describe (trust roots built now).
    pub fn new(settings: &IdentitySettings) -> Result<Self, FetchError> {
        let tls = match &settings.keys {
            KeySource::Url(uri) if uri.scheme_str() == Some("https") => {
                let mut tls =
                    crate::upstream::tls_client_config(settings.ca_file.as_deref(), None)?;
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(Arc::new(tls))
            }
            _ => None,
        };
        Ok(Self {
            source: settings.keys.clone(),
            proxy: settings.proxy.clone(),
            tls,
        })
    }

    /// Whether the keys come from a local file (which never goes stale).
    pub fn is_file(&self) -> bool {
        matches!(self.source, KeySource::File(_))
    }

    /// The JWKS document, at most [`MAX_JWKS_BYTES`].
    pub async fn fetch(&self) -> Result<Bytes, FetchError> {
        match &self.source {
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(FetchError::File)?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(FetchError::TooLarge);
                }
                Ok(bytes.into())
            }
            KeySource::Url(uri) => tokio::time::timeout(FETCH_TIMEOUT, self.get(uri))
                .await
                .map_err(|_| FetchError::Timeout)?,
        }
    }

    async fn get(&self, uri: &Uri) -> Result<Bytes, FetchError> {
        let connect = |e: std::io::Error| FetchError::Connect(e.to_string());
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = match &self.proxy {
            Some(proxy) => crate::egress::connect(proxy, host, port)
                .await
                .map_err(connect)?,
            None => TcpStream::connect((host, port)).await.map_err(connect)?,
        };
        let _ = tcp.set_nodelay(true);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(
                http::header::HOST,
                uri.authority().map_or("", |a| a.as_str()),
            )
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("tether-agent/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        match &self.tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| FetchError::Connect(e.to_string()))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(connect)?;
                send(TokioIo::new(stream), request).await
            }
            None => send(TokioIo::new(tcp), request).await,
        }
    }
}

/// One HTTP/1.1 request on `io`; the body read up to the cap.
async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> Result<Bytes, FetchError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let failed = |e: hyper::Error| FetchError::Connect(crate::error_chain(&e));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(failed)?;
    let driver = tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(failed);
    let result = match response {
        Ok(response) if response.status() == StatusCode::OK => {
            match Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
            {
                Ok(body) => Ok(body.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FetchError::TooLarge),
                Err(e) => Err(FetchError::Connect(e.to_string())),
            }
        }
        Ok(response) => Err(FetchError::Status(response.status())),
        Err(e) => Err(e),
    };
    driver.abort();
    result
}
