//! The audit trail: one JSON line per request the cloud side sent.
//!
//! Fields: time, request_id, caller key id, route (or `secrets/resolve`),
//! method, the normalised upstream path without query, status, decision
//! (`allowed`, `denied`, or the error code), bytes each way, duration, and
//! the *names* of the secrets used. Never a header value, a query string,
//! a body or a secret value: those may carry credentials.
//!
//! With `[audit] file` the lines go to that file, opened append-only with
//! mode 0600 and reopened on SIGHUP (so logrotate can move it). A writer
//! thread does the I/O; the request path only queues the line, and no line
//! is dropped because the writer is behind or the file cannot be written.
//! The rule (module `writer`) is Vault's for audit devices: with
//! `[audit] required`, the default with a file, no request is served while
//! its line cannot be written. Without a file the lines go to the log
//! stream under the target `tether::audit`.

mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::Request;
use serde::Serialize;
use tether_wire::protocol::{self, header as th};
use tether_wire::{ErrorCode, Problem};

pub use crate::metrics::AuditStats;
use crate::metrics::{Finished, Metrics};
pub use writer::Unavailable;

/// Lines waiting to be written beyond which new requests wait for room
/// (and, `required`, are refused after a bounded wait).
const QUEUE: usize = 8192;

/// After a failed write, how long before the writer tries again.
const RETRY: Duration = Duration::from_secs(1);

/// Where audit lines go. Every record also feeds the request metrics, so
/// the two always count the same requests.
pub struct AuditLog {
    writer: Option<writer::Writer>,
    metrics: Arc<Metrics>,
}

/// A request refused because its audit line could not be written: 503
/// `audit_unavailable`.
#[derive(Debug)]
pub struct AuditRefusal {
    request_id: String,
    why: Unavailable,
}

impl AuditRefusal {
    /// The problem answered to the caller (no path, no error text).
    pub fn into_response(self) -> http::Response<tether_wire::BoxBody> {
        Problem::new(
            ErrorCode::AuditUnavailable,
            format!("{}; the agent serves no request until it can", self.why),
        )
        .with_request_id(self.request_id)
        .into_response()
    }
}

impl AuditLog {
    /// Lines to the log stream.
    pub fn to_log() -> Self {
        Self {
            writer: None,
            metrics: Arc::default(),
        }
    }

    /// Lines appended to `path` (created with mode 0600 if missing). With
    /// `required`, requests are refused while lines cannot be written.
    pub fn to_file(path: &Path, required: bool) -> std::io::Result<Self> {
        let sink = writer::FileSink::open(path)?;
        Ok(Self {
            writer: Some(writer::Writer::spawn(sink, QUEUE, RETRY, required)?),
            metrics: Arc::default(),
        })
    }

    /// Called before a request is served: every request the relay sends
    /// that leaves an audit line (routes, forward, CONNECT, secret
    /// resolution) waits (bounded) for room for its line, and is refused
    /// while the audit file cannot be written and `[audit] required`.
    pub async fn admit<B>(&self, req: &Request<B>) -> Result<(), AuditRefusal> {
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let control = req.uri().authority().map(|a| a.as_str())
            == Some(protocol::CONTROL_AUTHORITY)
            && req.uri().path() != protocol::CONTROL_RESOLVE_PATH;
        if control {
            return Ok(());
        }
        writer.admit().await.map_err(|why| {
            let request_id = req
                .headers()
                .get(th::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            tracing::debug!(%request_id, reason = %why, "request refused: audit_unavailable");
            AuditRefusal { request_id, why }
        })
    }

    /// Whether requests are refused now (for `/readyz`).
    pub fn refusing(&self) -> bool {
        self.writer.as_ref().is_some_and(writer::Writer::refusing)
    }

    /// Writes one record.
    pub fn record(&self, record: &AuditRecord) {
        self.metrics.observe(&record.finished());
        match &self.writer {
            None => tracing::info!(
                target: "tether::audit",
                request_id = %record.request_id,
                caller_key_id = %record.caller_key_id,
                caller_request_id = %record.caller_request_id.as_deref().unwrap_or("-"),
                route = %record.route,
                method = %record.method,
                path = %record.path,
                status = record.status,
                decision = %record.decision,
                bytes_in = record.bytes_in,
                bytes_out = record.bytes_out,
                duration_ms = record.duration_ms,
                secrets = %record.secrets.join(","),
                "request"
            ),
            Some(writer) => {
                let mut line = serde_json::to_string(record).unwrap_or_default();
                line.push('\n');
                writer.push(line);
            }
        }
    }

    /// Reopens the file (after SIGHUP).
    pub fn reopen(&self) {
        if let Some(writer) = &self.writer {
            writer.reopen();
        }
    }

    /// At shutdown: waits (at most `limit`) for the queued lines to be
    /// written; logs the lines that could not be.
    pub async fn flush(&self, limit: Duration) {
        if let Some(writer) = &self.writer {
            let left = writer.flush(limit).await;
            if left > 0 {
                tracing::error!(lines = left, "audit lines could not be written before exit");
            }
        }
    }

    /// The request metrics this log feeds.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The writer's counters (all zero, available, without a file).
    pub fn stats(&self) -> AuditStats {
        self.writer
            .as_ref()
            .map(writer::Writer::stats)
            .unwrap_or(AuditStats {
                available: true,
                ..AuditStats::default()
            })
    }
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 time the request arrived.
    pub time: String,
    /// The relay's request id.
    pub request_id: String,
    /// The caller's API key id.
    pub caller_key_id: String,
    /// The caller's own `X-Request-Id`, when it sent a usable one (the
    /// upstream got that one; otherwise it got `request_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_request_id: Option<String>,
    /// Route name, or `secrets/resolve`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Normalised upstream path, without query.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// `allowed`, `denied` or an error code.
    pub decision: String,
    /// Request body bytes forwarded upstream.
    pub bytes_in: u64,
    /// Response body bytes sent back.
    pub bytes_out: u64,
    /// From arrival to the end of the response body.
    pub duration_ms: u64,
    /// Names of the secrets used (never values).
    pub secrets: Vec<String>,
    /// The verified end user (`[identity]`), when the route needed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The issuer that vouched for `user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl AuditRecord {
    /// What the request metrics count of this record.
    fn finished(&self) -> Finished<'_> {
        Finished {
            route: &self.route,
            status: self.status,
            denied: self.decision == "denied",
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: self.duration_ms,
        }
    }

    /// A record for a request that arrived now.
    pub fn begin(request_id: &str, caller_key_id: &str, method: &str) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            request_id: request_id.to_owned(),
            caller_key_id: caller_key_id.to_owned(),
            caller_request_id: None,
            route: String::new(),
            method: method.to_owned(),
            path: String::new(),
            status: 0,
            decision: String::new(),
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0,
            secrets: Vec::new(),
            user: None,
            issuer: None,
            started: Some(Instant::now()),
        }
    }

    /// Sets status and decision and stamps the duration.
    pub fn finish(&mut self, status: u16, decision: &str) {
        self.status = status;
        self.decision = decision.to_owned();
        self.stamp();
    }

    fn stamp(&mut self) {
        if let Some(started) = self.started {
            self.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
    }
}

/// Byte counters of one request, shared with its body wrappers.
#[derive(Debug, Default)]
pub struct Bytes {
    /// Request body bytes.
    pub inbound: AtomicU64,
    /// Response body bytes.
    pub outbound: AtomicU64,
}

/// Written when dropped, i.e. when the response body ended (or was
/// abandoned): the only point where bytes out and duration are known.
pub struct PendingRecord {
    record: AuditRecord,
    bytes: Arc<Bytes>,
    log: Arc<AuditLog>,
}

impl PendingRecord {
    /// Holds `record` until drop.
    pub fn new(record: AuditRecord, bytes: Arc<Bytes>, log: Arc<AuditLog>) -> Self {
        log.metrics.request_started();
        Self { record, bytes, log }
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        self.record.bytes_in = self.bytes.inbound.load(Ordering::Relaxed);
        self.record.bytes_out = self.bytes.outbound.load(Ordering::Relaxed);
        self.record.stamp();
        self.log.record(&self.record);
        self.log.metrics.request_ended();
    }
}
