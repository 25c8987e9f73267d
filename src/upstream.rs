//! Pooled HTTP(S) clients towards internal services.
//!
//! One hyper-util pooled client per distinct trust configuration: the
//! system roots, plus a route's `ca_file` when it has one, and per
//! [`Protocol`]: HTTP/1.1 and HTTP/2 by ALPN, or HTTP/2 only (a route's
//! `upstream_http2`, for gRPC). Connections are reused across requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use tether_wire::BoxBody;

/// The client type used for every upstream.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, BoxBody>;

/// How long a TCP connect to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a trust configuration could not be built: the file and what is
/// wrong with it (tether-wire's one PEM loader, shared with the relay).
pub type TlsConfigError = tether_wire::pem::PemError;

/// Which HTTP an upstream is spoken to with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1, or HTTP/2 when TLS negotiates it (ALPN `h2`, `http/1.1`).
    Negotiated,
    /// HTTP/2 only: ALPN `h2` over TLS, prior knowledge over `http`.
    Http2,
}

/// Builds and shares clients by CA file and protocol.
#[derive(Default)]
pub struct Clients {
    by_ca: HashMap<(Option<PathBuf>, Protocol), UpstreamClient>,
}

impl Clients {
    /// The client for routes trusting the system roots plus `ca_file`,
    /// speaking `protocol`.
    pub fn get(
        &mut self,
        ca_file: Option<&Path>,
        protocol: Protocol,
    ) -> Result<UpstreamClient, TlsConfigError> {
        let key = (ca_file.map(Path::to_owned), protocol);
        if let Some(client) = self.by_ca.get(&key) {
            return Ok(client.clone());
        }
        let client = pooled(
            tls_client_config(ca_file, None)?,
            HttpConnector::new(),
            protocol,
        );
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
        tether_wire::pem::add_ca_bundle(&mut roots, path)?;
    }
    Ok(roots)
}

/// A rustls client config (ring) trusting the system roots plus the CA
/// bundle `ca_file`, presenting `client_cert` (certificate file, key
/// file) to servers that ask for one (mTLS).
pub fn tls_client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    tether_wire::pem::client_config(root_store(ca_file)?, client_cert)
}

/// The pooled client every upstream call goes out on: TCP over `http`
/// (whose resolver decides which addresses are dialled), TLS with `tls`,
/// HTTP/1.1 or HTTP/2 as `protocol` says.
fn pooled<R>(
    tls: rustls::ClientConfig,
    mut http: HttpConnector<R>,
    protocol: Protocol,
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
        .https_or_http();
    let connector = match protocol {
        Protocol::Negotiated => connector.enable_http1().enable_http2().wrap_connector(http),
        // ALPN offers `h2` alone; over `http`, `http2_only` below speaks
        // HTTP/2 from the first byte (prior knowledge, RFC 9113 §3.3).
        Protocol::Http2 => connector.enable_http2().wrap_connector(http),
    };
    Client::builder(TokioExecutor::new())
        .http2_only(protocol == Protocol::Http2)
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
        tls_client_config(None, None)?,
        HttpConnector::new_with_resolver(PinnedResolver(pins)),
        Protocol::Negotiated,
    ))
}
