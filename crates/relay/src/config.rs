//! The relay's configuration file (TOML), with file:line errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tether_wire::config_location::Problem;

/// Top-level relay configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// On shutdown, how long requests in flight may take to finish.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Where the relay listens.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Where accounts, tokens and keys are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// TLS for the public listener; without it the relay speaks plain HTTP
    /// (for running behind a load balancer that terminates TLS).
    pub tls: Option<TlsConfig>,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Agent session settings.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Cluster mode: several replicas sharing a Postgres store, each
    /// forwarding a request to the replica holding the agent's session.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This replica's id, unique in the cluster (default: the hostname,
    /// which is the pod name in a StatefulSet or Deployment).
    #[serde(default = "default_replica_id")]
    pub replica_id: String,
    /// Where peers' forwarded requests are accepted (HTTP/2, peer key).
    pub peer_listen: SocketAddr,
    /// The URL peers use to reach `peer_listen`, `http://host:port`
    /// (default: `http://{peer_listen}`, right when it is not a wildcard).
    pub advertise: Option<String>,
    /// File holding the key every replica shares, authenticating replicas
    /// to each other.
    pub peer_key_file: PathBuf,
    /// How long a replica's presence outlives its last heartbeat (it
    /// heartbeats every third of it).
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
}

impl ClusterConfig {
    /// `host:port` peers dial.
    pub fn advertised(&self) -> String {
        match &self.advertise {
            Some(url) => url.clone(),
            None => format!("http://{}", self.peer_listen),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// File holding the admin API's bearer key. Without it (and without
    /// `TETHER_RELAY_ADMIN_KEY`) the admin API is off; health, readiness
    /// and metrics stay on the admin listener.
    pub key_file: Option<PathBuf>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain_timeout(),
            listen: ListenConfig::default(),
            store: StoreConfig::default(),
            tls: None,
            limits: LimitsConfig::default(),
            agents: AgentsConfig::default(),
            admin: AdminConfig::default(),
            cluster: None,
        }
    }
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Public listener: agents' WebSockets and callers' requests.
    #[serde(default = "default_public")]
    pub public: SocketAddr,
    /// Admin listener: health, readiness (and later the admin API). Loopback
    /// by default because it is not meant to face the internet.
    #[serde(default = "default_admin")]
    pub admin: Option<SocketAddr>,
    /// A standard HTTP forward-proxy listener (absolute-form requests and
    /// CONNECT), for portal backends that speak `HTTPS_PROXY`. Off unless
    /// set.
    pub proxy: Option<SocketAddr>,
    /// Host-addressed routes on the public listener: a request for
    /// `{route}.{route_domain}` goes to that route with its path as it
    /// is, for clients such as gRPC that cannot add `/v1/routes/{route}`
    /// ([`crate::route_domain`]). Off unless set.
    pub route_domain: Option<crate::route_domain::RouteDomain>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            public: default_public(),
            admin: default_admin(),
            proxy: None,
            route_domain: None,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created if missing) or `postgres://user@host/db`
    /// (for several relays sharing accounts, tokens and revocations).
    #[serde(default = "default_store_url")]
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: default_store_url(),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body a caller may send (413 above it). No cap unless set.
    pub max_body_bytes: Option<u64>,
    /// Largest request head (431 above it).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Requests per second one API key may make (429 `rate_limited` above
    /// it). No limit unless set.
    pub caller_rate: Option<u32>,
    /// Requests a key may make at once above `caller_rate` (default: one
    /// second's worth).
    pub caller_burst: Option<u32>,
    /// Upgraded connections (WebSocket, SPDY) one API key may hold open
    /// at once (429 `rate_limited` above it). No limit unless set.
    pub max_upgraded_per_key: Option<usize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: None,
            max_header_bytes: default_max_header_bytes(),
            caller_rate: None,
            caller_burst: None,
            max_upgraded_per_key: None,
        }
    }
}

/// `[agents]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// HTTP/2 PING interval on agent sessions.
    #[serde(default = "default_ping_interval", with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A session whose PING goes unanswered this long is dropped.
    #[serde(default = "default_ping_timeout", with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Requests in flight one session may carry; a request finding every
    /// matching session at this limit gets 429 `rate_limited`.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Agents older than this (or reporting no version) are refused at
    /// the handshake with 426: hygiene for version skew, not a control.
    #[serde(default, deserialize_with = "min_version")]
    pub min_version: Option<semver::Version>,
}

fn min_version<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<semver::Version>, D::Error> {
    let text = <Option<String> as serde::Deserialize>::deserialize(d)?;
    text.map(|t| {
        semver::Version::parse(&t).map_err(|e| {
            serde::de::Error::custom(format!(
                "min_version {t:?} is not a version (e.g. \"0.3.0\"): {e}"
            ))
        })
    })
    .transpose()
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            ping_interval: default_ping_interval(),
            ping_timeout: default_ping_timeout(),
            max_streams: default_max_streams(),
            min_version: None,
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_public() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9465)))
}
fn default_store_url() -> String {
    "sqlite://tether-relay.db".to_owned()
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_ping_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_ping_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_max_streams() -> usize {
    512
}
fn default_replica_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}
fn default_lease() -> Duration {
    Duration::from_secs(15)
}

pub use tether_wire::config_location::ConfigError;

impl RelayConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
            path: path.to_owned(),
            reason,
        })?;
        Self::parse_with(path, &source, |name| std::env::var(name).ok())
    }

    /// Parses and validates `source`, naming `path` in errors.
    pub fn parse(path: &Path, source: &str) -> Result<Self, ConfigError> {
        Self::parse_with(path, source, |_| None)
    }

    /// [`RelayConfig::parse`] with environment overrides, for values that
    /// are secret or differ per replica while the file is shared:
    /// `TETHER_RELAY_STORE_URL` (`[store] url`, which may hold a database
    /// password) and `TETHER_RELAY_ADVERTISE` (`[cluster] advertise`).
    pub fn parse_with(
        path: &Path,
        source: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |problems: Vec<Problem>| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let mut config: Self = toml::from_str(source).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            invalid(vec![Problem::at(source, offset, e.message())])
        })?;
        if let Some(url) = env("TETHER_RELAY_STORE_URL").filter(|u| !u.trim().is_empty()) {
            config.store.url = url.trim().to_owned();
        }
        if let (Some(cluster), Some(url)) = (
            config.cluster.as_mut(),
            env("TETHER_RELAY_ADVERTISE").filter(|u| !u.trim().is_empty()),
        ) {
            cluster.advertise = Some(url.trim().to_owned());
        }
        let mut problems: Vec<Problem> = config
            .problems()
            .into_iter()
            .map(|(key, message)| Problem::at(source, offset_of(source, key), message))
            .collect();
        if problems.is_empty() {
            return Ok(config);
        }
        problems.sort_by_key(|p| (p.line, p.column));
        Err(invalid(problems))
    }

    /// Every value that parses but does not make sense, with the key
    /// (`[table, key]`) it is reported at.
    fn problems(&self) -> Vec<(&'static [&'static str], &'static str)> {
        let mut found = Vec::new();
        let mut problem = |key: &'static [&'static str], message: &'static str| {
            found.push((key, message));
        };
        if let Some(cluster) = &self.cluster {
            if crate::store::Backend::of(&self.store.url) != Some(crate::store::Backend::Postgres) {
                problem(
                    &["cluster"],
                    "[cluster] needs a Postgres store ([store] url = \"postgres://…\"): replicas share presence and credentials through it; SQLite is for one relay process",
                );
            }
            // It travels in a header (Tether-Replica) and names the pod.
            if cluster.replica_id.is_empty()
                || cluster.replica_id.len() > 253
                || !cluster.replica_id.bytes().all(|b| b.is_ascii_graphic())
            {
                problem(
                    &["cluster", "replica_id"],
                    "[cluster] replica_id must be 1 to 253 visible ASCII characters (default: the hostname)",
                );
            }
            if cluster.advertise.is_none() && cluster.peer_listen.ip().is_unspecified() {
                problem(
                    &["cluster", "peer_listen"],
                    "[cluster] advertise is required when peer_listen is a wildcard address",
                );
            } else if peer_authority(&cluster.advertised()).is_none() {
                problem(
                    &["cluster", "advertise"],
                    "[cluster] advertise: expected http://host:port",
                );
            }
            if cluster.lease < Duration::from_secs(3) {
                problem(&["cluster", "lease"], "[cluster] lease must be at least 3s");
            }
        }
        if crate::store::Backend::of(&self.store.url).is_none() {
            problem(
                &["store", "url"],
                "[store] url: expected sqlite://PATH or postgres://…",
            );
        }
        if self.agents.ping_interval.is_zero() {
            problem(
                &["agents", "ping_interval"],
                "[agents] ping_interval must be above zero",
            );
        }
        if self.agents.ping_timeout.is_zero() {
            problem(
                &["agents", "ping_timeout"],
                "[agents] ping_timeout must be above zero",
            );
        }
        if self.agents.max_streams == 0 {
            problem(
                &["agents", "max_streams"],
                "[agents] max_streams must be above zero",
            );
        }
        if self.limits.caller_rate == Some(0) {
            problem(
                &["limits", "caller_rate"],
                "[limits] caller_rate must be above zero (leave it unset for no limit)",
            );
        }
        if self.limits.max_upgraded_per_key == Some(0) {
            problem(
                &["limits", "max_upgraded_per_key"],
                "[limits] max_upgraded_per_key must be above zero (leave it unset for no limit)",
            );
        }
        if self.limits.caller_burst == Some(0) {
            problem(
                &["limits", "caller_burst"],
                "[limits] caller_burst must be above zero",
            );
        }
        if self.limits.caller_burst.is_some() && self.limits.caller_rate.is_none() {
            problem(
                &["limits", "caller_burst"],
                "[limits] caller_burst needs caller_rate",
            );
        }
        if self.limits.max_header_bytes < 8 * 1024 {
            problem(
                &["limits", "max_header_bytes"],
                "[limits] max_header_bytes must be at least 8192",
            );
        }
        found
    }
}

/// Byte offset of `key` (`[table, key]`) in `source`: the deepest part
/// written in the file (a key set by the environment or a default is
/// reported at its table, or at the start of the file).
fn offset_of(source: &str, key: &[&str]) -> usize {
    use toml::de::{DeTable, DeValue};
    let Ok(root) = DeTable::parse(source) else {
        return 0;
    };
    let mut offset = 0;
    let mut table = root.get_ref();
    for part in key {
        let Some((name, value)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *part) else {
            break;
        };
        offset = name.span().start;
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    offset
}

/// `host:port` of an `http://host:port` advertise URL.
pub(crate) fn peer_authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?.trim_end_matches('/');
    let uri: http::uri::Authority = rest.parse().ok()?;
    uri.port_u16()?;
    Some(uri.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_loopback_defaults() {
        let c = RelayConfig::parse(Path::new("r.toml"), "").unwrap();
        assert!(c.listen.public.ip().is_loopback());
        assert!(c.tls.is_none());
        assert_eq!(c.agents.ping_interval, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_reported_with_line() {
        let err = RelayConfig::parse(Path::new("r.toml"), "[listen]\npublik = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.toml:2:"), "{err}");
        assert!(err.contains("publik"), "{err}");
    }

    #[test]
    fn bad_duration_is_reported_with_line() {
        let err = RelayConfig::parse(Path::new("r.toml"), "[agents]\nping_interval = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("r.toml:2:"), "{err}");
    }

    #[test]
    fn cluster_needs_postgres_and_says_where() {
        let text = "[listen]\npublic = \"127.0.0.1:8080\"\n\n[cluster]\npeer_listen = \"0.0.0.0:9470\"\n\
                    peer_key_file = \"/k\"\nadvertise = \"http://relay-0.peers:9470\"\n";
        let err = RelayConfig::parse(Path::new("r.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.toml:4:2: [cluster] needs a Postgres store"),
            "{err}"
        );
        let env = |name: &str| {
            (name == "TETHER_RELAY_STORE_URL").then(|| "postgres://u:pw@db/tether".to_owned())
        };
        let c = RelayConfig::parse_with(Path::new("r.toml"), text, env).unwrap();
        assert_eq!(c.store.url, "postgres://u:pw@db/tether");
        let spaced = text.replace("[cluster]\n", "[cluster]\nreplica_id = \"relay one\"\n");
        let err = RelayConfig::parse_with(Path::new("r.toml"), &spaced, env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("visible ASCII"), "{err}");
        let wildcard = text.replace("advertise = \"http://relay-0.peers:9470\"\n", "");
        let err = RelayConfig::parse_with(Path::new("r.toml"), &wildcard, env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("advertise is required"), "{err}");
        let advertised = |name: &str| match name {
            "TETHER_RELAY_STORE_URL" => Some("postgres://db/tether".to_owned()),
            "TETHER_RELAY_ADVERTISE" => Some("http://10.1.2.3:9470".to_owned()),
            _ => None,
        };
        let c = RelayConfig::parse_with(Path::new("r.toml"), &wildcard, advertised).unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.advertised(), "http://10.1.2.3:9470");
        assert_eq!(cluster.lease, Duration::from_secs(15));
    }

    #[test]
    fn route_domain_is_a_dns_name_and_says_where() {
        let c = RelayConfig::parse(
            Path::new("r.toml"),
            "[listen]\nroute_domain = \"Routes.Relay.Example.com\"\n",
        )
        .unwrap();
        let domain = c.listen.route_domain.unwrap();
        assert_eq!(domain.as_str(), "routes.relay.example.com");
        let err = RelayConfig::parse(
            Path::new("r.toml"),
            "[listen]\n\nroute_domain = \"*.relay.example.com\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("r.toml:3:"), "{err}");
        assert!(err.contains("route_domain"), "{err}");
    }

    #[test]
    fn non_sqlite_store_is_refused() {
        let err = RelayConfig::parse(Path::new("r.toml"), "[store]\nurl = \"mysql://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[store] url"), "{err}");
    }

    #[test]
    fn advertise_urls() {
        assert_eq!(
            peer_authority("http://10.0.0.7:9470").as_deref(),
            Some("10.0.0.7:9470")
        );
        assert_eq!(
            peer_authority("http://relay-1.relay-peers:9470/").as_deref(),
            Some("relay-1.relay-peers:9470")
        );
        assert_eq!(peer_authority("http://relay-1"), None);
        assert_eq!(peer_authority("https://relay-1:9470"), None);
        assert_eq!(peer_authority("relay-1:9470"), None);
    }
}
