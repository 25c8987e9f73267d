//! Connected agents per account, and the choice of one for a request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use hyper::client::conn::http2::SendRequest;
use rand::Rng;
use tether_wire::BoxBody;
use tether_wire::protocol::AgentInfo;
use tokio_util::sync::CancellationToken;

/// One live WebSocket session of an agent.
#[derive(Debug)]
pub struct AgentSession {
    /// Relay-local id of this session.
    pub id: u64,
    /// Account whose token opened it.
    pub account: String,
    /// Lookup id of that token.
    pub token_id: String,
    /// SHA-256 of the secret that opened the session (current or
    /// rotated-out), to tell which secret a rotation or revocation hits.
    pub secret_hash: [u8; 32],
    /// When that secret stops being valid (unix seconds; `i64::MAX`: no
    /// end). Updated when the token changes in the store.
    valid_until: AtomicI64,
    /// What the agent said about itself.
    pub info: AgentInfo,
    /// Peer address of the WebSocket.
    pub remote: SocketAddr,
    /// HTTP/2 client half: where relayed requests go.
    sender: SendRequest<BoxBody>,
    /// Requests sent and not yet finished (response body done or dropped).
    in_flight: AtomicUsize,
    /// Woken when the last request in flight finishes (a drain awaits it).
    idle: tokio::sync::Notify,
    /// The same, summed over every session of this agent instance: shared
    /// by its sessions, so the least loaded *agent* is chosen.
    agent_load: Arc<AtomicUsize>,
    /// Cancelled to close the session.
    pub closed: CancellationToken,
}

impl AgentSession {
    /// A session over `sender`.
    pub fn new(
        identity: crate::auth::Identity,
        info: AgentInfo,
        remote: SocketAddr,
        sender: SendRequest<BoxBody>,
        agent_load: Arc<AtomicUsize>,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            account: identity.account,
            token_id: identity.credential_id,
            secret_hash: identity.secret_hash,
            valid_until: AtomicI64::new(identity.valid_until.unwrap_or(i64::MAX)),
            info,
            remote,
            sender,
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            agent_load,
            closed: CancellationToken::new(),
        }
    }

    /// A handle to send requests on; counts one request in flight until
    /// the returned guard is dropped.
    pub fn begin_request(self: &Arc<Self>) -> (SendRequest<BoxBody>, InFlight) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.agent_load.fetch_add(1, Ordering::Relaxed);
        (self.sender.clone(), InFlight(self.clone()))
    }

    /// Requests in flight on this session.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Returns once no request is in flight on this session.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a request finishing between
            // the check and the await still wakes us.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// When the secret that opened the session stops being valid.
    pub fn valid_until(&self) -> Option<i64> {
        Some(self.valid_until.load(Ordering::Relaxed)).filter(|t| *t != i64::MAX)
    }

    /// Sets when the session's secret stops being valid.
    pub fn set_valid_until(&self, until: Option<i64>) {
        self.valid_until
            .store(until.unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

/// Counts a request as in flight on its session until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AgentSession>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
        self.0.agent_load.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no session was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectError {
    /// No agent of the account matches the selector.
    NoAgent,
    /// Agents match, but none serves the route.
    NoSuchRoute,
    /// Agents match and serve the route, but every one of their sessions
    /// has its limit of requests in flight.
    Busy,
}

/// What selection needs to know of a candidate (a trait so the rule is
/// testable without live sessions).
pub trait Candidate {
    /// The agent's info.
    fn info(&self) -> &AgentInfo;
    /// Requests in flight on the whole agent (all its sessions), then on
    /// this session: compared in that order.
    fn load(&self) -> (usize, usize);
}

impl Candidate for Arc<AgentSession> {
    fn info(&self) -> &AgentInfo {
        &self.info
    }
    fn load(&self) -> (usize, usize) {
        (self.agent_load.load(Ordering::Relaxed), self.in_flight())
    }
}

/// Picks among `candidates` those having every tag of `selector` (the agent
/// name counts as a tag) and, if `route` is given, serving it, and having
/// fewer than `max_streams` requests in flight on the session; then the one
/// whose agent has the fewest requests in flight (then the session), ties
/// broken at random.
pub fn choose<'a, C: Candidate>(
    candidates: &'a [C],
    selector: &[String],
    route: Option<&str>,
    max_streams: usize,
    rng: &mut impl Rng,
) -> Result<&'a C, SelectError> {
    let mut matching = candidates.iter().filter(|c| {
        let info = c.info();
        selector
            .iter()
            .all(|tag| info.name == *tag || info.tags.iter().any(|t| t == tag))
    });
    let mut any_matching = false;
    let mut any_serving = false;
    let mut best: Option<&C> = None;
    let mut ties = 0u32;
    for c in matching.by_ref() {
        any_matching = true;
        if route.is_some_and(|r| !serves(c.info(), r)) {
            continue;
        }
        any_serving = true;
        if c.load().1 >= max_streams {
            continue;
        }
        match best {
            Some(b) if c.load() > b.load() => {}
            Some(b) if c.load() == b.load() => {
                // Reservoir sampling over the ties: each has equal chance.
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some(c);
                }
            }
            _ => {
                best = Some(c);
                ties = 1;
            }
        }
    }
    match best {
        Some(c) => Ok(c),
        None if any_serving => Err(SelectError::Busy),
        None if any_matching => Err(SelectError::NoSuchRoute),
        None => Err(SelectError::NoAgent),
    }
}

/// Whether an agent serves `route`: a route name, or forward mode (the
/// forward authority, which no route name can equal).
fn serves(info: &AgentInfo, route: &str) -> bool {
    if route == tether_wire::protocol::FORWARD_AUTHORITY {
        info.forward
    } else {
        info.routes.iter().any(|x| x == route)
    }
}

/// Connected sessions by account.
#[derive(Debug)]
pub struct Registry {
    by_account: RwLock<HashMap<String, Vec<Arc<AgentSession>>>>,
    /// Woken when a session comes or goes (cluster presence publishes it).
    changed: tokio::sync::Notify,
    /// Bumped when a session comes: requests waiting for a replacement
    /// session watch it (any number of them, unlike `changed`).
    arrivals: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            by_account: RwLock::default(),
            changed: tokio::sync::Notify::new(),
            arrivals: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Adds a session.
    pub fn insert(&self, session: Arc<AgentSession>) {
        let mut map = self.by_account.write().unwrap_or_else(|p| p.into_inner());
        map.entry(session.account.clone())
            .or_default()
            .push(session);
        drop(map);
        self.changed.notify_one();
        self.arrivals.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Removes a session (no-op if absent).
    pub fn remove(&self, session: &AgentSession) {
        let mut map = self.by_account.write().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(&session.account) {
            list.retain(|s| s.id != session.id);
            if list.is_empty() {
                map.remove(&session.account);
            }
        }
        self.changed.notify_one();
    }

    /// Changes whenever a session is added: subscribe, then check, then
    /// await `changed()` to wait for one without missing it.
    pub fn arrivals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.arrivals.subscribe()
    }

    /// Notified when a session comes or goes.
    pub fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// Chooses a session of `account` for a request (see [`choose`]),
    /// leaving out the sessions in `exclude` (already tried).
    pub fn select(
        &self,
        account: &str,
        selector: &[String],
        route: Option<&str>,
        exclude: &[u64],
        max_streams: usize,
    ) -> Result<Arc<AgentSession>, SelectError> {
        let map = self.by_account.read().unwrap_or_else(|p| p.into_inner());
        let list = map.get(account).ok_or(SelectError::NoAgent)?;
        if exclude.is_empty() {
            return choose(list, selector, route, max_streams, &mut rand::rng()).cloned();
        }
        let left: Vec<_> = list
            .iter()
            .filter(|s| !exclude.contains(&s.id))
            .cloned()
            .collect();
        choose(&left, selector, route, max_streams, &mut rand::rng()).cloned()
    }

    /// The in-flight counter shared by the sessions of one agent instance:
    /// an existing session's, or a new one.
    pub fn agent_load(&self, account: &str, info: &AgentInfo) -> Arc<AtomicUsize> {
        let map = self.by_account.read().unwrap_or_else(|p| p.into_inner());
        map.get(account)
            .and_then(|list| {
                list.iter()
                    .find(|s| s.info.name == info.name && s.info.instance == info.instance)
            })
            .map(|s| s.agent_load.clone())
            .unwrap_or_default()
    }

    /// Every connected session.
    pub fn sessions(&self) -> Vec<Arc<AgentSession>> {
        let map = self.by_account.read().unwrap_or_else(|p| p.into_inner());
        map.values().flatten().cloned().collect()
    }

    /// Number of connected sessions.
    pub fn len(&self) -> usize {
        let map = self.by_account.read().unwrap_or_else(|p| p.into_inner());
        map.values().map(Vec::len).sum()
    }

    /// Whether no session is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    struct Fake(AgentInfo, usize);
    impl Candidate for Fake {
        fn info(&self) -> &AgentInfo {
            &self.0
        }
        fn load(&self) -> (usize, usize) {
            (self.1, self.1)
        }
    }

    fn agent(name: &str, tags: &[&str], routes: &[&str], load: usize) -> Fake {
        Fake(
            AgentInfo {
                name: name.into(),
                instance: format!("{name}-0"),
                version: "0".into(),
                tags: tags.iter().map(|s| s.to_string()).collect(),
                routes: routes.iter().map(|s| s.to_string()).collect(),
                forward: false,
            },
            load,
        )
    }

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn selector_requires_every_tag_and_name_counts_as_tag() {
        let agents = [
            agent("a", &["eu"], &["r"], 0),
            agent("b", &["eu", "prod"], &["r"], 5),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        let c = choose(&agents, &tags(&["eu", "prod"]), Some("r"), 100, &mut rng).unwrap();
        assert_eq!(c.0.name, "b");
        let c = choose(&agents, &tags(&["a"]), None, 100, &mut rng).unwrap();
        assert_eq!(c.0.name, "a");
        assert_eq!(
            choose(&agents, &tags(&["us"]), Some("r"), 100, &mut rng).err(),
            Some(SelectError::NoAgent)
        );
    }

    #[test]
    fn unknown_route_among_matching_agents_is_no_such_route() {
        let agents = [agent("a", &[], &["jenkins"], 0)];
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            choose(&agents, &[], Some("k8s"), 100, &mut rng).err(),
            Some(SelectError::NoSuchRoute)
        );
        let none: [Fake; 0] = [];
        assert_eq!(
            choose(&none, &[], Some("k8s"), 100, &mut rng).err(),
            Some(SelectError::NoAgent)
        );
    }

    #[test]
    fn least_loaded_wins_and_ties_spread() {
        let agents = [
            agent("busy", &[], &["r"], 3),
            agent("x", &[], &["r"], 1),
            agent("y", &[], &["r"], 1),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = HashMap::new();
        for _ in 0..1000 {
            let c = choose(&agents, &[], Some("r"), 100, &mut rng).unwrap();
            *counts.entry(c.0.name.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("busy"), None);
        let x = counts["x"];
        assert!((350..=650).contains(&x), "x chosen {x} times of 1000");
    }

    #[test]
    fn sessions_at_their_stream_limit_are_skipped_then_busy() {
        let agents = [agent("full", &[], &["r"], 4), agent("free", &[], &["r"], 3)];
        let mut rng = StdRng::seed_from_u64(2);
        let c = choose(&agents, &[], Some("r"), 4, &mut rng).unwrap();
        assert_eq!(c.0.name, "free");
        assert_eq!(
            choose(&agents, &[], Some("r"), 3, &mut rng).err(),
            Some(SelectError::Busy)
        );
    }
}
