//! Cluster mode: several relay replicas behind one load balancer, any
//! replica reaching any agent (proxy peering).
//!
//! Agents connect to a few replicas, not to all of them. Each replica
//! records the sessions it holds in Postgres (`cluster_sessions`) under a
//! lease it renews by heartbeat (`cluster_replicas`), and says so on the
//! `tether_presence` channel (LISTEN/NOTIFY) whenever that set changes, so
//! the others reload what they know of remote agents at once instead of
//! polling. A caller request finding no local session that matches goes,
//! over one HTTP/2 connection per peer, to a replica that has one (its
//! peer listener, `crate::peer_listener`), which relays it through its own
//! session by the same rules as a local request and never forwards it
//! again: at most one hop.
//!
//! A replica that dies stops renewing its lease and its sessions are
//! ignored when the lease ends (15 s by default), or at once by a replica
//! whose connection to it fails. One that drains deletes its presence
//! first. Presence is a hint, not the truth: a request that reaches a peer
//! whose session just went away comes back marked as a miss and, when it
//! can be re-sent, goes to another peer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tether_wire::BoxBody;
use tether_wire::protocol::{self, AgentInfo};

use crate::call::Destination;
use crate::config::ClusterConfig;
use crate::registry::{self, Candidate, SelectError};

mod peer_outcome;
mod presence;

pub(crate) use peer_outcome::{OwnAnswer, PeerOutcome, strip_peer_fields};
pub(crate) use presence::run;

/// Fields between replicas. On requests: callers' `tether-*` fields are
/// stripped on the public listener, so none can be forged. On answers:
/// agents' `tether-*` fields are stripped at the peer before it adds its
/// own (see [`PeerOutcome`]).
pub(crate) mod header {
    /// The shared peer key.
    pub(crate) const KEY: &str = "tether-peer-key";
    /// The caller's account, authenticated by the first replica.
    pub(crate) const ACCOUNT: &str = "tether-peer-account";
    /// The caller's selector, comma-separated.
    pub(crate) const SELECTOR: &str = "tether-peer-selector";
    /// The route (or the forward authority); absent for control requests.
    pub(crate) const ROUTE: &str = "tether-peer-route";
    /// On a peer's own answer: `no-agent` (the request reached no agent
    /// there) or `refused` (the peer key was refused). See
    /// [`super::PeerOutcome`].
    pub(crate) const OUTCOME: &str = "tether-peer-outcome";
    /// Prefix of every field between replicas.
    pub(crate) const PREFIX: &str = "tether-peer-";
}

/// `SETTINGS_MAX_HEADER_LIST_SIZE` between replicas, both ways: a relayed
/// head ([`protocol::MAX_HEADER_LIST_SIZE`]) plus the fields replicas add
/// to it (peer key, account, selector and route on requests; `Tether-Agent`
/// and `Tether-Request-Id` on responses), so that what fits a session
/// fits a hop too.
pub(crate) const PEER_HEADER_LIST_SIZE: u32 = protocol::MAX_HEADER_LIST_SIZE + 4 * 1024;

/// How long connecting to a peer may take before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One agent instance held by another replica, as presence says.
#[derive(Debug, Clone)]
pub(crate) struct RemoteAgent {
    pub(crate) replica: String,
    advertise: String,
    /// The replica's last heartbeat (ms, the database's clock).
    heartbeat: i64,
    pub(crate) account: String,
    pub(crate) info: AgentInfo,
    /// Requests this replica has in flight to that replica.
    load: Arc<AtomicUsize>,
}

impl Candidate for RemoteAgent {
    fn info(&self) -> &AgentInfo {
        &self.info
    }
    fn load(&self) -> (usize, usize) {
        (self.load.load(Ordering::Relaxed), 0)
    }
}

/// Counts a forwarded request in flight to a replica until dropped.
pub(crate) struct PeerInFlight(Arc<AtomicUsize>);

impl Drop for PeerInFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a forwarded request got no answer.
pub(crate) enum PeerError {
    /// It never left this replica (no connection to the peer, or HTTP/2
    /// gave it back): safe to send elsewhere.
    Unsent(Box<Request<BoxBody>>),
    /// It may have reached the peer.
    Lost(hyper::Error),
}

/// This replica's view of the cluster.
pub(crate) struct Cluster {
    pub(crate) replica_id: String,
    advertise: String,
    lease: Duration,
    /// SHA-256 of the peer key, to check peers' requests in constant time.
    key_hash: [u8; 32],
    /// The peer key as sent to peers (marked sensitive).
    key_header: HeaderValue,
    pool: PgPool,
    url: String,
    remote: RwLock<Arc<Vec<RemoteAgent>>>,
    /// Replicas whose connection failed, with the heartbeat seen then: they
    /// are skipped until a newer heartbeat shows they are back.
    down: Mutex<HashMap<String, i64>>,
    peers: Mutex<HashMap<String, http2::SendRequest<BoxBody>>>,
    loads: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl Cluster {
    /// Connects to the store's Postgres database for presence.
    pub(crate) async fn open(config: &ClusterConfig, store_url: &str) -> Result<Self, String> {
        let key = std::fs::read_to_string(&config.peer_key_file)
            .map_err(|e| format!("{}: {e}", config.peer_key_file.display()))?;
        let key = key.trim();
        if key.len() < 16 {
            return Err(format!(
                "{}: the peer key must be at least 16 characters",
                config.peer_key_file.display()
            ));
        }
        let mut key_header = HeaderValue::from_str(key).map_err(|_| {
            format!(
                "{}: the peer key must be printable ASCII",
                config.peer_key_file.display()
            )
        })?;
        key_header.set_sensitive(true);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(store_url)
            .await
            .map_err(|e| format!("cluster presence store: {e}"))?;
        Ok(Self {
            replica_id: config.replica_id.clone(),
            advertise: config.advertised(),
            lease: config.lease,
            key_hash: Sha256::digest(key.as_bytes()).into(),
            key_header,
            pool,
            url: store_url.to_owned(),
            remote: RwLock::default(),
            down: Mutex::default(),
            peers: Mutex::default(),
            loads: Mutex::default(),
        })
    }

    /// Chooses a remote agent instance for a request (the same rule as for
    /// local sessions, with this replica's requests in flight to each peer
    /// as the load), leaving out replicas already tried or known down.
    pub(crate) fn select(
        &self,
        to: &Destination<'_>,
        tried: &[String],
    ) -> Result<RemoteAgent, SelectError> {
        let remote = self
            .remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let candidates: Vec<RemoteAgent> = {
            let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
            remote
                .iter()
                .filter(|a| a.account == to.account && !tried.contains(&a.replica))
                .filter(|a| down.get(&a.replica).is_none_or(|at| a.heartbeat > *at))
                .cloned()
                .collect()
        };
        registry::choose(
            &candidates,
            to.selector,
            to.route,
            usize::MAX,
            &mut rand::rng(),
        )
        .cloned()
    }

    /// Sends `request` (already in the agent's shape) to `target`'s replica
    /// with the peer headers; the answer streams back, read as a
    /// [`PeerOutcome`].
    pub(crate) async fn forward(
        &self,
        target: &RemoteAgent,
        to: &Destination<'_>,
        mut request: Request<BoxBody>,
    ) -> Result<(PeerOutcome, PeerInFlight), PeerError> {
        let h = request.headers_mut();
        h.insert(header::KEY, self.key_header.clone());
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        };
        put(header::ACCOUNT, to.account);
        if !to.selector.is_empty() {
            put(header::SELECTOR, &to.selector.join(","));
        }
        if let Some(route) = to.route {
            put(header::ROUTE, route);
        }
        let Some(mut sender) = self.sender(target).await else {
            self.mark_down(target);
            return Err(PeerError::Unsent(Box::new(strip_peer_headers(request))));
        };
        target.load.fetch_add(1, Ordering::Relaxed);
        let in_flight = PeerInFlight(target.load.clone());
        if sender.ready().await.is_err() {
            self.forget_sender(&target.replica);
            return Err(PeerError::Unsent(Box::new(strip_peer_headers(request))));
        }
        match sender.try_send_request(request).await {
            Ok(response) => Ok((PeerOutcome::of(response), in_flight)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => {
                    self.forget_sender(&target.replica);
                    Err(PeerError::Unsent(Box::new(strip_peer_headers(unsent))))
                }
                None => {
                    // A stream error (say the caller's body failed) says
                    // nothing about the peer; a dead connection does.
                    if sender.is_closed() {
                        self.forget_sender(&target.replica);
                        self.mark_down(target);
                    }
                    Err(PeerError::Lost(e.into_error()))
                }
            },
        }
    }

    /// The HTTP/2 connection to `target`'s replica: the open one, or a new
    /// one. `None` if it cannot be reached.
    async fn sender(&self, target: &RemoteAgent) -> Option<http2::SendRequest<BoxBody>> {
        if let Some(sender) = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target.replica)
            .filter(|s| !s.is_closed())
        {
            return Some(sender.clone());
        }
        let authority = crate::config::peer_authority(&target.advertise)?;
        let tcp = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&authority),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                tracing::warn!(replica = %target.replica, peer = %authority, error = %e, "cannot reach peer replica");
                return None;
            }
            Err(_) => {
                tracing::warn!(replica = %target.replica, peer = %authority, "connecting to peer replica timed out");
                return None;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(PEER_HEADER_LIST_SIZE)
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tcp))
            .await
            .inspect_err(|e| tracing::warn!(replica = %target.replica, error = %e, "peer HTTP/2 handshake failed"))
            .ok()?;
        let replica = target.replica.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%replica, error = %e, "peer connection ended");
            }
        });
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.replica.clone(), sender.clone());
        Some(sender)
    }

    fn forget_sender(&self, replica: &str) {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(replica);
    }

    fn mark_down(&self, target: &RemoteAgent) {
        tracing::info!(replica = %target.replica, "peer replica unreachable: its agents are skipped until it heartbeats again");
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.replica.clone(), target.heartbeat);
    }

    /// Whether `headers` carry the peer key (constant-time comparison).
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::KEY)
            .map(|v| Sha256::digest(v.as_bytes()));
        presented.is_some_and(|p| crate::credential::same_hash(&p, &self.key_hash))
    }

    /// Per-replica in-flight counter (shared by all of its agents).
    fn load_of(&self, replica: &str) -> Arc<AtomicUsize> {
        self.loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(replica.to_owned())
            .or_default()
            .clone()
    }

    /// The agent instances other live replicas hold.
    pub(crate) fn remote_agents(&self) -> Vec<RemoteAgent> {
        self.remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .to_vec()
    }

    /// Remote agent instances known, and the replicas holding them.
    pub(crate) fn known(&self) -> (usize, usize) {
        let remote = self
            .remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let replicas: HashSet<&str> = remote.iter().map(|a| a.replica.as_str()).collect();
        (remote.len(), replicas.len())
    }
}

fn strip_peer_headers(mut request: Request<BoxBody>) -> Request<BoxBody> {
    peer_outcome::strip_peer_fields(request.headers_mut());
    request
}
