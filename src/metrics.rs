//! The agent's Prometheus metrics, exposed on the admin listener's
//! `/metrics` (prometheus-client, OpenMetrics text).
//!
//! Request metrics are recorded where the audit line is written — once per
//! request the relay sent, when its response body ended — so the audit
//! trail and the counters always agree. Values other parts of the agent
//! already keep (sessions, secret cache counters, the audit writer's
//! counters) are copied in when scraped.
//!
//! Every label value comes from the agent's own configuration or a fixed
//! set, never from what a caller (or the relay) sent: the `route` label is
//! a configured route name, `forward`, `connect`, `secrets/resolve` or
//! `unknown` ([`route_label`]); `secret` is a configured secret name; `code`
//! a status code. The audit line keeps the detailed target; the number of
//! series is bounded by the configuration.

use std::collections::BTreeSet;
use std::sync::{Mutex, RwLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use tether_wire::metrics::catch_up;

use crate::secrets::SecretStats;

/// One finished request, as the request metrics count it (the audit log
/// builds it from the request's audit record).
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// Route name, `forward …`, `connect …` or `secrets/resolve`.
    pub route: &'a str,
    /// Status answered.
    pub status: u16,
    /// Whether a policy denied it.
    pub denied: bool,
    /// Request body bytes forwarded upstream.
    pub bytes_in: u64,
    /// Response body bytes sent back.
    pub bytes_out: u64,
    /// From arrival to the end of the response body.
    pub duration_ms: u64,
}

/// Counters of the audit writer, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Lines dropped past the memory bound.
    pub dropped: u64,
    /// Writes that failed.
    pub write_errors: u64,
    /// Requests refused because the trail was unavailable or behind.
    pub refused: u64,
    /// Lines waiting to be written.
    pub queued: u64,
    /// Whether the last write succeeded.
    pub available: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteCode {
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabel {
    secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: RotationOutcome,
}

/// What became of a token the relay pushed (or of the fallback to the
/// previous one).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RotationOutcome {
    /// Written to `token_file`.
    Accepted,
    /// Refused (malformed, another id, refused before).
    Refused,
    /// Accepted but could not be written.
    Failed,
    /// The relay refused the pushed token at the handshake; the previous
    /// token was put back.
    RestoredPrevious,
}

impl EncodeLabelValue for RotationOutcome {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::RestoredPrevious => "restored_previous",
        })
    }
}

/// Route labels that are not route names (route names are 1–64 of
/// `A-Z a-z 0-9 _ -`; the configuration refuses these three as names).
pub const RESERVED_ROUTE_LABELS: [&str; 3] = ["forward", "connect", "unknown"];

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// Every metric of the agent.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteCode, Counter>,
    duration: HistogramFamily,
    bytes_in: Family<RouteLabel, Counter>,
    bytes_out: Family<RouteLabel, Counter>,
    denials: Family<RouteLabel, Counter>,
    in_flight: Gauge,
    sessions: Gauge,
    reconnects: Counter,
    secret_reads: Family<SecretLabel, Counter>,
    secret_hits: Family<SecretLabel, Counter>,
    secret_stale: Family<SecretLabel, Counter>,
    audit_dropped: Counter,
    audit_write_errors: Counter,
    audit_refused: Counter,
    audit_queued: Gauge,
    audit_available: Gauge,
    token_rotations: Family<OutcomeLabel, Counter>,
    /// Route names of every configuration loaded: the only route labels
    /// besides the reserved ones.
    routes: RwLock<BTreeSet<String>>,
    /// One scrape at a time: copying counters in is read-then-add.
    scrape: Mutex<()>,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tether_agent");
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            denials: Family::default(),
            in_flight: Gauge::default(),
            sessions: Gauge::default(),
            reconnects: Counter::default(),
            secret_reads: Family::default(),
            secret_hits: Family::default(),
            secret_stale: Family::default(),
            audit_dropped: Counter::default(),
            audit_write_errors: Counter::default(),
            audit_refused: Counter::default(),
            audit_queued: Gauge::default(),
            audit_available: Gauge::default(),
            token_rotations: Family::default(),
            routes: RwLock::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests the relay sent, by route and status code answered",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "From a request's arrival to the end of its response body",
            m.duration.clone(),
        );
        registry.register(
            "request_bytes",
            "Request body bytes forwarded to upstreams",
            m.bytes_in.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body bytes sent back to the relay",
            m.bytes_out.clone(),
        );
        registry.register(
            "policy_denials",
            "Requests refused by the agent's policy (403 denied)",
            m.denials.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being served",
            m.in_flight.clone(),
        );
        registry.register("sessions", "Relay sessions up", m.sessions.clone());
        registry.register(
            "reconnects",
            "Sessions opened after an earlier session of the same slot ended",
            m.reconnects.clone(),
        );
        registry.register(
            "secret_reads",
            "Reads of a secret's store (cache misses)",
            m.secret_reads.clone(),
        );
        registry.register(
            "secret_cache_hits",
            "Secret lookups answered from the cache",
            m.secret_hits.clone(),
        );
        registry.register(
            "secret_stale",
            "Requests served a stale secret value while its store failed",
            m.secret_stale.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit lines dropped past the writer's memory bound",
            m.audit_dropped.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Writes to the audit file that failed (the lines are kept and retried)",
            m.audit_write_errors.clone(),
        );
        registry.register(
            "audit_refused",
            "Requests refused with 503 audit_unavailable",
            m.audit_refused.clone(),
        );
        registry.register(
            "audit_queued",
            "Audit lines waiting to be written",
            m.audit_queued.clone(),
        );
        registry.register(
            "audit_available",
            "1 while the audit trail can be written, 0 while writes fail",
            m.audit_available.clone(),
        );
        registry.register(
            "token_rotations",
            "Tokens pushed by the relay, by outcome",
            m.token_rotations.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Counts one finished request.
    pub fn observe(&self, record: &Finished<'_>) {
        let label = {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            route_label(record.route, &routes).to_owned()
        };
        let route = RouteLabel {
            route: label.clone(),
        };
        self.requests
            .get_or_create(&RouteCode {
                route: label,
                code: record.status.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&route)
            .observe(record.duration_ms as f64 / 1000.0);
        if record.bytes_in > 0 {
            self.bytes_in.get_or_create(&route).inc_by(record.bytes_in);
        }
        if record.bytes_out > 0 {
            self.bytes_out
                .get_or_create(&route)
                .inc_by(record.bytes_out);
        }
        if record.denied {
            self.denials.get_or_create(&route).inc();
        }
    }

    /// Adds the route names of a configuration (at start and on each
    /// reload; names of earlier configurations stay, so requests in flight
    /// across a reload keep their label).
    pub fn add_routes<'a>(&self, names: impl IntoIterator<Item = &'a String>) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.extend(names.into_iter().cloned());
    }

    /// Counts what became of a pushed token.
    pub fn token_rotation(&self, outcome: RotationOutcome) {
        self.token_rotations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A request went upstream; [`Metrics::request_ended`] follows.
    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    /// A request that went upstream has finished its response body.
    pub fn request_ended(&self) {
        self.in_flight.dec();
    }

    /// A slot opened a session that is not its first.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// The OpenMetrics text, with the copied-in values brought up to date.
    pub fn render(&self, sessions: usize, secrets: &[SecretStats], audit: &AuditStats) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.sessions
            .set(i64::try_from(sessions).unwrap_or(i64::MAX));
        for s in secrets {
            let label = SecretLabel {
                secret: s.name.clone(),
            };
            catch_up(&self.secret_reads.get_or_create(&label), s.reads);
            catch_up(&self.secret_hits.get_or_create(&label), s.hits);
            catch_up(&self.secret_stale.get_or_create(&label), s.stale_served);
        }
        catch_up(&self.audit_dropped, audit.dropped);
        catch_up(&self.audit_write_errors, audit.write_errors);
        catch_up(&self.audit_refused, audit.refused);
        self.audit_queued
            .set(i64::try_from(audit.queued).unwrap_or(i64::MAX));
        self.audit_available.set(i64::from(audit.available));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The `route` label of an audit record's `route`: a configured route
/// name, or one of a fixed set. Forward-mode records name their target
/// (`forward https://host:port`), CONNECT ones `connect host:port`, and a
/// route a caller named but the configuration lacks is caller text: none
/// of those become a label.
pub fn route_label<'a>(route: &'a str, configured: &BTreeSet<String>) -> &'a str {
    if route == "forward" || route.starts_with("forward ") {
        "forward"
    } else if route == "connect" || route.starts_with("connect ") {
        "connect"
    } else if route == "secrets/resolve" || configured.contains(route) {
        route
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_come_from_the_configuration_or_a_fixed_set() {
        let configured: BTreeSet<String> = ["jenkins".to_owned()].into();
        for (route, label) in [
            ("jenkins", "jenkins"),
            ("jenkins2", "unknown"),
            ("", "unknown"),
            ("forward https://10.0.0.1:8443", "forward"),
            ("forward", "forward"),
            ("connect db.internal:443", "connect"),
            ("secrets/resolve", "secrets/resolve"),
        ] {
            assert_eq!(route_label(route, &configured), label, "{route}");
        }
    }

    #[test]
    fn renders_requests_by_route_and_code_and_copied_values() {
        let m = Metrics::default();
        m.add_routes(&["jenkins".to_owned()]);
        let mut r = Finished {
            route: "jenkins",
            status: 200,
            denied: false,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 1,
        };
        m.observe(&r);
        m.observe(&r);
        r.status = 403;
        r.denied = true;
        m.observe(&r);
        m.request_started();
        let text = m.render(2, &[], &AuditStats::default());
        assert!(text.contains("tether_agent_requests_in_flight 1"), "{text}");
        m.request_ended();
        let stats = [SecretStats {
            name: "tok".into(),
            reads: 3,
            hits: 10,
            stale_served: 0,
        }];
        let audit = AuditStats {
            dropped: 4,
            ..AuditStats::default()
        };
        let text = m.render(2, &stats, &audit);
        assert!(
            text.contains(r#"tether_agent_requests_total{route="jenkins",code="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_agent_requests_total{route="jenkins",code="403"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_agent_policy_denials_total{route="jenkins"} 1"#),
            "{text}"
        );
        assert!(text.contains("tether_agent_sessions 2"), "{text}");
        assert!(text.contains("tether_agent_requests_in_flight 0"), "{text}");
        assert!(
            text.contains(r#"tether_agent_secret_cache_hits_total{secret="tok"} 10"#),
            "{text}"
        );
        assert!(
            text.contains("tether_agent_audit_dropped_total 4"),
            "{text}"
        );
        // Scraping again does not add twice.
        let text = m.render(2, &stats, &audit);
        assert!(
            text.contains(r#"tether_agent_secret_reads_total{secret="tok"} 3"#),
            "{text}"
        );
    }
}
