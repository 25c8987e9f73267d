//! tether-agent: serves a cloud portal's requests to private services over
//! outbound WebSockets.
//!
//! # Layout
//! - [`config`]: the TOML configuration, validated with file:line errors.
//! - [`policy`]: path normalisation and the routes' allow rules.
//! - [`backoff`]: reconnect delays with full jitter.
//! - [`secret`]: a string type that never prints.
//! - [`secrets`]: secret stores (Vault, AWS, env, file), cache, placeholders.
//! - [`upstream`]: pooled HTTP(S) clients to internal services.
//! - [`dispatch`]: what happens to each request the relay sends.
//! - [`audit`]: one JSON line per request the cloud sent.
//! - [`tunnel`]: dialling the relay and serving HTTP/2 over the WebSocket.
//! - `admin`: `/healthz`, `/readyz`, `/metrics`.
//!
//! [`Agent::start`] validates and binds; [`Agent::run`] serves until the
//! shutdown token is cancelled, then drains.

mod admin;
pub mod audit;
pub mod backoff;
pub mod config;
pub mod dispatch;
pub mod egress;
pub mod metrics;
pub mod policy;
pub mod secret;
pub mod secrets;
pub mod tunnel;
pub mod upstream;

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
    /// The audit file could not be opened.
    #[error("audit file {path}: {source}")]
    Audit {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A secret store could not be set up.
    #[error("secrets: {0}")]
    Secrets(#[from] secrets::FetchError),
    /// The admin listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// An agent ready to run.
pub struct Agent {
    config: Arc<AgentConfig>,
    dispatcher: Arc<Dispatcher>,
    relay_tls: Arc<rustls::ClientConfig>,
    admin: Option<TcpListener>,
    sessions: Arc<Sessions>,
}

impl Agent {
    /// Builds clients and trust stores and binds the admin listener.
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
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
            Some(path) => audit::AuditLog::to_file(path).map_err(|source| AgentError::Audit {
                path: path.clone(),
                source,
            })?,
            None => audit::AuditLog::to_log(),
        });
        let dispatcher = Arc::new(Dispatcher::new(&config, secrets, audit)?);
        let relay_roots = upstream::root_store(config.relay.ca_file.as_deref())?;
        let mut relay_tls = match &config.relay.client_cert {
            Some((cert, key)) => upstream::tls_client_config_with_cert(relay_roots, cert, key)?,
            None => upstream::tls_client_config(relay_roots),
        };
        relay_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let admin = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Bind { addr, source })?,
            ),
            None => None,
        };
        if config.relay.url.scheme_str() == Some("ws") {
            tracing::warn!(url = %config.relay.url,
                "relay URL is ws:// — traffic to the relay is not encrypted");
        }
        Ok(Self {
            config: Arc::new(config),
            dispatcher,
            relay_tls: Arc::new(relay_tls),
            admin,
            sessions: Arc::new(Sessions::default()),
        })
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
            token_changes,
            shutdown.clone(),
        ));
        for number in 0..self.config.relay.connections {
            let slot = tunnel::Slot {
                number,
                config: self.config.clone(),
                tls: self.relay_tls.clone(),
                dispatcher: self.dispatcher.clone(),
                sessions: self.sessions.clone(),
                token_changes: token_rx.clone(),
                tracker: tracker.clone(),
            };
            tracker.spawn(slot.run(shutdown.clone()));
        }
        if let Some(listener) = self.admin {
            tracker.spawn(admin::serve(
                listener,
                self.sessions.clone(),
                self.dispatcher.secrets().clone(),
                self.dispatcher.audit_log().clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        let sessions = self.sessions.clone();
        tracker.spawn(tether_wire::notify::run(
            tether_wire::notify::Notifier::from_env(),
            move || {
                let up = sessions.up();
                (up > 0).then(|| format!("{up} relay session(s) up"))
            },
            shutdown.clone(),
        ));
        tracker.spawn(reopen_audit_on_sighup(
            self.dispatcher.audit_log().clone(),
            shutdown.clone(),
        ));
        tracker.close();
        tracker.wait().await;
    }
}

/// SIGHUP reopens the audit file, so logrotate can move it away.
async fn reopen_audit_on_sighup(log: Arc<audit::AuditLog>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            received = hup.recv() => match received {
                Some(()) => log.reopen(),
                None => return,
            },
            () = shutdown.cancelled() => return,
        }
    }
}

/// An error and its sources, joined by `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
