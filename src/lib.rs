//! tether-agent: serves a cloud portal's requests to private services over
//! outbound WebSockets.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated with file:line errors.
//! - [`policy`]: path normalisation and the routes' allow rules.
//! - [`backoff`]: reconnect delays with full jitter.
//! - [`reconnect`]: when a connection slot dials, waits, serves, replaces
//!   its session or stops: a sans-IO state machine, unit-tested.
//! - [`secret`]: a string type that never prints.
//! - [`secrets`]: secret stores (Vault, AWS, env, file), cache, placeholders.
//! - [`upstream`]: pooled HTTP(S) clients to internal services; their TLS
//!   (and the relay's) from tether-wire's PEM loader.
//! - [`dispatch`]: what happens to each request the relay sends: control
//!   requests, routes, forward mode, CONNECT, the upstream call.
//! - `inject`: caller placeholders and route headers, with their secrets.
//! - [`identity`]: end-user tokens verified against the issuer's keys.
//! - [`rego`]: route policies as code (Rego, evaluated with regorus).
//! - [`env`](mod@env): the process environment behind a trait.
//! - [`hygiene`]: what the agent strips or refuses in heads and trailers.
//! - [`body`]: the body adapter that counts bytes and filters trailers.
//! - [`audit`]: one JSON line per request the cloud sent; no request
//!   served while its line cannot be written.
//! - [`metrics`]: the Prometheus metrics, labelled from the configuration.
//! - [`rotation`]: tokens pushed by the relay, and the fallback to the
//!   previous token.
//! - [`forward`]: forward mode's lists and SSRF guard.
//! - [`tunnel`]: the driver of [`reconnect`]: dialling the relay and
//!   serving HTTP/2 over the WebSocket.
//! - [`egress`]: the agent's own way out to the relay: `HTTPS_PROXY`,
//!   `NO_PROXY`, `[relay] proxy` and its CONNECT.
//! - [`cidr`]: IP networks, for `NO_PROXY` and forward mode's lists.
//! - `admin`: `/healthz`, `/readyz`, `/metrics`.
//!
//! [`Agent::start`] validates and binds; [`Agent::run`] serves until the
//! shutdown token is cancelled, then drains.

mod admin;
pub mod audit;
pub mod backoff;
pub mod body;
pub mod cidr;
pub mod config;
pub mod dispatch;
pub mod egress;
pub mod env;
pub mod forward;
pub mod hygiene;
pub mod identity;
mod inject;
pub mod metrics;
pub mod policy;
pub mod reconnect;
pub mod rego;
pub mod rotation;
pub mod secret;
pub mod secrets;
pub mod tunnel;
pub mod upstream;
pub mod ws_client;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::dispatch::Dispatcher;
use crate::tunnel::Sessions;
use crate::upstream::TlsConfigError;

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A CA file could not be used.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// A route's policy or `[identity]` could not be set up.
    #[error(transparent)]
    Dispatch(#[from] dispatch::BuildError),
    /// The audit file could not be opened.
    #[error("audit file {path}: {reason}")]
    Audit {
        /// The file.
        path: std::path::PathBuf,
        /// Why (in the message, so not also the error's `source()`).
        reason: std::io::Error,
    },
    /// A secret store could not be set up.
    #[error("secrets: {0}")]
    Secrets(#[from] secrets::FetchError),
    /// The admin listener could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why (in the message, so not also the error's `source()`).
        reason: std::io::Error,
    },
}

/// An agent ready to run.
pub struct Agent {
    config: Arc<AgentConfig>,
    dispatcher: tokio::sync::watch::Sender<Arc<Dispatcher>>,
    /// The file SIGHUP re-reads, if the configuration came from one.
    config_path: Option<std::path::PathBuf>,
    relay_tls: Arc<rustls::ClientConfig>,
    admin: Option<TcpListener>,
    sessions: Arc<Sessions>,
}

impl Agent {
    /// Builds clients and trust stores and binds the admin listener.
    pub async fn start(mut config: AgentConfig) -> Result<Self, AgentError> {
        // vaultrs' HTTP client takes rustls' process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let secrets = Arc::new(
            secrets::Secrets::new(
                &config.secrets,
                config.vault.as_ref(),
                config.aws.as_ref(),
                Arc::new(config::ProcessEnv),
            )
            .await?,
        );
        let audit = Arc::new(match &config.audit_file {
            Some(path) => {
                audit::AuditLog::to_file(path, config.audit_required).map_err(|reason| {
                    AgentError::Audit {
                        path: path.clone(),
                        reason,
                    }
                })?
            }
            None => audit::AuditLog::to_log(),
        });
        let admin = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|reason| AgentError::Bind { addr, reason })?,
            ),
            None => None,
        };
        // Forward mode never reaches the admin listener: the bound address.
        if let Some(addr) = admin.as_ref().and_then(|l| l.local_addr().ok()) {
            config.forward.admin = Some(addr);
        }
        let dispatcher = Arc::new(Dispatcher::new(&config, secrets, audit)?);
        let relay_tls = relay_tls_config(&config)?;
        if config.relay.url.scheme_str() == Some("ws") {
            tracing::warn!(url = %config.relay.url,
                "relay URL is ws:// — traffic to the relay is not encrypted");
        }
        Ok(Self {
            config: Arc::new(config),
            dispatcher: tokio::sync::watch::Sender::new(dispatcher),
            config_path: None,
            relay_tls: Arc::new(relay_tls),
            admin,
            sessions: Arc::new(Sessions::default()),
        })
    }

    /// Makes SIGHUP re-read `path`: routes, secrets and their stores are
    /// replaced without dropping a request (see `reload`).
    pub fn reload_from(mut self, path: std::path::PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Address of the admin listener, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs every connection slot and the admin listener until `shutdown`;
    /// then sends GOAWAY on each session and waits for requests in flight
    /// (bounded by `drain_timeout`).
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        // Kept alive for the whole run: slots wait on it.
        let (token_changes, token_rx) = tokio::sync::watch::channel(0u64);
        tracker.spawn(tunnel::watch_token(
            self.config.relay.token.clone(),
            token_changes.clone(),
            shutdown.clone(),
        ));
        let replicas = Arc::new(tunnel::Replicas::default());
        for number in 0..self.config.relay.connections {
            let slot = tunnel::Slot {
                number,
                config: self.config.clone(),
                tls: self.relay_tls.clone(),
                dispatcher: self.dispatcher.subscribe(),
                sessions: self.sessions.clone(),
                token_changes: token_rx.clone(),
                tracker: tracker.clone(),
                replicas: replicas.clone(),
            };
            tracker.spawn(slot.run(shutdown.clone()));
        }
        if let Some(listener) = self.admin {
            tracker.spawn(admin::serve(
                listener,
                self.sessions.clone(),
                self.dispatcher.subscribe(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        tracker.spawn(watch_forward_names(
            self.dispatcher.subscribe(),
            shutdown.clone(),
        ));
        let sessions = self.sessions.clone();
        tracker.spawn(tether_wire::notify::run(
            tether_wire::notify::Notifier::from_env(),
            move || {
                let up = sessions.up();
                (up > 0).then(|| format!("{up} relay session(s) up"))
            },
            shutdown.clone(),
        ));
        tracker.spawn(on_sighup(
            Reload {
                path: self.config_path.clone(),
                running: self.config.clone(),
                dispatcher: self.dispatcher.clone(),
                renew: token_changes,
            },
            shutdown.clone(),
        ));
        tracker.close();
        tracker.wait().await;
        // No answer without its audit line: the lines of the last
        // requests are written before the process exits.
        let audit = self.dispatcher.borrow().audit_log().clone();
        audit.flush(AUDIT_FLUSH_TIMEOUT).await;
    }
}

/// At shutdown, how long the audit writer may take to write what is
/// queued.
const AUDIT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// TLS towards the relay: system roots plus `[relay] ca_file`, the client
/// certificate if configured, HTTP/1.1 (the WebSocket upgrade).
pub fn relay_tls_config(config: &AgentConfig) -> Result<rustls::ClientConfig, TlsConfigError> {
    let client_cert = config
        .relay
        .client_cert
        .as_ref()
        .map(|(cert, key)| (cert.as_path(), key.as_path()));
    let mut tls = upstream::tls_client_config(config.relay.ca_file.as_deref(), client_cert)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Keeps forward mode's watched names (exact `deny` names, the egress
/// proxy and Vault by name) resolved: every [`forward::NAME_REFRESH`], and
/// at once for the new guard a reload brings.
async fn watch_forward_names(
    mut dispatchers: tokio::sync::watch::Receiver<Arc<Dispatcher>>,
    shutdown: CancellationToken,
) {
    loop {
        let guard = dispatchers.borrow_and_update().forward_guard();
        if let Some(guard) = guard {
            tokio::select! {
                () = guard.refresh_names() => {}
                () = shutdown.cancelled() => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(forward::NAME_REFRESH) => {}
            changed = dispatchers.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// What a SIGHUP needs to reload the configuration.
struct Reload {
    path: Option<std::path::PathBuf>,
    /// The configuration the process started with: the relay connection,
    /// identity and listeners it fixes cannot change without a restart.
    running: Arc<AgentConfig>,
    dispatcher: tokio::sync::watch::Sender<Arc<Dispatcher>>,
    /// Bumped to have every slot open a new session (the relay then learns
    /// the new routes) and drain the old one.
    renew: tokio::sync::watch::Sender<u64>,
}

/// SIGHUP (`systemctl reload`): reopens the audit file (so logrotate can
/// move it away) and, when the configuration came from a file, reloads it.
async fn on_sighup(reload: Reload, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            received = hup.recv() => match received {
                Some(()) => {
                    let current = reload.dispatcher.borrow().clone();
                    current.audit_log().reopen();
                    if let Some(path) = &reload.path {
                        reload_config(&reload, path, current.audit_log().clone()).await;
                    }
                }
                None => return,
            },
            () = shutdown.cancelled() => return,
        }
    }
}

/// Re-reads `path`: routes, secret definitions and secret stores are
/// replaced at once for new requests (requests in flight finish with the
/// old ones); sessions are renewed so the relay learns the routes. A file
/// that fails validation changes nothing.
async fn reload_config(reload: &Reload, path: &std::path::Path, audit: Arc<audit::AuditLog>) {
    let mut new = match AgentConfig::load(path, &config::ProcessEnv) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(error = %e.one_line(), "configuration reload refused; the running configuration stays");
            return;
        }
    };
    let running = &reload.running;
    let mut fixed = Vec::new();
    if new.relay.url != running.relay.url || new.relay.connections != running.relay.connections {
        fixed.push("[relay]");
    }
    if new.identity.name != running.identity.name || new.identity.tags != running.identity.tags {
        fixed.push("[agent]");
    }
    if new.admin_listen != running.admin_listen {
        fixed.push("[admin]");
    }
    if new.audit_file != running.audit_file || new.audit_required != running.audit_required {
        fixed.push("[audit]");
    }
    if !fixed.is_empty() {
        tracing::warn!(sections = %fixed.join(", "),
            "these sections changed and take effect only after a restart");
    }
    new.relay = running.relay.clone();
    new.identity = running.identity.clone();
    new.forward.admin = running.forward.admin;
    let secrets = match secrets::Secrets::new(
        &new.secrets,
        new.vault.as_ref(),
        new.aws.as_ref(),
        Arc::new(config::ProcessEnv),
    )
    .await
    {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused (secret stores); the running configuration stays");
            return;
        }
    };
    let dispatcher = match Dispatcher::new(&new, secrets, audit) {
        Ok(mut d) => {
            d.keep_upgrade_slots(&reload.dispatcher.borrow());
            Arc::new(d.keeping_identity_of(&reload.dispatcher.borrow()))
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
            return;
        }
    };
    reload.dispatcher.send_replace(dispatcher);
    reload.renew.send_modify(|generation| *generation += 1);
    tracing::info!(file = %path.display(), routes = new.routes.len(), secrets = new.secrets.len(),
        "configuration reloaded; sessions renewing");
}

/// An error and its sources, joined by `: `, each text once
/// ([`tether_wire::error_chain`]).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    tether_wire::error_chain(e)
}
