//! The agent's configuration: TOML as written (`Raw*`, with spans) and the
//! validated form the rest of the agent uses. Every error names the file
//! and the line of the offending key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;
use tether_wire::protocol::valid_route_name;
use toml::Spanned;

use crate::forward::{Entry, ForwardPolicy};
use crate::policy::{PathRule, RoutePolicy};
use crate::secrets::config::{
    AwsSettings, RawAws, RawSecret, RawVault, SecretSpec, VaultSettings, validate_aws,
    validate_secret, validate_vault,
};
use crate::secrets::placeholder::{Origin, Template};

/// Where the process environment is read, behind a trait so that tests
/// never touch the real environment.
pub trait Env {
    /// The variable `name`, if set and UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

// ---- the file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    relay: Spanned<RawRelay>,
    agent: Spanned<RawAgent>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    routes: BTreeMap<Spanned<String>, Spanned<RawRoute>>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, Spanned<RawSecret>>,
    vault: Option<Spanned<RawVault>>,
    aws: Option<Spanned<RawAws>>,
    audit: Option<Spanned<RawAudit>>,
    forward: Option<Spanned<RawForward>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    connect_ports: Option<Vec<Spanned<i64>>>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    file: Option<PathBuf>,
    required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    url: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
    connections: Option<Spanned<u32>>,
    #[serde(default)]
    accept_rotation: bool,
    ping_interval: Option<Spanned<String>>,
    ping_timeout: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    proxy: Option<Spanned<String>>,
    proxy_username: Option<Spanned<String>>,
    proxy_password_file: Option<Spanned<PathBuf>>,
    client_cert_file: Option<Spanned<PathBuf>>,
    client_key_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Spanned<String>,
    #[serde(default)]
    tags: Vec<Spanned<String>>,
    instance: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    url: Spanned<String>,
    methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    keys: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allow_override_headers: bool,
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

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A problem at a place in the file.
    #[error("{path}:{line}:{column}: {message}")]
    At {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

impl AgentConfig {
    /// Reads and validates `path`, with `env` for `TETHER_*` overrides.
    pub fn load(path: &Path, env: &impl Env) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &source, env)
    }

    /// Parses and validates `source`, naming `path` in errors.
    pub fn parse(path: &Path, source: &str, env: &impl Env) -> Result<Self, ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = tether_wire::config_location::line_col(source, span.start);
            ConfigError::At {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig = toml::from_str(source)
            .map_err(|e| at(e.span().unwrap_or(0..0), e.message().to_owned()))?;

        let relay_span = raw.relay.span();
        let relay = raw.relay.into_inner();
        let url = match (env.var("TETHER_RELAY_URL"), &relay.url) {
            (Some(url), _) => parse_relay_url(&url)
                .map_err(|m| at(relay_span.clone(), format!("TETHER_RELAY_URL: {m}")))?,
            (None, Some(url)) => parse_relay_url(url.get_ref())
                .map_err(|m| at(url.span(), format!("relay.url: {m}")))?,
            (None, None) => {
                return Err(at(relay_span, "[relay] url is required".to_owned()));
            }
        };
        let token = match (env.var("TETHER_TOKEN"), &relay.token, &relay.token_file) {
            (_, Some(t), Some(_)) => {
                return Err(at(
                    t.span(),
                    "set relay.token or relay.token_file, not both".into(),
                ));
            }
            (Some(t), _, _) => TokenSource::Inline(t.trim().to_owned().into()),
            (None, Some(t), None) => TokenSource::Inline(t.get_ref().trim().to_owned().into()),
            (None, None, Some(f)) => TokenSource::File(f.get_ref().clone()),
            (None, None, None) => match env.var("CREDENTIALS_DIRECTORY") {
                // systemd's LoadCredential=token:...
                Some(dir) => TokenSource::File(Path::new(&dir).join("token")),
                None => {
                    return Err(at(
                        relay_span,
                        "[relay] needs token_file, token, or the TETHER_TOKEN environment variable"
                            .into(),
                    ));
                }
            },
        };
        let connections = match &relay.connections {
            Some(c) if !(1..=16).contains(c.get_ref()) => {
                return Err(at(c.span(), "relay.connections must be 1 to 16".into()));
            }
            Some(c) => *c.get_ref(),
            None => 2,
        };

        let duration = |field: &Option<Spanned<String>>, key: &str, default: Duration| {
            let Some(text) = field else {
                return Ok(default);
            };
            match humantime::parse_duration(text.get_ref()) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(at(text.span(), format!("relay.{key} must be above zero"))),
                Err(e) => Err(at(
                    text.span(),
                    format!("relay.{key}: {e} (write e.g. \"10s\")"),
                )),
            }
        };
        let ping_interval = duration(&relay.ping_interval, "ping_interval", PING_INTERVAL)?;
        let ping_timeout = duration(&relay.ping_timeout, "ping_timeout", PING_TIMEOUT)?;
        let backoff_max = duration(&relay.backoff_max, "backoff_max", BACKOFF_MAX)?;
        let proxy = relay_proxy(&relay, &url, env)
            .map_err(|(span, m)| at(span.unwrap_or(relay_span.clone()), m))?;
        let client_cert = match (&relay.client_cert_file, &relay.client_key_file) {
            (Some(cert), Some(key)) => Some((cert.get_ref().clone(), key.get_ref().clone())),
            (None, None) => None,
            (Some(s), None) => {
                return Err(at(
                    s.span(),
                    "relay.client_cert_file needs relay.client_key_file".into(),
                ));
            }
            (None, Some(s)) => {
                return Err(at(
                    s.span(),
                    "relay.client_key_file needs relay.client_cert_file".into(),
                ));
            }
        };

        let agent = raw.agent.into_inner();
        if !valid_route_name(agent.name.get_ref()) {
            return Err(at(
                agent.name.span(),
                "agent.name: use 1-64 of A-Z a-z 0-9 _ -".into(),
            ));
        }
        let mut tags = Vec::new();
        for tag in &agent.tags {
            if !valid_route_name(tag.get_ref()) {
                return Err(at(
                    tag.span(),
                    "agent.tags: use 1-64 of A-Z a-z 0-9 _ -".into(),
                ));
            }
            tags.push(tag.get_ref().clone());
        }
        let instance = match &agent.instance {
            Some(i) if i.get_ref().is_empty() || i.get_ref().contains(',') => {
                return Err(at(i.span(), "agent.instance may not be empty".into()));
            }
            Some(i) => i.get_ref().clone(),
            None => hostname(env).unwrap_or_else(|| agent.name.get_ref().clone()),
        };

        let admin_listen = match raw.admin.and_then(|a| a.listen) {
            Some(listen) => Some(
                listen
                    .get_ref()
                    .parse::<SocketAddr>()
                    .map_err(|e| at(listen.span(), format!("admin.listen: {e}")))?,
            ),
            None => None,
        };

        let mut secrets = Vec::new();
        for (name, secret) in raw.secrets {
            let span = secret.span();
            secrets.push(
                validate_secret(name.get_ref(), secret.into_inner()).map_err(|m| at(span, m))?,
            );
        }
        let vault = match raw.vault {
            Some(v) => {
                let span = v.span();
                Some(validate_vault(v.into_inner()).map_err(|m| at(span, m))?)
            }
            None => None,
        };
        if vault.is_none()
            && let Some(s) = secrets.iter().find(|s| s.source.kind() == "vault")
        {
            return Err(at(
                0..0,
                format!(
                    "secrets.{} uses vault but there is no [vault] section",
                    s.name
                ),
            ));
        }
        let aws = match raw.aws {
            Some(a) => {
                let span = a.span();
                Some(validate_aws(a.into_inner()).map_err(|m| at(span, m))?)
            }
            None => None,
        };

        let mut routes = BTreeMap::new();
        for (name, route) in raw.routes {
            let route_span = route.span();
            let route = validate_route(name.get_ref(), route.into_inner(), &secrets)
                .map_err(|(span, m)| at(span.unwrap_or(route_span), m))?;
            routes.insert(name.into_inner(), route);
        }
        let (mut forward, forward_headers) = match raw.forward {
            Some(f) => {
                let span = f.span();
                validate_forward(f.into_inner(), &secrets)
                    .map_err(|(s, m)| at(s.unwrap_or(span), m))?
            }
            None => Default::default(),
        };
        forward.admin = admin_listen;

        let (audit_file, audit_required) = match raw.audit {
            Some(a) => {
                let span = a.span();
                let a = a.into_inner();
                match (a.file, a.required) {
                    (None, Some(true)) => {
                        return Err(at(
                            span,
                            "[audit] required = true needs [audit] file (the log stream cannot refuse)"
                                .into(),
                        ));
                    }
                    (file, required) => {
                        let required = file.is_some() && required.unwrap_or(true);
                        (file, required)
                    }
                }
            }
            None => (None, false),
        };

        Ok(Self {
            relay: RelaySettings {
                url,
                token,
                ca_file: relay.ca_file.map(Spanned::into_inner),
                connections,
                accept_rotation: relay.accept_rotation,
                ping_interval,
                ping_timeout,
                backoff_max,
                proxy,
                client_cert,
            },
            identity: Identity {
                name: agent.name.into_inner(),
                tags,
                instance,
            },
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
        })
    }
}

/// Defaults of `[relay]`: a dead or frozen relay is noticed within
/// interval + timeout (30 s); reconnect delays stop growing at 30 s.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Headers the agent's own config sets (route `headers`, forward
/// `headers`): names valid, placeholders naming configured secrets.
fn validate_headers(
    key: &str,
    raw: &BTreeMap<Spanned<String>, Spanned<String>>,
    secrets: &[SecretSpec],
) -> Result<Vec<RouteHeader>, RouteError> {
    let mut headers = Vec::new();
    for (name, value) in raw {
        let here = |m: String| (Some(value.span()), format!("{key}.{}: {m}", name.get_ref()));
        let header_name = HeaderName::from_bytes(name.get_ref().as_bytes()).map_err(|_| {
            (
                Some(name.span()),
                format!("{key}: {:?} is not a header name", name.get_ref()),
            )
        })?;
        let template = Template::parse(value.get_ref()).map_err(|e| here(e.to_string()))?;
        for secret in template.secrets() {
            if !secrets.iter().any(|s| s.name == secret) {
                return Err(here(format!(
                    "unknown secret {secret:?} (no [secrets.{secret}])"
                )));
            }
        }
        let literal = if template.is_literal() {
            Some(
                HeaderValue::from_str(value.get_ref())
                    .map_err(|_| here("invalid header value".into()))?,
            )
        } else {
            None
        };
        headers.push(RouteHeader {
            name: header_name,
            template,
            literal,
        });
    }
    Ok(headers)
}

/// `[forward.headers."scheme://host[:port]"]`: headers per target origin.
pub type ForwardHeaders = Vec<(Origin, Vec<RouteHeader>)>;

/// `[forward]` validated: the policy, and the headers per target origin.
fn validate_forward(
    raw: RawForward,
    secrets: &[SecretSpec],
) -> Result<(ForwardPolicy, ForwardHeaders), RouteError> {
    let entries = |list: &[Spanned<String>], key: &str| {
        list.iter()
            .map(|e| {
                Entry::parse(e.get_ref())
                    .map_err(|m| (Some(e.span()), format!("forward.{key}: {m}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let allow = entries(&raw.allow, "allow")?;
    let deny = entries(&raw.deny, "deny")?;
    let connect_ports = match raw.connect_ports {
        Some(ports) => ports
            .iter()
            .map(|p| match *p.get_ref() {
                1..=65535 => Ok(*p.get_ref() as u16),
                _ => Err((
                    Some(p.span()),
                    "forward.connect_ports: 1 to 65535".to_owned(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![443],
    };
    let mut headers = Vec::new();
    for (origin, table) in &raw.headers {
        let parsed = Origin::parse(origin.get_ref()).map_err(|m| {
            (
                Some(origin.span()),
                format!("forward.headers.{:?}: {m}", origin.get_ref()),
            )
        })?;
        let list = validate_headers(
            &format!("forward.headers.{:?}", origin.get_ref()),
            table,
            secrets,
        )?;
        headers.push((parsed, list));
    }
    if allow.is_empty() && !headers.is_empty() {
        return Err((
            None,
            "forward.headers without forward.allow: forward mode is off".into(),
        ));
    }
    Ok((
        ForwardPolicy {
            allow,
            deny,
            connect_ports,
            admin: None,
            services: Vec::new(),
        },
        headers,
    ))
}

type RouteError = (Option<std::ops::Range<usize>>, String);

fn validate_route(name: &str, raw: RawRoute, secrets: &[SecretSpec]) -> Result<Route, RouteError> {
    if !valid_route_name(name) {
        return Err((
            None,
            format!("route name {name:?}: use 1-64 of A-Z a-z 0-9 _ -"),
        ));
    }
    if crate::metrics::RESERVED_ROUTE_LABELS.contains(&name) {
        return Err((
            None,
            format!("route name {name:?} is reserved (a metrics label of its own)"),
        ));
    }
    let url_err = |m: String| (Some(raw.url.span()), format!("routes.{name}.url: {m}"));
    let uri: Uri = raw
        .url
        .get_ref()
        .parse()
        .map_err(|e| url_err(format!("{e}")))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "http" && scheme != "https" {
        return Err(url_err("must be http:// or https://".into()));
    }
    let Some(authority) = uri.authority() else {
        return Err(url_err("has no host".into()));
    };
    if authority.as_str().contains('@') {
        return Err(url_err(
            "credentials in the URL are not allowed; use headers".into(),
        ));
    }
    if uri.query().is_some() {
        return Err(url_err("may not have a query".into()));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();

    let methods = match raw.methods {
        None => vec![Method::GET, Method::HEAD],
        Some(list) => {
            let mut methods = Vec::new();
            for m in list {
                let upper = m.get_ref().to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes()).map_err(|_| {
                    (
                        Some(m.span()),
                        format!("routes.{name}.methods: {:?} is not a method", m.get_ref()),
                    )
                })?;
                methods.push(method);
            }
            methods
        }
    };
    let mut paths = Vec::new();
    for p in &raw.paths {
        paths.push(
            PathRule::parse(p.get_ref())
                .map_err(|m| (Some(p.span()), format!("routes.{name}.paths: {m}")))?,
        );
    }
    let headers = validate_headers(&format!("routes.{name}.headers"), &raw.headers, secrets)?;
    let timeout = raw.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT);
    if timeout.is_zero() {
        return Err((None, format!("routes.{name}.timeout must be above zero")));
    }
    let keys = match raw.keys {
        None => None,
        Some(list) => {
            let mut keys = Vec::new();
            for k in list {
                let id = k.get_ref();
                if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err((
                        Some(k.span()),
                        format!(
                            "routes.{name}.keys: {id:?} is not an API key id (16 hex digits, as `keys list` shows)"
                        ),
                    ));
                }
                keys.push(id.to_ascii_lowercase());
            }
            Some(keys)
        }
    };
    let origin = format!("{scheme}://{authority}");
    let target = Origin::parse(&origin).map_err(url_err)?;
    Ok(Route {
        name: name.to_owned(),
        origin,
        target,
        base_path,
        policy: RoutePolicy::new(methods, paths),
        headers,
        ca_file: raw.ca_file.map(Spanned::into_inner),
        timeout,
        keys,
        allow_override_headers: raw.allow_override_headers,
    })
}

fn parse_relay_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("wss" | "ws") => {}
        _ => return Err("must start with wss:// (or ws:// for unencrypted)".into()),
    }
    if uri.host().is_none() {
        return Err("has no host".into());
    }
    // The URL is logged at every connect: it must never carry credentials.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("credentials in the URL are not allowed; use token_file".into());
    }
    Ok(uri)
}

/// `[relay] proxy` (with `proxy_username` / `proxy_password_file`), else
/// the environment's proxy for the relay URL.
fn relay_proxy(
    relay: &RawRelay,
    url: &Uri,
    env: &impl Env,
) -> Result<Option<crate::egress::Proxy>, RouteError> {
    use crate::egress::{ProxyAuth, parse_proxy_url, proxy_from_env};
    let file_auth = match (&relay.proxy_username, &relay.proxy_password_file) {
        (Some(user), Some(file)) => Some(ProxyAuth::File {
            username: user.get_ref().clone(),
            password_file: file.get_ref().clone(),
        }),
        (None, None) => None,
        (Some(s), None) => {
            return Err((
                Some(s.span()),
                "relay.proxy_username needs relay.proxy_password_file".into(),
            ));
        }
        (None, Some(s)) => {
            return Err((
                Some(s.span()),
                "relay.proxy_password_file needs relay.proxy_username".into(),
            ));
        }
    };
    let mut proxy = match &relay.proxy {
        Some(text) => {
            let proxy = parse_proxy_url(text.get_ref())
                .map_err(|m| (Some(text.span()), format!("relay.proxy: {m}")))?;
            if proxy.auth.is_some() {
                return Err((
                    Some(text.span()),
                    "relay.proxy: put the password in proxy_password_file, not in the URL (it is logged)"
                        .into(),
                ));
            }
            Some(proxy)
        }
        None => proxy_from_env(
            env,
            url.scheme_str().unwrap_or("wss"),
            url.host().unwrap_or_default(),
        )
        .map_err(|m| (None, m))?,
    };
    if let (Some(p), Some(auth)) = (proxy.as_mut(), file_auth) {
        p.auth = Some(auth);
    }
    Ok(proxy)
}

fn hostname(env: &impl Env) -> Option<String> {
    env.var("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MINIMAL: &str = r#"
[relay]
url = "wss://relay.example.com/v1/agent/connect"
token = " tta_x "

[agent]
name = "eu-prod-1"
tags = ["eu", "prod"]
instance = "pod-a"

[routes.jenkins]
url = "https://jenkins.internal:8443/base/"
methods = ["get", "POST"]
paths = ["/api/**"]
headers = { X-Team = "platform" }
"#;

    #[test]
    fn minimal_config_validates() {
        let c = AgentConfig::parse(Path::new("a.toml"), MINIMAL, &env(&[])).unwrap();
        assert_eq!(c.relay.connections, 2);
        assert_eq!(c.identity.instance, "pod-a");
        let r = &c.routes["jenkins"];
        assert_eq!(r.origin, "https://jenkins.internal:8443");
        assert_eq!(r.base_path, "/base");
        assert!(r.policy.check(&Method::POST, "/api/x").is_ok());
        assert!(r.policy.check(&Method::DELETE, "/api/x").is_err());
        match &c.relay.token {
            TokenSource::Inline(t) => assert_eq!(t.expose(), "tta_x"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn env_overrides_url_and_token() {
        let e = env(&[
            ("TETHER_RELAY_URL", "ws://127.0.0.1:1/v1/agent/connect"),
            ("TETHER_TOKEN", "t2\n"),
        ]);
        let c = AgentConfig::parse(Path::new("a.toml"), MINIMAL, &e).unwrap();
        assert_eq!(c.relay.url.scheme_str(), Some("ws"));
        match &c.relay.token {
            TokenSource::Inline(t) => assert_eq!(t.expose(), "t2"),
            other => panic!("{other:?}"),
        }
    }

    fn error_of(source: &str) -> String {
        AgentConfig::parse(Path::new("a.toml"), source, &env(&[]))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad_path = MINIMAL.replace("\"/api/**\"", "\"api\"");
        let e = error_of(&bad_path);
        assert!(e.starts_with("a.toml:14:"), "{e}");
        assert!(e.contains("routes.jenkins.paths"), "{e}");

        let unknown = MINIMAL.replace("tags = ", "tagz = ");
        let e = error_of(&unknown);
        assert!(e.starts_with("a.toml:8:"), "{e}");

        let bad_url = MINIMAL.replace("https://jenkins", "ftp://jenkins");
        let e = error_of(&bad_url);
        assert!(
            e.starts_with("a.toml:12:") && e.contains("routes.jenkins.url"),
            "{e}"
        );

        let userinfo = MINIMAL.replace("wss://relay", "wss://user:pw@relay");
        let e = error_of(&userinfo);
        assert!(e.starts_with("a.toml:3:") && !e.contains("pw@"), "{e}");

        let bad_relay = MINIMAL.replace("wss://relay", "https://relay");
        assert!(error_of(&bad_relay).starts_with("a.toml:3:"));

        let no_token = MINIMAL.replace("token = \" tta_x \"", "");
        assert!(error_of(&no_token).contains("token_file"));

        let placeholder = MINIMAL.replace("\"platform\"", "\"${{ secrets.x }}\"");
        let e = error_of(&placeholder);
        assert!(
            e.starts_with("a.toml:15:") && e.contains("unknown secret \"x\""),
            "{e}"
        );

        let two_sources = format!("{MINIMAL}\n[secrets.x]\nenv = \"A\"\nfile = \"/b\"\n");
        let e = error_of(&two_sources);
        assert!(
            e.starts_with("a.toml:17:") && e.contains("exactly one"),
            "{e}"
        );

        let vault_without_section = format!(
            "{MINIMAL}\n[secrets.x]\nvault = {{ path = \"secret/data/a\", field = \"f\" }}\n"
        );
        assert!(error_of(&vault_without_section).contains("no [vault] section"));

        let bad_target = format!(
            "{MINIMAL}\n[secrets.x]\nenv = \"A\"\ncallers = {{ targets = [\"https://a/b\"], headers = [\"authorization\"] }}\n"
        );
        assert!(error_of(&bad_target).contains("callers.targets"));

        let bad_method = MINIMAL.replace("\"get\"", "\"G ET\"");
        assert!(error_of(&bad_method).starts_with("a.toml:13:"));
    }

    #[test]
    fn secrets_and_route_templates_validate() {
        let with_secret = MINIMAL
            .replace("\"platform\"", "\"Bearer ${{ secrets.jenkins_token }}\"")
            + "\n[secrets.jenkins_token]\nvault = { path = \"secret/data/ci/jenkins\", field = \"token\" }\n\
               ttl = \"1m\"\n\n[vault]\naddress = \"https://vault:8200\"\n\
               auth = { method = \"approle\", role_id = \"r\", secret_id_file = \"/s\" }\n";
        let c = AgentConfig::parse(Path::new("a.toml"), &with_secret, &env(&[])).unwrap();
        assert_eq!(c.secrets.len(), 1);
        assert_eq!(c.secrets[0].ttl, Duration::from_secs(60));
        let header = &c.routes["jenkins"].headers[0];
        assert!(header.literal.is_none());
        assert_eq!(
            header.template.secrets().collect::<Vec<_>>(),
            ["jenkins_token"]
        );
        assert_eq!(
            c.routes["jenkins"].target.to_string(),
            "https://jenkins.internal:8443"
        );
    }

    #[test]
    fn systemd_credential_is_the_token_fallback() {
        let no_token = MINIMAL.replace("token = \" tta_x \"", "");
        let c = AgentConfig::parse(
            Path::new("a.toml"),
            &no_token,
            &env(&[(
                "CREDENTIALS_DIRECTORY",
                "/run/credentials/tether-agent.service",
            )]),
        )
        .unwrap();
        match c.relay.token {
            TokenSource::File(p) => assert!(p.ends_with("tether-agent.service/token")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn audit_required_defaults_to_true_with_a_file_and_needs_one() {
        let parse = |extra: &str| {
            AgentConfig::parse(
                Path::new("a.toml"),
                &format!("{MINIMAL}\n{extra}"),
                &env(&[]),
            )
        };
        let c = parse("[audit]\nfile = \"/var/lib/tether/audit.jsonl\"\n").unwrap();
        assert!(c.audit_required);
        let c = parse("[audit]\nfile = \"/a.jsonl\"\nrequired = false\n").unwrap();
        assert!(!c.audit_required);
        assert!(!parse("").unwrap().audit_required);
        let e = parse("[audit]\nrequired = true\n").unwrap_err().to_string();
        assert!(e.contains("needs [audit] file"), "{e}");
        let reserved = MINIMAL.replace("[routes.jenkins]", "[routes.forward]");
        assert!(error_of(&reserved).contains("reserved"));
    }
}
