//! tether-relay: the cloud side of Tether.
//!
//! Accepts agents' outbound WebSockets, authenticates their tokens, keeps a
//! registry of connected agents and relays callers' requests to them.
//!
//! # Layout
//! - [`config`]: the TOML configuration and its validation.
//! - `admin`: the admin HTTP API (admin listener only, bearer admin key).
//! - [`credential`]: token and key format, generation, constant-time check.
//! - [`store`]: accounts, tokens and keys (hashes only) in SQLite.
//! - [`auth`]: verifying presented credentials, with a short cache.
//! - `admission`: the one check from a presented credential to an identity
//!   (every listener): store, failed-auth limiter, `[limits] caller_rate`.
//! - [`registry`]: connected agent sessions and the choice of one.
//! - `session`: the `/v1/agent/connect` upgrade and the task owning a session.
//! - `call`: one caller request's id, answers and stamped fields.
//! - `ingress`: the caller API, `/v1/routes/{route}/…`, `/v1/forward/…`,
//!   `/v1/secrets/resolve`; its `relay` is the one path to an agent.
//! - [`route_domain`]: `[listen] route_domain`, routes addressed by host
//!   (`{route}.{route_domain}`), for gRPC and other clients that cannot
//!   prefix their paths.
//! - `proxy`: the forward-proxy listener (`[listen] proxy`): absolute form
//!   and CONNECT, through `ingress`.
//! - `splice`: a CONNECT tunnel joined to the agent's CONNECT stream.
//! - `upgrade`: callers' upgrades (WebSocket, SPDY) as extended CONNECT
//!   to the agent; per-key limit, closed on revocation.
//! - `dispatch`: sends a request to an agent, locally or through a peer,
//!   and keeps `Tether-*` fields an agent relays from passing for ours.
//! - `replay`: whether a request that got no response may go again.
//! - `request_body`: the caller's body, capped, its failure kept.
//! - `cluster`: peer forwarding (cluster mode); `cluster/presence`, the
//!   replicas' presence in the store; `cluster/peer_outcome`, a peer's
//!   answer read as a type (answered, no agent there, refused).
//! - `peer_listener`: `[cluster] peer_listen`: requests a peer replica
//!   forwards here, relayed through a session of this one.
//! - [`limiter`]: failed authentications per source address, and
//!   `[limits] caller_rate` per API key.
//! - [`metrics`]: the Prometheus metrics on the admin listener.
//! - [`preflight`]: `tether-relay check`: the configuration and what it
//!   points at, before serving.
//! - [`version`]: `[agents] min_version` and agents' reported versions.
//! - `watcher`: applies credential changes (revocation, rotation) to live
//!   sessions and caches, from the store, within a second.
//!
//! [`Relay::bind`] opens the store and the listeners; [`Relay::run`] serves
//! until the shutdown token is cancelled, then drains.

mod admin;
mod admission;
pub mod auth;
mod call;
mod cluster;
pub mod config;
pub mod credential;
mod dispatch;
mod ingress;
pub mod limiter;
pub mod metrics;
mod peer_listener;
pub mod preflight;
mod proxy;
pub mod registry;
mod replay;
mod request_body;
pub mod route_domain;
mod session;
mod splice;
pub mod store;
mod upgrade;
pub mod version;
mod watcher;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tether_wire::serve::{self, ServeOptions};
use tether_wire::{BoxBody, ErrorCode, Problem, full_body, protocol};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{RelayConfig, TlsConfig};
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// Errors starting the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why (in the message, so not also the error's `source()`).
        reason: std::io::Error,
    },
    /// The admin key file could not be read.
    #[error("admin key: {0}")]
    AdminKey(String),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tether_wire::pem::PemError),
    /// Cluster mode could not start.
    #[error("[cluster] {0}")]
    Cluster(String),
}

/// State shared by every connection of one relay process.
pub(crate) struct State {
    pub(crate) config: RelayConfig,
    pub(crate) auth: Authenticator,
    pub(crate) registry: Arc<Registry>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) limiter: limiter::FailureLimiter,
    /// `[limits] caller_rate`, when set.
    pub(crate) callers: Option<limiter::CallerLimiter>,
    pub(crate) metrics: metrics::Metrics,
    /// The admin API key (hashed); the API is off without one.
    pub(crate) admin_key: Option<admin::AdminKey>,
    /// Cluster mode: presence and peers.
    pub(crate) cluster: Option<Arc<cluster::Cluster>>,
    /// Upgraded connections open, by API key.
    pub(crate) upgraded: Arc<upgrade::Upgraded>,
    draining: AtomicBool,
}

/// A relay with its store open and listeners bound.
pub struct Relay {
    state: Arc<State>,
    public: TcpListener,
    admin: Option<TcpListener>,
    proxy: Option<TcpListener>,
    peer: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
}

impl Relay {
    /// Opens the store and binds the listeners of `config`. Serving starts
    /// with [`Relay::run`] and stops when `shutdown` is cancelled. The admin
    /// key comes from `[admin] key_file`, else `TETHER_RELAY_ADMIN_KEY`.
    pub async fn bind(
        config: RelayConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, RelayError> {
        let admin_key = match &config.admin.key_file {
            Some(path) => Some(admin::AdminKey::new(
                &std::fs::read_to_string(path)
                    .map_err(|e| RelayError::AdminKey(format!("{}: {e}", path.display())))?,
            )),
            None => std::env::var("TETHER_RELAY_ADMIN_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
                .map(|k| admin::AdminKey::new(&k)),
        };
        let store = Store::open(&config.store.url).await?;
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let public = bind(config.listen.public).await?;
        let admin = match config.listen.admin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let proxy = match config.listen.proxy {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let (cluster, peer) = match &config.cluster {
            Some(c) => (
                Some(Arc::new(
                    cluster::Cluster::open(c, &config.store.url)
                        .await
                        .map_err(RelayError::Cluster)?,
                )),
                Some(bind(c.peer_listen).await?),
            ),
            None => (None, None),
        };
        let state = Arc::new(State {
            auth: Authenticator::new(store),
            registry: Arc::new(Registry::new()),
            shutdown,
            tracker: TaskTracker::new(),
            limiter: limiter::FailureLimiter::default(),
            callers: limiter::CallerLimiter::new(
                config.limits.caller_rate,
                config.limits.caller_burst,
            ),
            admin_key,
            cluster,
            metrics: metrics::Metrics::default(),
            upgraded: Arc::default(),
            draining: AtomicBool::new(false),
            config,
        });
        Ok(Self {
            state,
            public,
            admin,
            proxy,
            peer,
            tls,
        })
    }

    /// Address of the forward-proxy listener, if any.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Address of the peer listener (cluster mode).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Address of the public listener.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .unwrap_or(self.state.config.listen.public)
    }

    /// Address of the admin listener, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The registry of connected agents.
    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry.clone()
    }

    /// Serves until the shutdown token is cancelled, then stops accepting,
    /// lets requests in flight finish (bounded by `drain_timeout`) and
    /// returns.
    pub async fn run(self) {
        let state = self.state;
        let options = ServeOptions {
            max_header_bytes: state.config.limits.max_header_bytes,
            drain_timeout: state.config.drain_timeout,
            ..ServeOptions::default()
        };
        let public_state = state.clone();
        let public = serve::serve(
            self.public,
            self.tls,
            options.clone(),
            serve::handler(move |req, remote| handle_public(public_state.clone(), req, remote)),
            state.shutdown.clone(),
            state.tracker.clone(),
        );
        let admin = async {
            if let Some(listener) = self.admin {
                let admin_state = state.clone();
                serve::serve(
                    listener,
                    None,
                    options.clone(),
                    serve::handler(move |req, remote| {
                        handle_admin(admin_state.clone(), req, remote)
                    }),
                    state.shutdown.clone(),
                    state.tracker.clone(),
                )
                .await;
            }
        };
        let proxy = async {
            if let Some(listener) = self.proxy {
                let proxy_state = state.clone();
                serve::serve(
                    listener,
                    None,
                    options.clone(),
                    serve::handler(move |req, remote| {
                        proxy::handle(proxy_state.clone(), req, remote)
                    }),
                    state.shutdown.clone(),
                    state.tracker.clone(),
                )
                .await;
            }
        };
        let peer = async {
            if let Some(listener) = self.peer {
                let peer_state = state.clone();
                let peer_options = ServeOptions {
                    max_header_bytes: cluster::PEER_HEADER_LIST_SIZE as usize,
                    ..options.clone()
                };
                serve::serve(
                    listener,
                    None,
                    peer_options,
                    serve::handler(move |req, remote| {
                        peer_listener::handle_peer(peer_state.clone(), req, remote)
                    }),
                    state.shutdown.clone(),
                    state.tracker.clone(),
                )
                .await;
            }
        };
        let presence = async {
            if let Some(c) = state.cluster.clone() {
                cluster::run(state.clone(), c).await;
            }
        };
        let watcher = watcher::run(state.clone());
        tokio::join!(public, admin, proxy, peer, presence, watcher);
        state.draining.store(true, Ordering::Relaxed);
        state.tracker.close();
        let drained = tokio::time::timeout(
            state.config.drain_timeout + std::time::Duration::from_secs(1),
            state.tracker.wait(),
        )
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout reached with tasks still running");
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RelayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|reason| RelayError::Bind { addr, reason })
}

pub(crate) fn tls_acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, RelayError> {
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    let config = tether_wire::pem::server_config(&tls.cert_file, &tls.key_file, alpn)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn handle_public(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    if let Some(refused) = bad_target(&req) {
        return refused;
    }
    // A host match wins over every path, `/v1/…` included.
    let req = match route_domain::handle(&state, req, remote).await {
        std::ops::ControlFlow::Break(response) => return response,
        std::ops::ControlFlow::Continue(req) => req,
    };
    let path = req.uri().path();
    if path == protocol::CONNECT_PATH {
        return session::handle_connect(state, req, remote).await;
    }
    if path.starts_with(protocol::ROUTES_PREFIX) || path.starts_with(protocol::FORWARD_PREFIX) {
        let response = ingress::handle_route(state.clone(), req, remote).await;
        state.metrics.request(response.status());
        return response;
    }
    if path == protocol::RESOLVE_PATH {
        let response = ingress::handle_resolve(state.clone(), req, remote).await;
        state.metrics.request(response.status());
        return response;
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readiness(&state),
        _ => call::Call::new().fail(ErrorCode::NoSuchRoute, "no such endpoint"),
    }
}

async fn handle_admin(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    if req.uri().path().starts_with("/v1/admin/") {
        return admin::handle(state, req, remote).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readiness(&state),
        (&Method::GET, "/metrics") => {
            let sessions = state.registry.sessions();
            let body = state.metrics.render(metrics::Snapshot {
                sessions: &sessions,
                auth: state.limiter.counts(),
                callers_limited: state.callers.as_ref().map_or(0, |c| c.limited()),
                remote: state.cluster.as_ref().map(|c| c.known()),
            });
            let mut response = plain(StatusCode::OK, &body);
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => Problem::new(ErrorCode::NoSuchRoute, "no such endpoint").into_response(),
    }
}

/// The 400 answer for a request target with bytes RFC 3986 does not
/// allow raw (non-ASCII among them), given before anything reads the
/// target: see [`tether_wire::target`].
pub(crate) fn bad_target<B>(req: &Request<B>) -> Option<Response<BoxBody>> {
    let target = req.uri().path_and_query()?;
    let e = tether_wire::target::check_path_and_query(target.as_str()).err()?;
    Some(call::Call::new().fail(ErrorCode::BadRequest, &e.to_string()))
}

fn readiness(state: &State) -> Response<BoxBody> {
    if state.draining.load(Ordering::Relaxed) || state.shutdown.is_cancelled() {
        plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        plain(StatusCode::OK, "ready\n")
    }
}

fn plain(status: StatusCode, body: &str) -> Response<BoxBody> {
    let mut response = Response::new(full_body(body.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
