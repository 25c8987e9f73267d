//! The agent's configuration: TOML as written (`Raw*`, with spans) and the
//! validated form the rest of the agent uses.
//!
//! Every problem names the file, line and column of the offending key,
//! and a file's independent problems are all reported at once: each
//! section's validator records what it finds in a shared `Problems` and
//! goes on (a TOML syntax or type error stops at the first, as parsing
//! must).
//!
//! # Layout
//! - `relay`: `[relay]` (URL, token, proxy, timers).
//! - `agent`: `[agent]` and `[admin]`.
//! - `routes`: `[routes.NAME]` and the headers routes and forward targets set.
//! - `forward`: `[forward]`.
//! - `audit`: `[audit]`.
//! - `limits`: `[limits]`, and the `upgrades` lists of routes and `[forward]`.
//! - `[secrets.NAME]`, `[vault]`, `[aws]`: [`crate::secrets::config`].

mod agent;
mod audit;
mod forward;
mod limits;
mod relay;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;
use toml::Spanned;

use crate::forward::ForwardPolicy;
use crate::policy::RoutePolicy;
use crate::secrets::config::{
    AwsSettings, RawAws, RawSecret, RawVault, SecretSpec, VaultSettings, validate_aws,
    validate_secret, validate_vault,
};
use crate::secrets::placeholder::{Origin, Template};

pub use forward::ForwardHeaders;
pub use limits::{DEFAULT_MAX_UPGRADED, DEFAULT_UPGRADE_IDLE_TIMEOUT, Limits};

pub use crate::env::{Env, ProcessEnv};

// ---- the file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    relay: Spanned<relay::RawRelay>,
    agent: Spanned<agent::RawAgent>,
    #[serde(default)]
    admin: Option<agent::RawAdmin>,
    #[serde(default)]
    routes: BTreeMap<Spanned<String>, Spanned<routes::RawRoute>>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, Spanned<RawSecret>>,
    vault: Option<Spanned<RawVault>>,
    aws: Option<Spanned<RawAws>>,
    audit: Option<Spanned<audit::RawAudit>>,
    forward: Option<Spanned<forward::RawForward>>,
    identity: Option<Spanned<crate::identity::config::RawIdentity>>,
    limits: Option<Spanned<limits::RawLimits>>,
}

// ---- the validated form --------------------------------------------------
/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The relay connection.
    pub relay: RelaySettings,
    /// Who this agent is.
    pub identity: Identity,
    /// Health, readiness and metrics listener.
    pub admin_listen: Option<SocketAddr>,
    /// Routes by name.
    pub routes: BTreeMap<String, Route>,
    /// On SIGTERM, how long requests in flight may take to finish.
    pub drain_timeout: Duration,
    /// `[secrets.NAME]`, by name order.
    pub secrets: Vec<SecretSpec>,
    /// `[vault]`.
    pub vault: Option<VaultSettings>,
    /// `[aws]`.
    pub aws: Option<AwsSettings>,
    /// `[audit] file`: JSON lines appended there; the log stream otherwise.
    pub audit_file: Option<PathBuf>,
    /// `[audit] required` (default true with a file): no request is served
    /// while its audit line cannot be written (503 `audit_unavailable`).
    pub audit_required: bool,
    /// `[forward]`: targets `/v1/forward/…` may reach (off when `allow` is
    /// empty).
    pub forward: ForwardPolicy,
    /// `[forward.headers."scheme://host[:port]"]`: headers set on requests
    /// to that target (may use any secret).
    pub forward_headers: ForwardHeaders,
    /// `[identity]`: end-user tokens and whose keys verify them.
    pub user_identity: Option<crate::identity::config::IdentitySettings>,
    /// `[forward] upgrades`: protocols forward-mode callers may upgrade to.
    pub forward_upgrades: Vec<tether_wire::upgrade::UpgradeToken>,
    /// `[limits]`.
    pub limits: Limits,
}

/// `[relay]`.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `ws://` or `wss://` URL of the relay's connect endpoint.
    pub url: Uri,
    /// Where the token comes from; read at every connect, so an updated
    /// file is used on the next session.
    pub token: TokenSource,
    /// Extra trust roots for the relay's certificate.
    pub ca_file: Option<PathBuf>,
    /// Parallel WebSocket sessions.
    pub connections: u32,
    /// Write a token pushed by the relay (rotation through its admin API)
    /// to `token_file`. Off by default.
    pub accept_rotation: bool,
    /// HTTP/2 PING interval on each session (default 10 s).
    pub ping_interval: Duration,
    /// A session whose PING goes unanswered this long is dropped and
    /// redialled (default 20 s).
    pub ping_timeout: Duration,
    /// Ceiling of the reconnect delay (default 30 s).
    pub backoff_max: Duration,
    /// The HTTP CONNECT proxy the relay is reached through, if any.
    pub proxy: Option<crate::egress::Proxy>,
    /// Client certificate and key (PEM) presented to the relay (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Where the agent token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// Written in the config (or `TETHER_TOKEN`).
    Inline(crate::secret::SecretString),
    /// A file whose contents (trimmed) are the token.
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline(***)"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// `[agent]`.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Agent name; replicas of one deployment share it.
    pub name: String,
    /// Tags callers select on.
    pub tags: Vec<String>,
    /// Instance, telling replicas apart (hostname by default).
    pub instance: String,
}

/// `[routes.NAME]`.
#[derive(Debug, Clone)]
pub struct Route {
    /// Route name.
    pub name: String,
    /// Scheme and authority of the upstream, e.g. `https://jenkins:8443`.
    pub origin: String,
    /// The same, canonical, for matching secrets' `callers.targets`.
    pub target: Origin,
    /// Path prefix of the upstream URL, without trailing `/` (may be empty).
    pub base_path: String,
    /// Methods and paths allowed.
    pub policy: RoutePolicy,
    /// Headers the agent sets on every request of this route, after the
    /// caller's hop-by-hop headers are removed; may use any secret.
    pub headers: Vec<RouteHeader>,
    /// Extra trust roots for this upstream.
    pub ca_file: Option<PathBuf>,
    /// Time allowed for the upstream's response head.
    pub timeout: Duration,
    /// If set, only these caller API key ids may use the route (the relay
    /// names the key in a header callers cannot set).
    pub keys: Option<Vec<String>>,
    /// Whether callers' method-override headers (`X-HTTP-Method-Override`,
    /// `X-Original-URL`, …) reach the upstream; removed by default, since
    /// the route's rules checked the request line, not what they say.
    pub allow_override_headers: bool,
    /// Speak HTTP/2 to the upstream (ALPN `h2` over TLS, prior knowledge
    /// over `http`): gRPC servers speak nothing else, and a plain-`http`
    /// upstream cannot negotiate it.
    pub upstream_http2: bool,
    /// Which end users may use the route (`users`, `groups`, `identity`,
    /// `forward_identity`, `policy`).
    pub access: crate::identity::config::RouteAccess,
    /// Protocols callers may upgrade to on this route (`websocket`,
    /// `SPDY/3.1`); none by default: an upgrade is 403 `denied` and the
    /// upstream never sees it.
    pub upgrades: Vec<tether_wire::upgrade::UpgradeToken>,
}

impl Route {
    /// The HTTP version this route's upstream is spoken to with.
    pub fn protocol(&self) -> crate::upstream::Protocol {
        if self.upstream_http2 {
            crate::upstream::Protocol::Http2
        } else {
            crate::upstream::Protocol::Negotiated
        }
    }
}

/// A header a route sets.
#[derive(Debug, Clone)]
pub struct RouteHeader {
    /// Header name.
    pub name: HeaderName,
    /// The value as written, with placeholders.
    pub template: Template,
    /// The value ready to send when it has no placeholder.
    pub literal: Option<HeaderValue>,
}

/// Default time an upstream has to answer.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(60);

pub use tether_wire::config_location::ConfigError;

pub use tether_wire::config_location::Problem;

/// The problems found so far in one file. Each section's validator records
/// what it finds here and carries on with what it can, so one run reports
/// them all.
pub(crate) struct Problems<'a> {
    source: &'a str,
    found: Vec<Problem>,
}

impl<'a> Problems<'a> {
    fn new(source: &'a str) -> Self {
        Self {
            source,
            found: Vec::new(),
        }
    }

    /// Records `message` at the start of `span`.
    pub(crate) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.found
            .push(Problem::at(self.source, span.start, message));
    }

    /// The value, or `None` with the error recorded at `span`.
    pub(crate) fn take<T>(&mut self, span: Range<usize>, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.at(span, m)).ok()
    }

    fn into_error(mut self, path: &Path) -> Option<ConfigError> {
        if self.found.is_empty() {
            return None;
        }
        self.found.sort_by_key(|p| (p.line, p.column));
        self.found.dedup();
        Some(ConfigError::Invalid {
            path: path.to_owned(),
            problems: self.found,
        })
    }
}

impl AgentConfig {
    /// Reads and validates `path`, with `env` for `TETHER_*` overrides.
    pub fn load(path: &Path, env: &impl Env) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        Self::parse(path, &source, env)
    }

    /// Parses and validates `source`, naming `path` in errors: every
    /// independent problem of the file, or the first syntax error.
    pub fn parse(path: &Path, source: &str, env: &impl Env) -> Result<Self, ConfigError> {
        let mut problems = Problems::new(source);
        let raw: RawConfig = match toml::from_str(source) {
            Ok(raw) => raw,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    problems: vec![Problem::at(source, offset, e.message())],
                });
            }
        };
        let mut config = Self::validate(raw, env, &mut problems);
        // `policy = "file.rego"` is relative to the configuration file.
        if let (Some(config), Some(dir)) = (&mut config, path.parent()) {
            for route in config.routes.values_mut() {
                if let Some(policy) = &mut route.access.policy
                    && policy.is_relative()
                {
                    *policy = dir.join(&*policy);
                }
            }
        }
        match (config, problems.into_error(path)) {
            (Some(config), None) => Ok(config),
            (_, Some(e)) => Err(e),
            // A section gives no value only after recording why.
            (None, None) => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems: vec![Problem {
                    line: 1,
                    column: 1,
                    message: "invalid configuration".into(),
                }],
            }),
        }
    }

    /// Every section validated, each recording its problems; `None` if
    /// any had one.
    fn validate(raw: RawConfig, env: &impl Env, problems: &mut Problems<'_>) -> Option<Self> {
        let relay = relay::validate(raw.relay, env, problems);
        let identity = agent::validate_identity(raw.agent, env, problems);
        let admin_listen = agent::validate_admin(raw.admin, problems);

        // Headers may name any secret declared, valid or not: a broken
        // `[secrets.x]` is one problem, not one more per header using it.
        let declared: BTreeSet<String> = raw.secrets.keys().map(|k| k.get_ref().clone()).collect();
        let mut secrets = Vec::new();
        for (name, secret) in raw.secrets {
            let span = secret.span();
            if let Some(spec) =
                problems.take(span, validate_secret(name.get_ref(), secret.into_inner()))
            {
                secrets.push(spec);
            }
        }
        let vault_declared = raw.vault.is_some();
        let vault = raw.vault.and_then(|v| {
            let span = v.span();
            problems.take(span, validate_vault(v.into_inner()))
        });
        if !vault_declared && let Some(s) = secrets.iter().find(|s| s.source.kind() == "vault") {
            problems.at(
                0..0,
                format!(
                    "secrets.{} uses vault but there is no [vault] section",
                    s.name
                ),
            );
        }
        let aws = raw.aws.and_then(|a| {
            let span = a.span();
            problems.take(span, validate_aws(a.into_inner()))
        });

        let user_identity = raw.identity.and_then(|i| {
            let span = i.span();
            crate::identity::config::validate(i.into_inner(), span, env)
                .map_err(|found| found.into_iter().for_each(|(s, m)| problems.at(s, m)))
                .ok()
        });
        let mut routes = BTreeMap::new();
        for (name, route) in raw.routes {
            let span = route.span();
            if let Some(route) = routes::validate(
                name.get_ref(),
                span,
                route.into_inner(),
                &declared,
                user_identity.as_ref(),
                problems,
            ) {
                routes.insert(name.into_inner(), route);
            }
        }
        let (mut forward, forward_headers, forward_upgrades) = match raw.forward {
            Some(f) => {
                let span = f.span();
                forward::validate(f.into_inner(), span, &declared, problems)
            }
            None => Default::default(),
        };
        let limits = limits::validate(raw.limits, problems);
        forward.admin = admin_listen;
        let (audit_file, audit_required) = audit::validate(raw.audit, problems);

        Some(Self {
            relay: relay?,
            identity: identity?,
            admin_listen,
            routes,
            drain_timeout: raw.drain_timeout.unwrap_or(Duration::from_secs(30)),
            secrets,
            vault,
            aws,
            audit_file,
            audit_required,
            forward,
            forward_headers,
            user_identity,
            forward_upgrades,
            limits,
        })
    }
}
