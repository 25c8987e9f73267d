//! Cluster mode: several relay replicas behind one load balancer, any
//! replica reaching any agent (proxy peering).
//!
//! Agents connect to a few replicas, not to all of them. Each replica
//! records the sessions it holds in Postgres (`cluster_sessions`) under a
//! lease it renews by heartbeat (`cluster_replicas`), and says so on the
//! `tether_presence` channel (LISTEN/NOTIFY) whenever that set changes, so
//! the others reload what they know of remote agents at once instead of
//! polling. A caller request finding no local session that matches goes,
//! over one HTTP/2 connection per peer, to a replica that has one
//! ([`handle_peer`]), which relays it through its own session by the same
//! rules as a local request and never forwards it again: at most one hop.
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

use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tether_wire::protocol::{AgentInfo, header as th};
use tether_wire::{BoxBody, ErrorCode, Problem};

use crate::State;
use crate::config::ClusterConfig;
use crate::registry::{self, Candidate, SelectError};

/// Postgres channel told of every change to a replica's presence.
const PRESENCE_CHANNEL: &str = "tether_presence";

/// Headers of a forwarded request (peer listener only; callers' `tether-*`
/// headers are stripped on the public listener, so none can be forged).
pub(crate) mod header {
    /// The shared peer key.
    pub(crate) const KEY: &str = "tether-peer-key";
    /// The caller's account, authenticated by the first replica.
    pub(crate) const ACCOUNT: &str = "tether-peer-account";
    /// The caller's selector, comma-separated.
    pub(crate) const SELECTOR: &str = "tether-peer-selector";
    /// The route (or the forward authority); absent for control requests.
    pub(crate) const ROUTE: &str = "tether-peer-route";
    /// On a peer's answer: it had no session for the request, which reached
    /// no agent.
    pub(crate) const MISS: &str = "tether-peer-miss";
}

/// How long connecting to a peer may take before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Gathering presence changes for this long makes one write of a burst.
const DEBOUNCE: Duration = Duration::from_millis(25);

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

/// A row of presence: replica, advertise URL, heartbeat, account, agent
/// name, instance, tags and routes (JSON), forward mode.
type PresenceRow = (
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    bool,
);

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
        account: &str,
        selector: &[String],
        route: Option<&str>,
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
                .filter(|a| a.account == account && !tried.contains(&a.replica))
                .filter(|a| down.get(&a.replica).is_none_or(|at| a.heartbeat > *at))
                .cloned()
                .collect()
        };
        registry::choose(&candidates, selector, route, usize::MAX, &mut rand::rng()).cloned()
    }

    /// Sends `request` (already in the agent's shape) to `target`'s replica
    /// with the peer headers; the answer streams back.
    pub(crate) async fn forward(
        &self,
        target: &RemoteAgent,
        account: &str,
        selector: &[String],
        route: Option<&str>,
        mut request: Request<BoxBody>,
    ) -> Result<(Response<Incoming>, PeerInFlight), PeerError> {
        let h = request.headers_mut();
        h.insert(header::KEY, self.key_header.clone());
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        };
        put(header::ACCOUNT, account);
        if !selector.is_empty() {
            put(header::SELECTOR, &selector.join(","));
        }
        if let Some(route) = route {
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
            Ok(response) => Ok((response, in_flight)),
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
        let authority = peer_authority(&target.advertise)?;
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
    fn admits(&self, headers: &HeaderMap) -> bool {
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

    async fn register(&self) -> Result<(), sqlx::Error> {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO cluster_replicas (replica_id, advertise, heartbeat, lease_until) \
             VALUES ($1, $2, (extract(epoch from now()) * 1000)::bigint, \
                     (extract(epoch from now()) * 1000)::bigint + $3) \
             ON CONFLICT (replica_id) DO UPDATE SET advertise = EXCLUDED.advertise, \
                heartbeat = EXCLUDED.heartbeat, lease_until = EXCLUDED.lease_until",
        )
        .bind(&self.replica_id)
        .bind(&self.advertise)
        .bind(lease_ms)
        .execute(&mut *tx)
        .await?;
        // Sessions of this replica's previous life are gone.
        sqlx::query("DELETE FROM cluster_sessions WHERE replica_id = $1")
            .bind(&self.replica_id)
            .execute(&mut *tx)
            .await?;
        notify(&mut tx, &self.replica_id).await?;
        tx.commit().await
    }

    /// Renews the lease; `true` if the replica's row had gone and was
    /// registered again (its sessions must then be published anew).
    async fn heartbeat(&self) -> Result<bool, sqlx::Error> {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let updated = sqlx::query(
            "UPDATE cluster_replicas SET heartbeat = (extract(epoch from now()) * 1000)::bigint, \
             lease_until = (extract(epoch from now()) * 1000)::bigint + $2 WHERE replica_id = $1",
        )
        .bind(&self.replica_id)
        .bind(lease_ms)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            // Removed under us (another replica with our id drained): put
            // it back, sessions and all.
            self.register().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes the difference between the sessions this replica holds and
    /// those it last published.
    async fn sync(
        &self,
        state: &State,
        published: &mut HashSet<u64>,
        force: bool,
    ) -> Result<(), sqlx::Error> {
        let sessions = state.registry.sessions();
        let current: HashSet<u64> = sessions.iter().map(|s| s.id).collect();
        let gone: Vec<i64> = published
            .difference(&current)
            .filter_map(|id| i64::try_from(*id).ok())
            .collect();
        let new: Vec<_> = sessions
            .iter()
            .filter(|s| force || !published.contains(&s.id))
            .collect();
        if gone.is_empty() && new.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if force {
            sqlx::query("DELETE FROM cluster_sessions WHERE replica_id = $1")
                .bind(&self.replica_id)
                .execute(&mut *tx)
                .await?;
        } else if !gone.is_empty() {
            sqlx::query(
                "DELETE FROM cluster_sessions WHERE replica_id = $1 AND session_id = ANY($2)",
            )
            .bind(&self.replica_id)
            .bind(&gone)
            .execute(&mut *tx)
            .await?;
        }
        if !new.is_empty() {
            let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
            sqlx::query(
                "INSERT INTO cluster_sessions \
                 (replica_id, session_id, account, agent, instance, tags, routes, forward) \
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], \
                                          $6::text[], $7::text[], $8::bool[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.replica_id)
            .bind(
                new.iter()
                    .map(|s| i64::try_from(s.id).unwrap_or(i64::MAX))
                    .collect::<Vec<_>>(),
            )
            .bind(new.iter().map(|s| s.account.clone()).collect::<Vec<_>>())
            .bind(new.iter().map(|s| s.info.name.clone()).collect::<Vec<_>>())
            .bind(
                new.iter()
                    .map(|s| s.info.instance.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(new.iter().map(|s| json(&s.info.tags)).collect::<Vec<_>>())
            .bind(new.iter().map(|s| json(&s.info.routes)).collect::<Vec<_>>())
            .bind(new.iter().map(|s| s.info.forward).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        notify(&mut tx, &self.replica_id).await?;
        tx.commit().await?;
        *published = current;
        Ok(())
    }

    /// Re-reads the agents other live replicas hold.
    async fn reload(&self) -> Result<(), sqlx::Error> {
        let rows: Vec<PresenceRow> = sqlx::query_as(
            "SELECT DISTINCT s.replica_id, r.advertise, r.heartbeat, s.account, s.agent, \
                        s.instance, s.tags, s.routes, s.forward \
                 FROM cluster_sessions s JOIN cluster_replicas r USING (replica_id) \
                 WHERE r.lease_until > (extract(epoch from now()) * 1000)::bigint \
                   AND s.replica_id <> $1",
        )
        .bind(&self.replica_id)
        .fetch_all(&self.pool)
        .await?;
        let remote: Vec<RemoteAgent> = rows
            .into_iter()
            .map(
                |(
                    replica,
                    advertise,
                    heartbeat,
                    account,
                    name,
                    instance,
                    tags,
                    routes,
                    forward,
                )| {
                    RemoteAgent {
                        load: self.load_of(&replica),
                        replica,
                        advertise,
                        heartbeat,
                        account,
                        info: AgentInfo {
                            name,
                            instance,
                            version: String::new(),
                            tags: serde_json::from_str(&tags).unwrap_or_default(),
                            routes: serde_json::from_str(&routes).unwrap_or_default(),
                            forward,
                        },
                    }
                },
            )
            .collect();
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(remote);
        Ok(())
    }

    async fn leave(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM cluster_replicas WHERE replica_id = $1")
            .bind(&self.replica_id)
            .execute(&mut *tx)
            .await?;
        notify(&mut tx, &self.replica_id).await?;
        tx.commit().await
    }
}

async fn notify(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    replica: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PRESENCE_CHANNEL)
        .bind(replica)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `host:port` of an `http://host:port` advertise URL.
pub(crate) fn peer_authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?.trim_end_matches('/');
    let uri: http::uri::Authority = rest.parse().ok()?;
    uri.port_u16()?;
    Some(uri.as_str().to_owned())
}

fn strip_peer_headers(mut request: Request<BoxBody>) -> Request<BoxBody> {
    for name in [
        header::KEY,
        header::ACCOUNT,
        header::SELECTOR,
        header::ROUTE,
    ] {
        request.headers_mut().remove(name);
    }
    request
}

/// Keeps this replica's presence: registers it, publishes its sessions as
/// they come and go, heartbeats, and keeps the view of the others fresh
/// (LISTEN/NOTIFY, and a reload every heartbeat to drop expired replicas).
/// Removes the replica's presence when the relay shuts down.
pub(crate) async fn run(state: Arc<State>, cluster: Arc<Cluster>) {
    let beat = cluster.lease / 3;
    let mut registered = false;
    let mut published = HashSet::new();
    let mut listener: Option<PgListener> = None;
    let mut tick = tokio::time::interval(beat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let mut reload = false;
        let mut force = false;
        tokio::select! {
            _ = tick.tick() => {
                reload = true;
                if listener.is_none() {
                    listener = listen(&cluster.url).await;
                }
                let beat = if registered {
                    cluster.heartbeat().await
                } else {
                    cluster.register().await.map(|()| true)
                };
                match beat {
                    Ok(anew) => {
                        force = anew;
                        registered = true;
                        if failing {
                            tracing::info!("cluster presence store reachable again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot renew this replica's presence lease");
                        }
                        failing = true;
                    }
                }
            }
            () = state.registry.changed().notified() => {
                tokio::time::sleep(DEBOUNCE).await;
            }
            got = async { listener.as_mut()?.recv().await.ok() }, if listener.is_some() => {
                match got {
                    Some(_) => {
                        tokio::time::sleep(DEBOUNCE).await;
                        // Everything that arrived meanwhile is covered by one reload.
                        while listener.as_mut().and_then(PgListener::next_buffered).is_some() {}
                        reload = true;
                    }
                    None => {
                        tracing::warn!("presence listener lost; reconnecting at the next heartbeat");
                        listener = None;
                    }
                }
            }
            () = state.shutdown.cancelled() => {
                if let Err(e) = cluster.leave().await {
                    tracing::warn!(error = %e, "cannot remove this replica's presence; it ends with its lease");
                }
                return;
            }
        }
        if registered && let Err(e) = cluster.sync(&state, &mut published, force).await {
            tracing::warn!(error = %e, "cannot publish this replica's sessions");
        }
        if reload && let Err(e) = cluster.reload().await {
            tracing::warn!(error = %e, "cannot read the cluster's presence");
        }
    }
}

async fn listen(url: &str) -> Option<PgListener> {
    let mut listener = PgListener::connect(url)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "cannot LISTEN for presence changes"))
        .ok()?;
    listener.listen(PRESENCE_CHANNEL).await.ok()?;
    Some(listener)
}

/// Handles a request forwarded by a peer replica: checks the peer key,
/// then relays it through a local session by the rules of a local request
/// (never to another peer). An answer that reached no agent because this
/// replica has none matching any more carries [`header::MISS`].
pub(crate) async fn handle_peer(
    state: Arc<State>,
    mut req: Request<Incoming>,
) -> Response<BoxBody> {
    use http_body_util::BodyExt;
    let request_id = req
        .headers()
        .get(th::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let call = crate::ingress::Call::with_id(request_id);
    let Some(cluster) = state.cluster.as_ref() else {
        return call.fail(ErrorCode::NoSuchRoute, "not in cluster mode");
    };
    if !cluster.admits(req.headers()) {
        tracing::warn!("peer request refused: wrong or missing peer key");
        let mut response =
            Problem::new(ErrorCode::Unauthorized, "peer key required").into_response();
        response
            .headers_mut()
            .insert(header::MISS, HeaderValue::from_static("1"));
        return response;
    }
    state.metrics.peer_served();
    let text = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(account) = text(header::ACCOUNT) else {
        return call.fail(ErrorCode::BadRequest, "peer request without an account");
    };
    let selector = text(header::SELECTOR)
        .map(|s| tether_wire::protocol::parse_tags(&s))
        .unwrap_or_default();
    let route = text(header::ROUTE);
    for name in [
        header::KEY,
        header::ACCOUNT,
        header::SELECTOR,
        header::ROUTE,
    ] {
        req.headers_mut().remove(name);
    }
    let (parts, body) = req.into_parts();
    let request = Request::from_parts(parts, body.map_err(Into::into).boxed());
    let mut response = call
        .dispatch_local(&state, &selector, &account, route.as_deref(), request, None)
        .await;
    if response
        .extensions()
        .get::<crate::ingress::Unreached>()
        .is_some()
    {
        response
            .headers_mut()
            .insert(header::MISS, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
