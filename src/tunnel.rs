//! The outbound sessions: dial the relay, upgrade to WebSocket, serve
//! HTTP/2 over it, reconnect with backoff. One task per `connections` slot.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, Uri, header};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tether_wire::WsIo;
use tether_wire::protocol::{self, header as th};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::config::{AgentConfig, TokenSource};
use crate::dispatch::{Dispatcher, SessionSignals};
use crate::secret::SecretString;

/// A session that lasted this long resets the backoff, so the first
/// attempt after it ends comes within `BACKOFF_BASE`.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// First reconnect ceiling. Small, so an agent is back within a second of
/// a relay restart; full jitter and doubling spread a crowd over the
/// outage's length (the cap is `[relay] backoff_max`).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// TCP connect + TLS + upgrade must finish within this.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the token file is read for changes.
const TOKEN_POLL: Duration = Duration::from_secs(1);

/// Byte stream under the WebSocket: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The token could not be read.
    #[error("reading the token from {0}: {1}")]
    Token(String, std::io::Error),
    /// TCP or DNS failure.
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    /// TLS failure (including certificate verification).
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    /// The relay answered the upgrade with an HTTP error.
    #[error("relay refused the session: HTTP {status}{hint}: {body}")]
    Refused {
        /// The status.
        status: u16,
        /// What it likely means.
        hint: &'static str,
        /// The problem document or body the relay sent (never holds a secret).
        body: String,
    },
    /// Anything else in the WebSocket handshake.
    #[error("WebSocket handshake: {0}")]
    Handshake(String),
    /// The whole attempt took too long.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

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

/// Why a slot opens a replacement session when the relay drains.
const DRAINING: &str = "relay replica draining";

/// Redials of one slot to land on a replica no other slot uses, before
/// it takes a shared one (there may be fewer replicas than sessions).
const SPREAD_REDIALS: u32 = 6;

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

impl Slot {
    /// Runs until `shutdown`: dial, serve, back off, again. When the token
    /// file changes, a session with the new token is opened *before* the
    /// old one is drained (GOAWAY, requests in flight finish), so a
    /// rotation fails no request.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF_BASE, self.config.relay.backoff_max);
        let slot = self.number;
        let mut opened = 0u64;
        let mut spread_redials = 0;
        'reconnect: while !shutdown.is_cancelled() {
            let dialled = tokio::select! {
                result = self.dial() => result,
                () = shutdown.cancelled() => break,
            };
            self.token_changes.borrow_and_update();
            match dialled {
                Ok((io, Some(replica)))
                    if spread_redials < SPREAD_REDIALS
                        && let Some(other) = self.replicas.taken(slot, &replica) =>
                {
                    drop(io);
                    spread_redials += 1;
                    tracing::debug!(slot, %replica, other_slot = other, attempt = spread_redials,
                        "session landed on a relay replica another slot uses; redialling to spread");
                    let delay = Duration::from_millis(
                        rand::random_range(50..=200) * u64::from(spread_redials),
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue 'reconnect,
                        () = shutdown.cancelled() => break,
                    }
                }
                Ok((io, replica)) => {
                    spread_redials = 0;
                    self.replicas.set(slot, replica.clone());
                    let mut live = self.spawn_session(io);
                    tracing::info!(slot, relay = %self.config.relay.url, replica = replica.as_deref().unwrap_or("-"), "session up");
                    opened += 1;
                    if opened > 1 {
                        self.dispatcher.borrow().audit_log().metrics().reconnected();
                    }
                    loop {
                        let relay_draining = live.signals.relay_draining.clone();
                        tokio::select! {
                            why = &mut live.done => {
                                self.replicas.set(slot, None);
                                let why = why.unwrap_or_else(|e| format!("session task failed: {e}"));
                                tracing::info!(slot, reason = %why, "session ended");
                                if live.started.elapsed() >= STABLE_AFTER {
                                    backoff.reset();
                                }
                                break;
                            }
                            () = shutdown.cancelled() => {
                                live.drain.cancel();
                                let _ = (&mut live.done).await;
                                break 'reconnect;
                            }
                            renewal = async {
                                tokio::select! {
                                    Ok(()) = self.token_changes.changed() => "new token or configuration",
                                    () = relay_draining.notified() => DRAINING,
                                }
                            } => {
                                tracing::info!(slot, reason = renewal, "opening a replacement session");
                                match self.dial().await {
                                    Ok((io, replica)) => {
                                        self.replicas.set(slot, replica.clone());
                                        let new = self.spawn_session(io);
                                        // Drain the old session only once the relay routes to
                                        // the new one, so no request finds none.
                                        if tokio::time::timeout(REGISTER_TIMEOUT, new.signals.registered.notified())
                                            .await
                                            .is_err()
                                        {
                                            tracing::warn!(slot, "the relay did not register the new session in time");
                                        }
                                        let old = std::mem::replace(&mut live, new);
                                        old.drain.cancel();
                                        self.tracker.spawn(old.done);
                                        tracing::info!(slot, replica = replica.as_deref().unwrap_or("-"),
                                            "new session in use; previous session draining");
                                    }
                                    // A lone relay shutting down has no other replica
                                    // to move to: expected, the session ends with it.
                                    Err(e) if renewal == DRAINING => tracing::info!(slot, error = %e,
                                        "no other relay replica reachable; this session ends when the relay has drained"),
                                    Err(e) => tracing::warn!(slot, error = %e, reason = renewal,
                                        "cannot open a replacement session; keeping the current one"),
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(slot, relay = %self.config.relay.url, error = %e, "cannot open session")
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            let delay = backoff.next_delay(&mut rand::rng());
            tracing::debug!(slot, ?delay, "reconnecting after delay");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Opens a session with the token in use; if the relay refuses it
    /// (401) and it may be a token the relay pushed, retries with the
    /// previous one (see [`crate::rotation`]).
    async fn dial(&self) -> Result<(WsIo<Box<dyn Io>>, Option<String>), DialError> {
        let token = read_token(&self.config.relay.token).await?;
        match dial_timed(&self.config, &self.tls, &token).await {
            Err(refused @ DialError::Refused { status: 401, .. }) => {
                self.dial_previous(&token, refused).await
            }
            Ok(session) => {
                if let TokenSource::File(path) = &self.config.relay.token {
                    crate::rotation::confirm(path, &token);
                }
                Ok(session)
            }
            other => other,
        }
    }

    /// With `accept_rotation`, the relay refusing the token in
    /// `token_file` may mean it pushed a wrong one: a session with
    /// `token_file.prev` is tried, and if the relay accepts it, it goes
    /// back into `token_file`. Otherwise the original refusal stands.
    async fn dial_previous(
        &self,
        refused: &SecretString,
        refusal: DialError,
    ) -> Result<(WsIo<Box<dyn Io>>, Option<String>), DialError> {
        let (true, TokenSource::File(path)) =
            (self.config.relay.accept_rotation, &self.config.relay.token)
        else {
            return Err(refusal);
        };
        let Some(previous) = crate::rotation::previous(path, refused).await else {
            return Err(refusal);
        };
        let slot = self.number;
        match dial_timed(&self.config, &self.tls, &previous).await {
            Ok(session) => {
                crate::rotation::confirm(path, &previous);
                match crate::rotation::restore(path, refused, &previous).await {
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

    fn spawn_session(&self, io: WsIo<Box<dyn Io>>) -> Live {
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
    io: WsIo<Box<dyn Io>>,
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

/// Opens one session (TCP, proxy, TLS, token check, upgrade) and closes
/// it: what `tether-agent check` reports on. It never falls back to
/// `token_file.prev` nor changes a file.
pub async fn probe(config: &AgentConfig, tls: &Arc<rustls::ClientConfig>) -> Result<(), DialError> {
    let token = read_token(&config.relay.token).await?;
    dial_timed(config, tls, &token).await.map(drop)
}

/// [`dial`] within [`DIAL_TIMEOUT`].
async fn dial_timed(
    config: &AgentConfig,
    tls: &Arc<rustls::ClientConfig>,
    token: &SecretString,
) -> Result<(WsIo<Box<dyn Io>>, Option<String>), DialError> {
    tokio::time::timeout(DIAL_TIMEOUT, dial(config, tls, token))
        .await
        .unwrap_or(Err(DialError::Timeout(DIAL_TIMEOUT)))
}

/// One attempt with `token`: TCP, TLS if `wss`, WebSocket upgrade with our
/// headers. The session, and the relay replica holding it (cluster mode).
async fn dial(
    config: &AgentConfig,
    tls: &Arc<rustls::ClientConfig>,
    token: &SecretString,
) -> Result<(WsIo<Box<dyn Io>>, Option<String>), DialError> {
    let url = &config.relay.url;
    let secure = url.scheme_str() == Some("wss");
    let host = url.host().unwrap_or_default().to_owned();
    let port = url.port_u16().unwrap_or(if secure { 443 } else { 80 });

    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = match &config.relay.proxy {
        Some(proxy) => crate::egress::connect(proxy, &bare_host, port)
            .await
            .map_err(|e| DialError::Connect(format!("{host}:{port} through proxy {proxy}"), e))?,
        None => TcpStream::connect((bare_host.as_str(), port))
            .await
            .map_err(|e| DialError::Connect(format!("{host}:{port}"), e))?,
    };
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if secure {
        let name = rustls_pki_types::ServerName::try_from(bare_host.clone())
            .map_err(|e| DialError::Tls(host.clone(), std::io::Error::other(e)))?;
        let tls = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| DialError::Tls(host.clone(), e))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };

    let request = handshake_request(url, token, config)?;
    let ws_config = tether_wire::ws_io::session_config();
    let (ws, response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config))
            .await
            .map_err(refusal)?;
    let agreed = response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if agreed != Some(protocol::SUBPROTOCOL_V1) {
        return Err(DialError::Handshake(format!(
            "relay agreed on protocol {agreed:?}, expected {}",
            protocol::SUBPROTOCOL_V1
        )));
    }
    let replica = response
        .headers()
        .get(protocol::header::REPLICA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((WsIo::new(ws), replica))
}

fn handshake_request(
    url: &Uri,
    token: &SecretString,
    config: &AgentConfig,
) -> Result<http::Request<()>, DialError> {
    let mut request = url
        .to_string()
        .into_client_request()
        .map_err(|e| DialError::Handshake(e.to_string()))?;
    let value = |s: &str| {
        HeaderValue::from_str(s).map_err(|_| DialError::Handshake("header value not usable".into()))
    };
    let h = request.headers_mut();
    let mut auth = value(&format!("Bearer {}", token.expose()))?;
    auth.set_sensitive(true);
    h.insert(header::AUTHORIZATION, auth);
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol::SUBPROTOCOL_V1),
    );
    h.insert(th::AGENT_NAME, value(&config.identity.name)?);
    h.insert(th::AGENT_INSTANCE, value(&config.identity.instance)?);
    h.insert(
        th::AGENT_VERSION,
        HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    if !config.identity.tags.is_empty() {
        h.insert(th::AGENT_TAGS, value(&config.identity.tags.join(","))?);
    }
    Ok(request)
}

fn refusal(e: tokio_tungstenite::tungstenite::Error) -> DialError {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(response) => {
            let status = response.status().as_u16();
            let hint = match status {
                401 => " (token invalid, revoked or expired)",
                426 => " (this agent is too old for the relay: its protocol or its version)",
                429 => " (rate limited)",
                _ => "",
            };
            // Relay-chosen text, bound for the log: no control characters.
            let body = response
                .body()
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(&b[..b.len().min(512)])
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect()
                })
                .unwrap_or_default();
            DialError::Refused { status, hint, body }
        }
        Error::Io(e) => DialError::Handshake(e.to_string()),
        other => DialError::Handshake(other.to_string()),
    }
}

async fn read_token(source: &TokenSource) -> Result<SecretString, DialError> {
    match source {
        TokenSource::Inline(token) => Ok(token.clone()),
        TokenSource::File(path) => tokio::fs::read_to_string(path)
            .await
            .map(|s| SecretString::from(s.trim().to_owned()))
            .map_err(|e| DialError::Token(path.display().to_string(), e)),
    }
}
