//! The outbound sessions: dial the relay, upgrade to WebSocket, serve
//! HTTP/2 over it, reconnect with backoff. One task per `connections` slot.
//!
//! [`Slot::run`] is the driver of [`crate::reconnect`]'s state machine: it
//! does what an [`Action`] says (dial, sleep, spawn or drain a session)
//! and reports what came of it as an [`Event`]; every decision is the
//! machine's. `dial` opens one session.

mod dial;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tether_wire::protocol;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::dial::{DialError, probe};
use self::dial::{Session, dial_timed, read_token};
use crate::config::{AgentConfig, TokenSource};
use crate::dispatch::{Dispatcher, SessionSignals};
use crate::reconnect::{Action, Dialled, Event, Reconnect, Renewal, Token, Wait};
use crate::secret::SecretString;

/// How often the token file is read for changes.
const TOKEN_POLL: Duration = Duration::from_secs(1);

/// Live session count, read by the admin readiness probe.
#[derive(Debug, Default)]
pub struct Sessions(AtomicUsize);

impl Sessions {
    /// Sessions currently up.
    pub fn up(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything a connection slot needs.
pub struct Slot {
    /// Slot number, for logs.
    pub number: u32,
    /// The configuration.
    pub config: Arc<AgentConfig>,
    /// TLS towards the relay.
    pub tls: Arc<rustls::ClientConfig>,
    /// Serves the relay's requests: the current one, replaced when the
    /// configuration is reloaded.
    pub dispatcher: watch::Receiver<Arc<Dispatcher>>,
    /// Live session count.
    pub sessions: Arc<Sessions>,
    /// Bumped when the token file changes or the configuration is
    /// reloaded: the slot opens a new session, then drains the old one.
    pub token_changes: watch::Receiver<u64>,
    /// Where draining old sessions run, so shutdown waits for them.
    pub tracker: TaskTracker,
    /// Which relay replica each slot's session is on (cluster mode).
    pub replicas: Arc<Replicas>,
}

/// The relay replica (cluster mode: the handshake's `Tether-Replica`)
/// holding each slot's session, shared by an agent's slots so that they
/// spread over replicas: a session landing on a replica another slot
/// already uses is redialled, a few times, so that one replica restarting
/// never takes all of an agent's sessions.
#[derive(Debug, Default)]
pub struct Replicas(std::sync::Mutex<HashMap<u32, String>>);

impl Replicas {
    /// The slot other than `slot` already on `replica`, if any.
    fn taken(&self, slot: u32, replica: &str) -> Option<u32> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .find(|(s, r)| **s != slot && r.as_str() == replica)
            .map(|(s, _)| *s)
    }

    fn set(&self, slot: u32, replica: Option<String>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match replica {
            Some(r) => map.insert(slot, r),
            None => map.remove(&slot),
        };
    }
}

/// A session being served: its task, and the token that drains it.
struct Live {
    drain: CancellationToken,
    done: tokio::task::JoinHandle<String>,
    started: Instant,
    /// What the session's control requests said (registered by the relay,
    /// relay draining).
    signals: SessionSignals,
}

/// How long a replacement session may take to be registered by the relay
/// before the old one is drained anyway.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the attempt under way has produced so far.
#[derive(Default)]
struct Attempt {
    /// The session it opened and the replica holding it, until served or
    /// dropped.
    opened: Option<(Session, Option<String>)>,
    /// The current token, once the relay refused it (401): what the
    /// previous-token attempt restores over.
    refused: Option<(SecretString, DialError)>,
    /// Why the last attempt failed, for the log.
    error: Option<DialError>,
}

impl Slot {
    /// Runs until `shutdown`: dial, serve, back off, again, as
    /// [`Reconnect`] decides. When the token file changes, a session with
    /// the new token is opened *before* the old one is drained (GOAWAY,
    /// requests in flight finish), so a rotation fails no request.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let slot = self.number;
        let fallback = self.config.relay.accept_rotation
            && matches!(self.config.relay.token, TokenSource::File(_));
        let (mut machine, mut action) = Reconnect::new(self.config.relay.backoff_max, fallback);
        let mut attempt = Attempt::default();
        let mut live: Option<Live> = None;
        loop {
            let event = match action {
                Action::Dial(token) => {
                    let event = tokio::select! {
                        event = self.attempt(token, &mut attempt) => event,
                        () = shutdown.cancelled() => Event::Shutdown,
                    };
                    // A change seen while dialling is in this attempt already.
                    self.token_changes.borrow_and_update();
                    event
                }
                Action::Wait(why, delay) => {
                    attempt.opened = None;
                    match (why, attempt.error.take()) {
                        (Wait::Backoff, Some(e)) => {
                            tracing::warn!(slot, relay = %self.config.relay.url,
                            error = %e, "cannot open session")
                        }
                        (Wait::Backoff, None) => {}
                        (Wait::Spread, _) => tracing::debug!(
                            slot,
                            "session landed on a relay replica another slot uses; redialling to spread"
                        ),
                    }
                    tracing::debug!(slot, ?delay, "reconnecting after delay");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => Event::Waited,
                        () = shutdown.cancelled() => Event::Shutdown,
                    }
                }
                Action::Serve { reconnected } => {
                    if let Some((io, replica)) = attempt.opened.take() {
                        self.replicas.set(slot, replica.clone());
                        live = Some(self.spawn_session(io));
                        tracing::info!(slot, relay = %self.config.relay.url,
                            replica = replica.as_deref().unwrap_or("-"), "session up");
                        if reconnected {
                            self.dispatcher.borrow().audit_log().metrics().reconnected();
                        }
                    }
                    self.watch(&mut live, &shutdown).await
                }
                Action::Replace => {
                    if let Some((io, replica)) = attempt.opened.take() {
                        self.replace(&mut live, io, replica).await;
                    }
                    self.watch(&mut live, &shutdown).await
                }
                Action::Keep(why) => {
                    let error = attempt
                        .error
                        .take()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    match why {
                        // A lone relay shutting down has no other replica
                        // to move to: expected, the session ends with it.
                        Renewal::RelayDraining => tracing::info!(
                            slot,
                            error,
                            "no other relay replica reachable; this session ends when the relay has drained"
                        ),
                        Renewal::NewToken => tracing::warn!(slot, error, reason = %why,
                            "cannot open a replacement session; keeping the current one"),
                    }
                    self.watch(&mut live, &shutdown).await
                }
                Action::Continue => self.watch(&mut live, &shutdown).await,
                Action::Stop => {
                    if let Some(mut live) = live.take() {
                        live.drain.cancel();
                        let _ = (&mut live.done).await;
                    }
                    return;
                }
            };
            action = machine.handle(event, &mut rand::rng());
        }
    }

    /// Waits for what happens to the session being served: it ends, a
    /// replacement is wanted, or shutdown.
    async fn watch(&mut self, live: &mut Option<Live>, shutdown: &CancellationToken) -> Event {
        let Some(session) = live.as_mut() else {
            tracing::error!(slot = self.number, "no session to serve; slot stopped");
            return Event::Shutdown;
        };
        let relay_draining = session.signals.relay_draining.clone();
        tokio::select! {
            why = &mut session.done => {
                self.replicas.set(self.number, None);
                let why = why.unwrap_or_else(|e| format!("session task failed: {e}"));
                tracing::info!(slot = self.number, reason = %why, "session ended");
                let lasted = session.started.elapsed();
                *live = None;
                Event::SessionEnded { lasted }
            }
            () = shutdown.cancelled() => Event::Shutdown,
            renewal = async {
                tokio::select! {
                    Ok(()) = self.token_changes.changed() => Renewal::NewToken,
                    () = relay_draining.notified() => Renewal::RelayDraining,
                }
            } => {
                tracing::info!(slot = self.number, reason = %renewal, "opening a replacement session");
                Event::Renew(renewal)
            }
        }
    }

    /// Serves `io` and drains the session served so far, once the relay
    /// routes to the new one (so no request finds none).
    async fn replace(&self, live: &mut Option<Live>, io: Session, replica: Option<String>) {
        self.replicas.set(self.number, replica.clone());
        let new = self.spawn_session(io);
        if tokio::time::timeout(REGISTER_TIMEOUT, new.signals.registered.notified())
            .await
            .is_err()
        {
            tracing::warn!(
                slot = self.number,
                "the relay did not register the new session in time"
            );
        }
        if let Some(old) = live.replace(new) {
            old.drain.cancel();
            self.tracker.spawn(old.done);
        }
        tracing::info!(
            slot = self.number,
            replica = replica.as_deref().unwrap_or("-"),
            "new session in use; previous session draining"
        );
    }

    /// One dial with `token`; what it opened or why it failed goes in
    /// `attempt`. The current token is confirmed when accepted
    /// ([`crate::rotation::confirm`]); the previous one, when accepted
    /// after the current one was refused, goes back into `token_file`.
    async fn attempt(&self, token: Token, attempt: &mut Attempt) -> Event {
        let slot = self.number;
        let result = match token {
            Token::Current => self.dial_current(attempt).await,
            Token::Previous => self.dial_previous(attempt).await,
        };
        match result {
            Ok((io, replica)) => {
                let replica_shared = replica
                    .as_deref()
                    .and_then(|r| self.replicas.taken(slot, r));
                if let (Some(other), Some(replica)) = (replica_shared, replica.as_deref()) {
                    tracing::debug!(slot, %replica, other_slot = other, "replica already used by another slot");
                }
                attempt.opened = Some((io, replica));
                attempt.refused = None;
                Event::Dialled(
                    token,
                    Dialled::Up {
                        replica_shared: replica_shared.is_some(),
                    },
                )
            }
            Err(e) => {
                let outcome = match &e {
                    DialError::Refused { status, .. } => Dialled::Refused(*status),
                    _ => Dialled::Failed,
                };
                attempt.error = Some(e);
                Event::Dialled(token, outcome)
            }
        }
    }

    async fn dial_current(
        &self,
        attempt: &mut Attempt,
    ) -> Result<(Session, Option<String>), DialError> {
        let token = read_token(&self.config.relay.token).await?;
        match dial_timed(&self.config, &self.tls, &token).await {
            Ok(session) => {
                if let TokenSource::File(path) = &self.config.relay.token {
                    crate::rotation::confirm(path, &token);
                }
                Ok(session)
            }
            Err(DialError::Refused {
                status: 401,
                hint,
                body,
            }) => {
                // Kept for a previous-token attempt, should one follow.
                let keep = DialError::Refused {
                    status: 401,
                    hint,
                    body: body.clone(),
                };
                attempt.refused = Some((token, keep));
                Err(DialError::Refused {
                    status: 401,
                    hint,
                    body,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// With `accept_rotation`, the relay refusing the token in
    /// `token_file` may mean it pushed a wrong one: a session with
    /// `token_file.prev` is tried, and if the relay accepts it, it goes
    /// back into `token_file`. Otherwise the original refusal stands.
    async fn dial_previous(
        &self,
        attempt: &mut Attempt,
    ) -> Result<(Session, Option<String>), DialError> {
        let slot = self.number;
        let (TokenSource::File(path), Some((refused, refusal))) =
            (&self.config.relay.token, attempt.refused.take())
        else {
            return Err(DialError::Handshake(
                "no refused token to fall back from".into(),
            ));
        };
        let Some(previous) = crate::rotation::previous(path, &refused).await else {
            return Err(refusal);
        };
        match dial_timed(&self.config, &self.tls, &previous).await {
            Ok(session) => {
                crate::rotation::confirm(path, &previous);
                match crate::rotation::restore(path, &refused, &previous).await {
                    Ok(true) => {
                        let metrics = self.dispatcher.borrow().audit_log().metrics().clone();
                        metrics.token_rotation(crate::metrics::RotationOutcome::RestoredPrevious);
                        tracing::error!(slot, file = %path.display(),
                            "the relay refused the token in token_file (HTTP 401) but accepted the previous one: \
                             it is back in token_file, the refused one is kept in token_file.refused");
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(slot, error = %e,
                        "the previous token works but could not be written back to token_file"),
                }
                Ok(session)
            }
            Err(e) => {
                tracing::warn!(slot, error = %e, "the previous token (token_file.prev) was refused too");
                Err(refusal)
            }
        }
    }

    fn spawn_session(&self, io: Session) -> Live {
        let drain = CancellationToken::new();
        let config = self.config.clone();
        let dispatcher = self.dispatcher.clone();
        let sessions = self.sessions.clone();
        let token = drain.clone();
        let signals = SessionSignals::default();
        let session = signals.clone();
        let done = tokio::spawn(async move {
            sessions.0.fetch_add(1, Ordering::Relaxed);
            let why = serve_session(io, &config, dispatcher, &token, session).await;
            sessions.0.fetch_sub(1, Ordering::Relaxed);
            why
        });
        Live {
            drain,
            done,
            started: Instant::now(),
            signals,
        }
    }
}

/// Watches the token file: publishes a new generation on `changes` when
/// its content (trimmed) changes. Re-reading the path every second also
/// follows Kubernetes Secret volumes, which swap a symlink rather than
/// writing the file.
pub async fn watch_token(
    source: TokenSource,
    changes: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let TokenSource::File(path) = &source else {
        // Nothing to watch; hold the sender so slots never see it closed.
        shutdown.cancelled().await;
        return;
    };
    let mut last = read_token(&source).await.ok();
    let mut tick = tokio::time::interval(TOKEN_POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Ok(current) = read_token(&source).await else {
            continue;
        };
        if current.expose().is_empty() || last.as_ref() == Some(&current) {
            continue;
        }
        if last.is_some() {
            tracing::info!(file = %path.display(), "token file changed: opening sessions with the new token");
            changes.send_modify(|generation| *generation += 1);
        }
        last = Some(current);
    }
}

/// Serves HTTP/2 over an established WebSocket until it ends; on shutdown
/// sends GOAWAY and lets streams in flight finish (bounded).
async fn serve_session(
    io: Session,
    config: &AgentConfig,
    dispatcher: watch::Receiver<Arc<Dispatcher>>,
    drain: &CancellationToken,
    signals: SessionSignals,
) -> String {
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let dispatcher = dispatcher.borrow().clone();
        let signals = signals.clone();
        async move { Ok::<_, std::convert::Infallible>(dispatcher.handle(req, &signals).await) }
    });
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(config.relay.ping_interval)
        .keep_alive_timeout(config.relay.ping_timeout)
        // Per-stream windows: a stalled reader stalls only its stream.
        .initial_stream_window_size(protocol::SESSION_STREAM_WINDOW)
        .initial_connection_window_size(protocol::SESSION_CONNECTION_WINDOW)
        .max_frame_size(protocol::SESSION_MAX_FRAME)
        .max_concurrent_streams(protocol::SESSION_MAX_STREAMS)
        // Upgrades (WebSocket, SPDY) arrive as extended CONNECT (RFC 8441).
        .enable_connect_protocol()
        // The relay's request heads are bounded the same way as the
        // answers the agent sends back (tether_wire::protocol).
        .max_header_list_size(protocol::MAX_HEADER_LIST_SIZE)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = drain.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(config.drain_timeout, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => return "drain timeout: closed with requests in flight".into(),
            }
        }
    };
    match result {
        Ok(()) => "closed".into(),
        Err(e) => format!("error: {e}"),
    }
}
