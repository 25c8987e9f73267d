//! What the agent does with each HTTP/2 stream the relay opens.
//!
//! - `control`: control requests (reserved authority), every one of them.
//! - `route`: a named route: route lookup → keys → policy (method,
//!   normalised path) → `access` (end-user identity, users/groups, the
//!   route's Rego policy).
//! - `forward`: forward mode: `[forward]` lists → SSRF guard.
//! - `connect`: CONNECT tunnels to forward targets.
//! - `upgrade`: upgrades (WebSocket, SPDY) the relay sends as extended
//!   CONNECT: a dedicated upstream connection, its 101 verified.
//! - `call`: the upstream call routes and forward mode share: header
//!   hygiene → injection (`inject`) → upstream call with a
//!   deadline on the response head → response streamed back.
//!
//! Every request the relay sends leaves one audit line (`Audit`).

use std::collections::HashMap;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tether_wire::protocol::{self, AgentInfo};
use tether_wire::{BoxBody, ErrorCode, Problem};

use crate::audit::{self, AuditLog, AuditRecord, PendingRecord};
use crate::config::{AgentConfig, Route};
use crate::secrets::Secrets;
use crate::upstream::{Clients, TlsConfigError, UpstreamClient};

mod access;
mod call;
mod connect;
mod control;
mod forward;
mod route;
mod upgrade;

pub use control::SessionSignals;

/// A route ready to serve.
struct LiveRoute {
    route: Route,
    client: UpstreamClient,
    /// `policy = "file.rego"`, compiled.
    policy: Option<Arc<crate::rego::Policy>>,
}

/// Why a dispatcher could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A CA file could not be used.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// A route's policy does not compile.
    #[error(transparent)]
    Policy(#[from] crate::rego::PolicyError),
    /// `[identity]`'s key fetch could not be set up.
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::fetch::FetchError),
}

/// Forward mode, when `[forward] allow` is set.
struct LiveForward {
    guard: Arc<crate::forward::Guard>,
    headers: crate::config::ForwardHeaders,
    client: crate::upstream::ForwardClient,
    pins: crate::upstream::Pins,
    /// `[forward] upgrades`.
    upgrades: Vec<tether_wire::upgrade::UpgradeToken>,
}

/// Serves the relay's requests; shared by all sessions.
pub struct Dispatcher {
    routes: HashMap<String, LiveRoute>,
    forward: Option<LiveForward>,
    info: AgentInfo,
    secrets: Arc<Secrets>,
    audit: Arc<AuditLog>,
    /// `token_file`, when `accept_rotation` lets the relay push new tokens.
    rotation_target: Option<std::path::PathBuf>,
    /// `[identity]`: verifies end-user tokens.
    identity: Option<Arc<crate::identity::keys::Verifier>>,
    /// Upgraded connections: their limit and dialers.
    upgrades: upgrade::Upgrades,
}

impl Dispatcher {
    /// Builds upstream clients for every route of `config`, compiles the
    /// routes' policies and starts fetching the identity issuer's keys.
    pub fn new(
        config: &AgentConfig,
        secrets: Arc<Secrets>,
        audit: Arc<AuditLog>,
    ) -> Result<Self, BuildError> {
        let mut clients = Clients::default();
        let mut routes = HashMap::new();
        for (name, route) in &config.routes {
            let client = clients.get(route.ca_file.as_deref(), route.protocol())?;
            let policy = match &route.access.policy {
                Some(path) => Some(Arc::new(crate::rego::Policy::load(path)?)),
                None => None,
            };
            routes.insert(
                name.clone(),
                LiveRoute {
                    route: route.clone(),
                    client,
                    policy,
                },
            );
        }
        let identity = match &config.user_identity {
            Some(settings) => {
                let verifier = Arc::new(crate::identity::keys::Verifier::new(settings)?);
                verifier.spawn_refresh();
                Some(verifier)
            }
            None => None,
        };
        let info = AgentInfo {
            name: config.identity.name.clone(),
            instance: config.identity.instance.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tags: config.identity.tags.clone(),
            routes: config.routes.keys().cloned().collect(),
            forward: config.forward.enabled(),
        };
        let forward = if config.forward.enabled() {
            let pins = crate::upstream::Pins::default();
            let mut policy = config.forward.clone();
            policy.services = crate::forward::own_services(
                config.relay.proxy.as_ref(),
                config.vault.as_ref().map(|v| v.address.as_str()),
                config.aws.as_ref().and_then(|a| a.endpoint.as_deref()),
            );
            Some(LiveForward {
                guard: Arc::new(crate::forward::Guard::new(policy)),
                headers: config.forward_headers.clone(),
                client: crate::upstream::forward_client(pins.clone())?,
                pins,
                upgrades: config.forward_upgrades.clone(),
            })
        } else {
            None
        };
        audit.metrics().add_routes(config.routes.keys());
        let rotation_target = match (&config.relay.token, config.relay.accept_rotation) {
            (crate::config::TokenSource::File(path), true) => Some(path.clone()),
            _ => None,
        };
        let upgrades = upgrade::Upgrades::new(config, forward.as_ref().map(|f| f.pins.clone()))?;
        Ok(Self {
            upgrades,
            routes,
            forward,
            info,
            secrets,
            audit,
            rotation_target,
            identity,
        })
    }

    /// The audit log.
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Forward mode's SSRF guard, when forward mode is on (its watched
    /// names are kept resolved by the agent).
    pub fn forward_guard(&self) -> Option<Arc<crate::forward::Guard>> {
        self.forward.as_ref().map(|f| f.guard.clone())
    }

    fn audit(&self, request_id: &str, caller: &str, method: &str) -> Audit {
        Audit {
            record: AuditRecord::begin(request_id, caller, method),
            log: self.audit.clone(),
            written: false,
            bytes: None,
        }
    }

    /// The secrets this dispatcher injects.
    pub fn secrets(&self) -> &Arc<Secrets> {
        &self.secrets
    }

    /// Handles one stream of a session; `session` learns what the
    /// session's control requests say.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        session: &SessionSignals,
    ) -> Response<BoxBody> {
        if let Err(refused) = self.audit.admit(&req).await {
            return refused.into_response();
        }
        // Every path but routes is boxed: this future is every request's
        // task, allocated and moved whole, and as large as its largest
        // branch (11.1 KiB before, 4.1 KiB now; issue 17).
        if req.method() == http::Method::CONNECT {
            if req.extensions().get::<hyper::ext::Protocol>().is_some() {
                return Box::pin(self.handle_upgrade(req)).await;
            }
            return Box::pin(self.handle_connect(req)).await;
        }
        match req.uri().authority().map(|a| a.as_str()) {
            Some(protocol::CONTROL_AUTHORITY) => Box::pin(self.handle_control(req, session)).await,
            Some(protocol::TUNNEL_AUTHORITY) => self.handle_relayed(req).await,
            Some(protocol::FORWARD_AUTHORITY) => Box::pin(self.handle_forward(req)).await,
            _ => Problem::new(ErrorCode::BadRequest, "unknown authority").into_response(),
        }
    }
}

/// The answer for a request the agent refuses or cannot serve: a problem
/// naming the request id (the cause stays in the agent's log and audit).
fn problem_for(request_id: &str) -> impl Fn(ErrorCode, String) -> Response<BoxBody> + '_ {
    move |code, detail| {
        Problem::new(code, detail)
            .with_request_id(request_id.to_owned())
            .into_response()
    }
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The audit record of one request, on its way to the audit log. It is
/// written exactly once: by [`Audit::log`], by the [`PendingRecord`] of
/// [`Audit::pending`] when the response body ends, or — when the relay
/// resets the stream (the caller went away) and the handler is dropped
/// while the upstream works — on drop, as `cancelled`: the upstream may
/// have acted, so that line must exist too.
struct Audit {
    record: AuditRecord,
    log: Arc<AuditLog>,
    /// Whether the record went to the log or into a pending record.
    written: bool,
    /// The request body's byte count, once it is flowing upstream.
    bytes: Option<Arc<audit::Bytes>>,
}

/// Status of a line for a request its caller abandoned before the answer
/// (nginx's 499: no status was sent).
const CANCELLED: u16 = 499;

impl Audit {
    /// Writes the record now, with `status` and `decision`.
    fn log(&mut self, status: StatusCode, decision: &str) {
        if self.written {
            return;
        }
        self.written = true;
        self.record.finish(status.as_u16(), decision);
        self.log.record(&self.record);
    }

    /// A record written when the response body ends (bytes, duration).
    fn pending(mut self, status: StatusCode, bytes: Arc<audit::Bytes>) -> PendingRecord {
        self.written = true;
        self.record.finish(status.as_u16(), "allowed");
        PendingRecord::new(self.record.clone(), bytes, self.log.clone())
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        if let Some(bytes) = &self.bytes {
            self.record.bytes_in = bytes.inbound.load(std::sync::atomic::Ordering::Relaxed);
        }
        self.record.finish(CANCELLED, "cancelled");
        self.log.record(&self.record);
    }
}
