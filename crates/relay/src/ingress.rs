//! The caller API: `ANY /v1/routes/{route}/{path…}` and
//! `POST /v1/secrets/resolve`.
//!
//! Authenticates the caller's API key (`Proxy-Authorization: Bearer`),
//! picks a connected agent of the key's account, and relays the request over
//! that agent's HTTP/2 session. Bodies stream both ways; nothing is buffered.

use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tether_wire::headers::{strip_hop_by_hop, strip_tether};
use tether_wire::protocol::{self, ResolveRequest, header as th};
use tether_wire::{BoxBody, BoxError, ErrorCode, Problem};

use crate::State;
use crate::auth::{AuthError, Identity};
use crate::credential::{self, Kind};
use crate::registry::SelectError;

/// One caller request's id, and its problem answers.
pub(crate) struct Call {
    pub(crate) request_id: String,
}

/// Marks an answer given without reaching any agent because no local
/// session matched (a peer tells the forwarding replica so).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unreached;

impl Call {
    pub(crate) fn new() -> Self {
        Self::with_id(None)
    }

    /// A call continuing one that a peer replica started (same id), or a
    /// new one.
    pub(crate) fn with_id(request_id: Option<String>) -> Self {
        Self {
            request_id: request_id
                .filter(|id| id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
                .unwrap_or_else(new_request_id),
        }
    }

    /// [`Call::fail`] for an answer that reached no agent.
    fn unreached(&self, code: ErrorCode, detail: &str) -> Response<BoxBody> {
        let mut response = self.fail(code, detail);
        response.extensions_mut().insert(Unreached);
        response
    }

    /// A problem carrying the request id.
    fn problem(&self, code: ErrorCode, detail: &str) -> Problem {
        Problem::new(code, detail).with_request_id(self.request_id.clone())
    }

    /// The response for `problem`, with the request id header too.
    fn respond(&self, problem: Problem) -> Response<BoxBody> {
        let mut response = problem.into_response();
        self.stamp(response.headers_mut());
        response
    }

    /// A problem response carrying the request id (body and header).
    pub(crate) fn fail(&self, code: ErrorCode, detail: &str) -> Response<BoxBody> {
        self.respond(self.problem(code, detail))
    }

    pub(crate) fn stamp(&self, headers: &mut http::HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            headers.insert(th::REQUEST_ID, v);
        }
    }

    /// Checks the caller's API key: `Proxy-Authorization: Bearer`, or for
    /// APIs that are not relayed anywhere (`allow_authorization`) also
    /// `Authorization: Bearer`.
    async fn authenticate(
        &self,
        state: &State,
        headers: &http::HeaderMap,
        remote: SocketAddr,
        allow_authorization: bool,
    ) -> Result<Identity, Problem> {
        let bearer = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(credential::bearer)
        };
        let key = bearer(header::PROXY_AUTHORIZATION).or_else(|| {
            allow_authorization
                .then(|| bearer(header::AUTHORIZATION))
                .flatten()
        });
        let Some(key) = key else {
            state.limiter.failed(remote.ip());
            return Err(self.problem(
                ErrorCode::Unauthorized,
                "API key required in Proxy-Authorization: Bearer",
            ));
        };
        match state.auth.verify(Kind::ApiKey, key).await {
            Ok(caller)
                if state
                    .callers
                    .as_ref()
                    .is_some_and(|c| !c.admit(&caller.credential_id)) =>
            {
                Err(self.problem(
                    ErrorCode::RateLimited,
                    "this API key is over its request rate ([limits] caller_rate)",
                ))
            }
            Ok(caller) => Ok(caller),
            Err(AuthError::Malformed | AuthError::Invalid) => {
                tracing::info!(%remote, "caller refused: invalid API key");
                if state.limiter.failed(remote.ip()) {
                    Err(self.problem(
                        ErrorCode::RateLimited,
                        "too many failed authentications from this address",
                    ))
                } else {
                    Err(self.problem(ErrorCode::Unauthorized, "invalid API key"))
                }
            }
            Err(AuthError::Store(e)) => {
                tracing::error!(error = %e, "key check failed: store unavailable");
                Err(self.problem(ErrorCode::Internal, "key store unavailable"))
            }
        }
    }

    /// Sends `request` to an agent of the caller's account: through a
    /// session of this relay if one matches, else — in cluster mode —
    /// through the peer replica holding one (see [`Call::dispatch_remote`]).
    async fn dispatch(
        &self,
        state: &State,
        selector: &[String],
        account: &str,
        route: Option<&str>,
        request: Request<BoxBody>,
        body_cap: Option<u64>,
    ) -> Response<BoxBody> {
        if let Some(cluster) = state.cluster.as_ref() {
            let local = state.registry.select(
                account,
                selector,
                route,
                &[],
                state.config.agents.max_streams,
            );
            if local.is_err() && cluster.select(account, selector, route, &[]).is_ok() {
                return self
                    .dispatch_remote(state, cluster, selector, account, route, request, body_cap)
                    .await;
            }
        }
        self.dispatch_local(state, selector, account, route, request, body_cap)
            .await
    }

    /// Forwards `request` to a peer replica holding a matching agent (one
    /// hop; the peer relays it through its session by the rules of
    /// [`Call::dispatch_local`]). A request that never reached a peer, or
    /// that the peer could not place on any session, goes to another peer
    /// if it is still whole; one that may have reached an agent is re-sent
    /// only when idempotent and bodiless, as in one process.
    #[allow(clippy::too_many_arguments)]
    async fn dispatch_remote(
        &self,
        state: &State,
        cluster: &crate::cluster::Cluster,
        selector: &[String],
        account: &str,
        route: Option<&str>,
        request: Request<BoxBody>,
        body_cap: Option<u64>,
    ) -> Response<BoxBody> {
        use crate::cluster::{PeerError, header as peer};
        let replay = Replay::of(&request);
        let mut tried = Vec::new();
        let mut request = request;
        loop {
            let target = match cluster.select(account, selector, route, &tried) {
                Ok(target) if tried.len() < MAX_ATTEMPTS => target,
                // No peer left: a local session may have arrived meanwhile;
                // if not, the local answer says why none serves.
                _ => {
                    return self
                        .dispatch_local(state, selector, account, route, request, body_cap)
                        .await;
                }
            };
            tried.push(target.replica.clone());
            match cluster
                .forward(&target, account, selector, route, request)
                .await
            {
                Ok((response, in_flight)) => {
                    let (mut parts, body) = response.into_parts();
                    let miss = parts.headers.remove(peer::MISS).is_some();
                    state
                        .metrics
                        .peer_forwarded(if miss { "miss" } else { "answered" });
                    if miss && parts.status == http::StatusCode::UNAUTHORIZED {
                        // Never the caller's fault: the replicas' keys differ.
                        tracing::error!(replica = %target.replica,
                            "peer replica refused this replica's peer key: [cluster] peer_key_file must hold the same key on every replica");
                        match replay.as_ref().map(Replay::request) {
                            Some(again) => {
                                request = again;
                                continue;
                            }
                            None => {
                                return self.fail(
                                    ErrorCode::Internal,
                                    "the relay could not reach the agent's replica",
                                );
                            }
                        }
                    }
                    if miss && let Some(again) = replay.as_ref().map(Replay::request) {
                        tracing::debug!(request_id = %self.request_id, replica = %target.replica,
                            "peer had no session any more; trying another");
                        request = again;
                        continue;
                    }
                    strip_hop_by_hop(&mut parts.headers);
                    let body = InFlightBody {
                        inner: body.map_err(BoxError::from).boxed(),
                        _in_flight: in_flight,
                    };
                    return Response::from_parts(parts, body.boxed());
                }
                Err(PeerError::Unsent(unsent)) => {
                    state.metrics.peer_forwarded("unsent");
                    request = *unsent;
                }
                Err(PeerError::Lost(e)) => match replay.as_ref().map(Replay::request) {
                    Some(again) => {
                        state.metrics.peer_forwarded("lost");
                        request = again;
                    }
                    None => {
                        state.metrics.peer_forwarded("lost");
                        tracing::info!(request_id = %self.request_id, replica = %target.replica,
                            error = %e, "request lost with its peer replica");
                        return self.fail(
                            ErrorCode::AgentLost,
                            "the agent session ended before the response",
                        );
                    }
                },
            }
        }
    }

    /// Chooses a session of the caller's account and sends `request` on
    /// it; returns the agent's response with `Tether-Agent` and
    /// `Tether-Request-Id`, its body counted in flight.
    ///
    /// A request that never reached an agent (the session was closing, or
    /// HTTP/2 gave the request back unsent) goes to another matching
    /// session, at most [`MAX_ATTEMPTS`] in all. A request that may have
    /// reached an agent (its stream was refused or lost with the session,
    /// as when a GOAWAY crosses it) is sent again only if it is idempotent
    /// — GET, HEAD or OPTIONS — with an empty body; anything else gets
    /// `502 agent_lost` and is never re-sent.
    pub(crate) async fn dispatch_local(
        &self,
        state: &State,
        selector: &[String],
        account: &str,
        route: Option<&str>,
        mut request: Request<BoxBody>,
        body_cap: Option<u64>,
    ) -> Response<BoxBody> {
        let mut tried = Vec::new();
        let replay = Replay::of(&request);
        let mut waited = false;
        while tried.len() < MAX_ATTEMPTS {
            let max_streams = state.config.agents.max_streams;
            let session = match state
                .registry
                .select(account, selector, route, &tried, max_streams)
            {
                Ok(session) => session,
                // Every session tried was closing (an agent draining to
                // reconnect or rotate): its replacement is usually a few
                // milliseconds from registering. Wait for it, once.
                Err(_) if !tried.is_empty() && !waited => {
                    waited = true;
                    wait_for_session(state, account, selector, route, &tried).await;
                    continue;
                }
                Err(_) if !tried.is_empty() => break,
                Err(SelectError::NoAgent) => {
                    return self.unreached(
                        ErrorCode::NoAgent,
                        "no agent connected for this account and selector",
                    );
                }
                Err(SelectError::Busy) => {
                    return self.fail(
                        ErrorCode::RateLimited,
                        &format!(
                            "every matching agent session has {max_streams} requests in flight ([agents] max_streams)"
                        ),
                    );
                }
                Err(SelectError::NoSuchRoute) if route == Some(protocol::FORWARD_AUTHORITY) => {
                    return self.unreached(
                        ErrorCode::NoSuchRoute,
                        "no connected agent serves forward mode ([forward] allow)",
                    );
                }
                Err(SelectError::NoSuchRoute) => {
                    return self.unreached(
                        ErrorCode::NoSuchRoute,
                        &format!("no connected agent serves route {:?}", route.unwrap_or("")),
                    );
                }
            };
            tried.push(session.id);
            let (mut sender, in_flight) = session.begin_request();
            if sender.ready().await.is_err() {
                continue;
            }
            let response = match sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        tracing::debug!(request_id = %self.request_id, session = session.id,
                            "request not sent (session closing); trying another session");
                        request = unsent;
                        continue;
                    }
                    None if caused_by_length_limit(e.error()) => {
                        return self.fail(
                            ErrorCode::PayloadTooLarge,
                            &format!("request body over {} bytes", body_cap.unwrap_or(0)),
                        );
                    }
                    None if replay.is_some() => {
                        tracing::debug!(request_id = %self.request_id, session = session.id,
                            error = %e.error(), "idempotent request lost with its session; re-sending");
                        request = replay.as_ref().map(Replay::request).unwrap_or_default();
                        continue;
                    }
                    None => {
                        tracing::info!(request_id = %self.request_id, agent = %session.info.name,
                            error = %e.error(), "request lost with its agent session");
                        return self.fail(
                            ErrorCode::AgentLost,
                            "the agent session ended before the response",
                        );
                    }
                },
            };
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            if let Ok(v) = HeaderValue::from_str(&session.info.name) {
                parts.headers.insert(th::AGENT, v);
            }
            self.stamp(&mut parts.headers);
            let body = InFlightBody {
                inner: body.map_err(BoxError::from).boxed(),
                _in_flight: in_flight,
            };
            return Response::from_parts(parts, body.boxed());
        }
        self.unreached(
            ErrorCode::AgentLost,
            "every matching agent session was closing",
        )
    }

    /// The headers the relay adds to everything it sends an agent.
    pub(crate) fn tag(&self, headers: &mut http::HeaderMap, caller: &Identity) {
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            headers.insert(th::REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&caller.credential_id) {
            headers.insert(th::CALLER_KEY_ID, v);
        }
    }
}

/// Handles a caller request under `/v1/routes/` (a named route) or
/// `/v1/forward/` (forward mode: `{scheme}/{host[:port]}/{path…}`, to an
/// agent that serves it, which decides whether the target is allowed).
pub(crate) async fn handle_route(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let call = Call::new();
    let caller = match call
        .authenticate(&state, req.headers(), remote, false)
        .await
    {
        Ok(caller) => caller,
        Err(problem) => return call.respond(problem),
    };
    // What the agent needs: a route it serves, or forward mode; and the
    // stream's authority and path.
    let path = req.uri().path();
    let (route, authority, forward_path) =
        if let Some(rest) = path.strip_prefix(protocol::FORWARD_PREFIX) {
            (
                protocol::FORWARD_AUTHORITY.to_owned(),
                protocol::FORWARD_AUTHORITY,
                Some(format!("/{rest}")),
            )
        } else {
            let Some((route, _)) = protocol::split_route_path(path) else {
                return call.fail(ErrorCode::NoSuchRoute, "expected /v1/routes/{route}/{path}");
            };
            (route.to_owned(), protocol::TUNNEL_AUTHORITY, None)
        };
    let selector = selector(req.headers());

    let cap = state.config.limits.max_body_bytes;
    if let Some(cap) = cap {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap) {
            return call.fail(
                ErrorCode::PayloadTooLarge,
                &format!("request body over {cap} bytes"),
            );
        }
    }

    let (mut parts, body) = req.into_parts();
    let path_and_query = match (&forward_path, parts.uri.query()) {
        (Some(p), Some(q)) => format!("{p}?{q}"),
        (Some(p), None) => p.clone(),
        (None, _) => parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
    };
    let Ok(uri) = Uri::try_from(format!("http://{authority}{path_and_query}")) else {
        return call.fail(ErrorCode::BadRequest, "unusable request target");
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers);
    strip_tether(&mut parts.headers);
    parts.headers.remove(header::HOST);
    call.tag(&mut parts.headers, &caller);
    let body: BoxBody = match cap {
        Some(cap) => Limited::new(body, usize::try_from(cap).unwrap_or(usize::MAX)).boxed(),
        None => body.map_err(BoxError::from).boxed(),
    };
    let response = call
        .dispatch(
            &state,
            &selector,
            &caller.account,
            Some(&route),
            Request::from_parts(parts, body),
            cap,
        )
        .await;
    tracing::debug!(request_id = %call.request_id, account = %caller.account, route,
        status = response.status().as_u16(), "relayed");
    response
}

/// Handles `POST /v1/secrets/resolve`: a pipeline asks an agent of its
/// account for exported secrets, sealed by the agent to an age recipient
/// the customer configured. The relay only ever sees ciphertext.
pub(crate) async fn handle_resolve(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let call = Call::new();
    let caller = match call.authenticate(&state, req.headers(), remote, true).await {
        Ok(caller) => caller,
        Err(problem) => return call.respond(problem),
    };
    if req.method() != http::Method::POST {
        return call.fail(ErrorCode::BadRequest, "use POST");
    }
    let selector = selector(req.headers());
    let body = match Limited::new(req.into_body(), RESOLVE_MAX_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return call.fail(ErrorCode::PayloadTooLarge, "resolve request over 64 KiB"),
    };
    let request: ResolveRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return call.fail(
                ErrorCode::BadRequest,
                &format!("expected {{\"names\": [...], \"recipient\": \"age1...\"}}: {e}"),
            );
        }
    };
    if request.recipient.is_none() {
        return call.fail(
            ErrorCode::BadRequest,
            "recipient is required: secrets are only released sealed to an age recipient",
        );
    }
    let uri = format!(
        "http://{}{}",
        protocol::CONTROL_AUTHORITY,
        protocol::CONTROL_RESOLVE_PATH
    );
    let mut control = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(tether_wire::full_body(body))
        .unwrap_or_default();
    call.tag(control.headers_mut(), &caller);
    let response = call
        .dispatch(&state, &selector, &caller.account, None, control, None)
        .await;
    tracing::info!(request_id = %call.request_id, account = %caller.account,
        caller_key_id = %caller.credential_id, names = ?request.names,
        status = response.status().as_u16(), "secret resolution");
    response
}

/// The head of an idempotent, bodiless request, kept so it can be sent
/// again on another session if its session dies under it.
struct Replay {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
}

impl Replay {
    fn of(request: &Request<BoxBody>) -> Option<Self> {
        use http::Method;
        let idempotent = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        (idempotent && request.body().is_end_stream()).then(|| Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        })
    }

    fn request(&self) -> Request<BoxBody> {
        let mut request = Request::new(tether_wire::empty_body());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        *request.version_mut() = http::Version::HTTP_2;
        request
    }
}

/// How long a request whose sessions were all closing waits for another.
const REPLACEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (bounded) until a matching session not in `tried` is registered.
async fn wait_for_session(
    state: &State,
    account: &str,
    selector: &[String],
    route: Option<&str>,
    tried: &[u64],
) {
    let deadline = tokio::time::Instant::now() + REPLACEMENT_WAIT;
    while tokio::time::Instant::now() < deadline {
        if state
            .registry
            .select(account, selector, route, tried, usize::MAX)
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The caller's `Tether-Selector` tags.
pub(crate) fn selector(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get(th::SELECTOR)
        .and_then(|v| v.to_str().ok())
        .map(protocol::parse_tags)
        .unwrap_or_default()
}

/// Sessions tried for one request before giving up.
const MAX_ATTEMPTS: usize = 3;

/// Largest resolve request accepted.
const RESOLVE_MAX_BYTES: usize = 64 * 1024;

fn caused_by_length_limit(e: &hyper::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// 128 random bits as hex: unique enough to grep logs on both sides.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A response body that keeps its request counted as in flight until the
/// body is finished or dropped, so agent selection sees real load.
struct InFlightBody<G> {
    inner: BoxBody,
    _in_flight: G,
}

impl<G: Unpin> Body for InFlightBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
