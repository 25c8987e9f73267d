//! Pooled HTTP(S) clients towards internal services.
//!
//! One hyper-util pooled client per distinct trust configuration: the
//! system roots, plus a route's `ca_file` when it has one. HTTP/1.1 and
//! HTTP/2 (by ALPN) are both spoken; connections are reused across requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tether_wire::BoxBody;

/// The client type used for every upstream.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, BoxBody>;

/// How long a TCP connect to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a trust configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsConfigError {
    /// The CA file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// Builds and shares clients by CA file.
#[derive(Default)]
pub struct Clients {
    by_ca: HashMap<Option<PathBuf>, UpstreamClient>,
}

impl Clients {
    /// The client for routes trusting the system roots plus `ca_file`.
    pub fn get(&mut self, ca_file: Option<&Path>) -> Result<UpstreamClient, TlsConfigError> {
        let key = ca_file.map(Path::to_owned);
        if let Some(client) = self.by_ca.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(ca_file)?;
        self.by_ca.insert(key, client.clone());
        Ok(client)
    }
}

/// Root store: the system's roots plus the certificates in `extra`.
pub fn root_store(extra: Option<&Path>) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra {
        let err = |message: String| TlsConfigError {
            path: path.to_owned(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// A rustls client config with the ring provider and `roots`.
pub fn tls_client_config(roots: RootCertStore) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Like [`tls_client_config`], presenting the certificate chain in
/// `cert_file` with the private key in `key_file` (PEM) to servers that
/// ask for one (mTLS).
pub fn tls_client_config_with_cert(
    roots: RootCertStore,
    cert_file: &Path,
    key_file: &Path,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let err = |path: &Path, message: String| TlsConfigError {
        path: path.to_owned(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| err(cert_file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(err(cert_file, "no PEM certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| err(key_file, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| err(key_file, e.to_string()))
}

fn build_client(ca_file: Option<&Path>) -> Result<UpstreamClient, TlsConfigError> {
    Ok(pooled(
        tls_client_config(root_store(ca_file)?),
        HttpConnector::new(),
    ))
}

/// The pooled client every upstream call goes out on: TCP over `http`
/// (whose resolver decides which addresses are dialled), TLS with `tls`,
/// HTTP/1.1 or HTTP/2 by ALPN.
fn pooled<R>(
    tls: rustls::ClientConfig,
    mut http: HttpConnector<R>,
) -> Client<HttpsConnector<HttpConnector<R>>, BoxBody>
where
    R: tower_service::Service<hyper_util::client::legacy::connect::dns::Name>
        + Clone
        + Send
        + Sync
        + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr>,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R::Future: Send,
{
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        // A pooled connection found dead before a single byte of the
        // request was written is replaced and the request sent on a fresh
        // one: safe for every method, since the upstream saw nothing. A
        // request that was (partly) written is never re-sent here; the
        // caller gets the error (502 upstream_unreachable).
        .retry_canceled_requests(true)
        // Above the session's limit, so that an HTTP/2 upstream's oversized
        // head reaches the agent's own check (502 upstream_headers_too_large)
        // instead of failing as an unreadable response.
        .http2_max_header_list_size(4 * tether_wire::protocol::MAX_HEADER_LIST_SIZE)
        .build(connector)
}

/// Addresses the forward handler resolved and checked, by hostname: the
/// only addresses the forward client connects to (it never looks a name
/// up itself, so DNS cannot change between the check and the connect).
#[derive(Clone, Default)]
pub struct Pins(Arc<std::sync::Mutex<HashMap<String, Vec<std::net::IpAddr>>>>);

impl Pins {
    /// Records the checked addresses of `host`.
    pub fn set(&self, host: &str, addrs: Vec<std::net::IpAddr>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(host.to_owned(), addrs);
    }

    pub(crate) fn get(&self, host: &str) -> Vec<std::net::IpAddr> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(host).cloned().unwrap_or_default()
    }
}

/// The forward client's resolver: answers from [`Pins`] only.
#[derive(Clone)]
pub struct PinnedResolver(Pins);

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for PinnedResolver {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let addrs: Vec<std::net::SocketAddr> = self
            .0
            .get(name.as_str())
            .into_iter()
            .map(|ip| std::net::SocketAddr::new(ip, 0))
            .collect();
        std::future::ready(if addrs.is_empty() {
            Err(std::io::Error::other(format!(
                "{} has no checked address",
                name.as_str()
            )))
        } else {
            Ok(addrs.into_iter())
        })
    }
}

/// The client forward mode uses: system roots, addresses from `pins`.
pub type ForwardClient = Client<HttpsConnector<HttpConnector<PinnedResolver>>, BoxBody>;

/// Builds the forward client over `pins`.
pub fn forward_client(pins: Pins) -> Result<ForwardClient, TlsConfigError> {
    Ok(pooled(
        tls_client_config(root_store(None)?),
        HttpConnector::new_with_resolver(PinnedResolver(pins)),
    ))
}
