//! The relay's Prometheus metrics (`/metrics` on the admin listener;
//! prometheus-client, OpenMetrics text). Counters the relay keeps
//! elsewhere (authentication failures, sessions) are copied in when
//! scraped.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use tether_wire::metrics::catch_up;

use crate::registry::AgentSession;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabel {
    account: String,
}

/// An agent version as [`crate::version::label`] gives it: semver of at
/// most 32 characters, or `unknown`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// Every metric of the relay.
pub struct Metrics {
    registry: Registry,
    requests: Family<CodeLabel, Counter>,
    agents: Family<AccountLabel, Gauge>,
    versions: Family<VersionLabel, Gauge>,
    sessions: Gauge,
    auth_failures: Counter,
    auth_limited: Counter,
    callers_limited: Counter,
    peer_forwarded: Family<OutcomeLabel, Counter>,
    peer_served: Counter,
    remote_agents: Gauge,
    peer_replicas: Gauge,
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tether_relay");
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            agents: Family::default(),
            versions: Family::default(),
            sessions: Gauge::default(),
            auth_failures: Counter::default(),
            auth_limited: Counter::default(),
            callers_limited: Counter::default(),
            peer_forwarded: Family::default(),
            peer_served: Counter::default(),
            remote_agents: Gauge::default(),
            peer_replicas: Gauge::default(),
            scrape: Mutex::new(()),
        };
        registry.register(
            "requests",
            "Caller requests (routes and secret resolution), by status code answered",
            m.requests.clone(),
        );
        registry.register(
            "agents_connected",
            "Agents (name and instance) with at least one session, by account",
            m.agents.clone(),
        );
        registry.register(
            "agent_sessions",
            "Connected agent sessions",
            m.sessions.clone(),
        );
        registry.register(
            "agent_versions",
            "Connected agent sessions by the version the agent reports (semver of at most 32 characters, else unknown)",
            m.versions.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed authentications (agents and callers)",
            m.auth_failures.clone(),
        );
        registry.register(
            "auth_rate_limited",
            "Failed authentications answered 429",
            m.auth_limited.clone(),
        );
        registry.register(
            "caller_rate_limited",
            "Caller requests refused by [limits] caller_rate",
            m.callers_limited.clone(),
        );
        registry.register(
            "peer_forwarded",
            "Cluster mode: requests sent to a peer replica, by outcome \
             (answered; unsent, miss or lost: tried elsewhere or answered 502)",
            m.peer_forwarded.clone(),
        );
        registry.register(
            "peer_served",
            "Cluster mode: requests peer replicas sent here",
            m.peer_served.clone(),
        );
        registry.register(
            "remote_agents",
            "Cluster mode: agent instances held by other live replicas",
            m.remote_agents.clone(),
        );
        registry.register(
            "peer_replicas",
            "Cluster mode: other live replicas holding agents",
            m.peer_replicas.clone(),
        );
        Self { registry, ..m }
    }
}

/// What the scrape copies in.
pub struct Snapshot<'a> {
    /// Connected sessions.
    pub sessions: &'a [std::sync::Arc<AgentSession>],
    /// Failed authentications, and how many were answered 429.
    pub auth: (u64, u64),
    /// Requests refused by the caller rate limit.
    pub callers_limited: u64,
    /// Cluster mode: remote agent instances and the replicas holding them.
    pub remote: Option<(usize, usize)>,
}

impl Metrics {
    /// Counts one caller request by the status answered.
    pub fn request(&self, status: http::StatusCode) {
        self.requests
            .get_or_create(&CodeLabel {
                code: status.as_u16().to_string(),
            })
            .inc();
    }

    /// Counts one request sent to a peer replica by its outcome.
    pub fn peer_forwarded(&self, outcome: &'static str) {
        self.peer_forwarded
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts one request a peer replica sent here.
    pub fn peer_served(&self) {
        self.peer_served.inc();
    }

    /// The OpenMetrics text.
    pub fn render(&self, now: Snapshot<'_>) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.sessions
            .set(i64::try_from(now.sessions.len()).unwrap_or(i64::MAX));
        let mut agents: HashMap<&str, std::collections::HashSet<(&str, &str)>> = HashMap::new();
        for s in now.sessions {
            agents
                .entry(s.account.as_str())
                .or_default()
                .insert((s.info.name.as_str(), s.info.instance.as_str()));
        }
        // Accounts that had agents and have none now read 0.
        self.agents.clear();
        for (account, set) in agents {
            self.agents
                .get_or_create(&AccountLabel {
                    account: account.to_owned(),
                })
                .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
        }
        // Versions no session reports any more disappear.
        self.versions.clear();
        for s in now.sessions {
            self.versions
                .get_or_create(&VersionLabel {
                    version: crate::version::label(&s.info.version).to_owned(),
                })
                .inc();
        }
        catch_up(&self.auth_failures, now.auth.0);
        catch_up(&self.auth_limited, now.auth.1);
        catch_up(&self.callers_limited, now.callers_limited);
        if let Some((agents, replicas)) = now.remote {
            self.remote_agents
                .set(i64::try_from(agents).unwrap_or(i64::MAX));
            self.peer_replicas
                .set(i64::try_from(replicas).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
