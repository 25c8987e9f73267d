//! Sending a caller's request to an agent: through a session of this
//! relay, or — in cluster mode — through the peer replica holding one.
//!
//! What comes back from an agent is the agent's (or its upstream's) to
//! say, never the relay's: every `Tether-*` field of a relayed response
//! head and trailer section is removed before the relay adds its own
//! (`Tether-Agent`, `Tether-Request-Id`), so nothing an upstream sends can
//! pass for a relay's signal — neither to a caller nor to a peer replica
//! (see [`crate::cluster::PeerOutcome`]).

use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tether_wire::body::{FilteredTrailers, GuardedBody};
use tether_wire::headers::{header_list_size, strip_hop_by_hop, strip_tether};
use tether_wire::protocol::{self, header as th};
use tether_wire::{BoxBody, ErrorCode};

use crate::State;
use crate::call::{Call, Destination};
use crate::cluster::{Cluster, PeerError, PeerOutcome};
use crate::registry::SelectError;
use crate::replay::{Loss, Replay, Verdict};
use crate::request_body::{BodyFault, BodyWatch};

/// Sessions (or peers) tried for one request before giving up.
const MAX_ATTEMPTS: usize = 3;

/// How long a request whose sessions were all closing waits for another.
const REPLACEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What became of a request this relay tried to place on its sessions.
pub(crate) enum Dispatched {
    /// An agent's answer, or the relay's answer about a request that may
    /// have reached one.
    Reached(Response<BoxBody>),
    /// No session of this relay took the request: it reached no agent.
    /// The response says why (no agent, no such route, all closing).
    NoAgentHere(Response<BoxBody>),
}

impl Dispatched {
    /// The response, whichever it is.
    pub(crate) fn into_response(self) -> Response<BoxBody> {
        match self {
            Self::Reached(response) | Self::NoAgentHere(response) => response,
        }
    }
}

impl Call {
    /// Sends `request` to an agent: through a session of this relay if
    /// one matches, else — in cluster mode — through the peer replica
    /// holding one (see [`Call::dispatch_remote`]). `body` watches the
    /// caller's body (a default watch for bodies the relay made).
    pub(crate) async fn dispatch(
        &self,
        state: &State,
        to: &Destination<'_>,
        request: Request<BoxBody>,
        body: &BodyWatch,
    ) -> Response<BoxBody> {
        // An agent refuses a head over the session's limit, and a head far
        // over it ends the session; peers carry the selector besides.
        let selector: usize = to.selector.iter().map(|t| t.len() + 1).sum();
        if head_size(&request) + selector > protocol::MAX_HEADER_LIST_SIZE as usize {
            return self.fail(
                ErrorCode::HeadersTooLarge,
                &format!(
                    "request head over {} bytes (HTTP/2 header list size)",
                    protocol::MAX_HEADER_LIST_SIZE
                ),
            );
        }
        if let Some(cluster) = state.cluster.as_ref() {
            let max_streams = state.config.agents.max_streams;
            let local = state
                .registry
                .select(to.account, to.selector, to.route, &[], max_streams);
            if local.is_err() && cluster.select(to, &[]).is_ok() {
                return self
                    .dispatch_remote(state, cluster, to, request, body)
                    .await;
            }
        }
        self.dispatch_local(state, to, request, body)
            .await
            .into_response()
    }

    /// Forwards `request` to a peer replica holding a matching agent (one
    /// hop; the peer relays it through its session by the rules of
    /// [`Call::dispatch_local`]). A request that never reached a peer, or
    /// that the peer could not place on any session, goes to another peer
    /// if it is still whole; one that may have reached an agent is re-sent
    /// only when idempotent and bodiless, as in one process.
    async fn dispatch_remote(
        &self,
        state: &State,
        cluster: &Cluster,
        to: &Destination<'_>,
        request: Request<BoxBody>,
        body: &BodyWatch,
    ) -> Response<BoxBody> {
        let replay = Replay::of(&request);
        let mut tried = Vec::new();
        let mut request = request;
        loop {
            let target = match cluster.select(to, &tried) {
                Ok(target) if tried.len() < MAX_ATTEMPTS => target,
                // No peer left: a local session may have arrived meanwhile;
                // if not, the local answer says why none serves.
                _ => {
                    return self
                        .dispatch_local(state, to, request, body)
                        .await
                        .into_response();
                }
            };
            tried.push(target.replica.clone());
            let again = || replay.as_ref().map(Replay::request);
            match cluster.forward(&target, to, request).await {
                Ok((PeerOutcome::Answered(response), in_flight)) => {
                    state.metrics.peer_forwarded("answered");
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = GuardedBody::new(FilteredTrailers::new(body), in_flight);
                    return Response::from_parts(parts, body.boxed());
                }
                Ok((PeerOutcome::NoAgentHere(response), _)) => {
                    state.metrics.peer_forwarded("miss");
                    let Some(again) = again() else {
                        // Its body went to the peer: the peer's answer says why.
                        let (mut parts, body) = response.into_parts();
                        strip_hop_by_hop(&mut parts.headers);
                        return Response::from_parts(parts, FilteredTrailers::new(body).boxed());
                    };
                    tracing::debug!(request_id = %self.request_id, replica = %target.replica,
                        "peer had no session any more; trying another");
                    request = again;
                }
                Ok((PeerOutcome::Refused, _)) => {
                    state.metrics.peer_forwarded("miss");
                    // Never the caller's fault: the replicas' keys differ.
                    tracing::error!(replica = %target.replica,
                        "peer replica refused this replica's peer key: [cluster] peer_key_file must hold the same key on every replica");
                    let Some(again) = again() else {
                        return self.fail(
                            ErrorCode::Internal,
                            "the relay could not reach the agent's replica",
                        );
                    };
                    request = again;
                }
                Err(PeerError::Unsent(unsent)) => {
                    state.metrics.peer_forwarded("unsent");
                    request = *unsent;
                }
                Err(PeerError::Lost(e)) => {
                    state.metrics.peer_forwarded("lost");
                    match Loss::of(&e, body).verdict(replay.as_ref()) {
                        Verdict::Answer(fault) => return self.body_failed(fault),
                        Verdict::Resend(again) => request = again.request(),
                        Verdict::Lost(loss) => {
                            tracing::info!(request_id = %self.request_id, replica = %target.replica,
                                error = %e, ?loss, "request lost with its peer replica; not re-sent");
                            return self.fail(
                                ErrorCode::AgentLost,
                                "the agent session ended before the response",
                            );
                        }
                    }
                }
            }
        }
    }

    /// Chooses a session of this relay for `request` and sends it there;
    /// returns the agent's response with `Tether-Agent` and
    /// `Tether-Request-Id` (and no other `Tether-*` field), its body
    /// counted in flight.
    ///
    /// A request that never reached an agent (the session was closing, or
    /// HTTP/2 gave the request back unsent) goes to another matching
    /// session, at most [`MAX_ATTEMPTS`] in all. A request that may have
    /// reached an agent is sent again only as [`Loss`] and [`Replay`]
    /// allow; anything else gets `502 agent_lost`.
    pub(crate) async fn dispatch_local(
        &self,
        state: &State,
        to: &Destination<'_>,
        mut request: Request<BoxBody>,
        body: &BodyWatch,
    ) -> Dispatched {
        let mut tried = Vec::new();
        let replay = Replay::of(&request);
        let mut waited = false;
        let max_streams = state.config.agents.max_streams;
        while tried.len() < MAX_ATTEMPTS {
            let session =
                match state
                    .registry
                    .select(to.account, to.selector, to.route, &tried, max_streams)
                {
                    Ok(session) => session,
                    // Every session tried was closing (an agent draining to
                    // reconnect or rotate): its replacement is usually a few
                    // milliseconds from registering. Wait for it, once.
                    Err(_) if !tried.is_empty() && !waited => {
                        waited = true;
                        wait_for_session(state, to, &tried).await;
                        continue;
                    }
                    Err(_) if !tried.is_empty() => break,
                    Err(e) => return self.not_placed(e, to.route, max_streams),
                };
            tried.push(session.id);
            let (mut sender, in_flight) = session.begin_request();
            if sender.ready().await.is_err() {
                continue;
            }
            let response = match sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut e) => {
                    if let Some(unsent) = e.take_message() {
                        tracing::debug!(request_id = %self.request_id, session = session.id,
                            "request not sent (session closing); trying another session");
                        request = unsent;
                        continue;
                    }
                    match Loss::of(e.error(), body).verdict(replay.as_ref()) {
                        Verdict::Answer(fault) => {
                            return Dispatched::Reached(self.body_failed(fault));
                        }
                        Verdict::Resend(again) => {
                            tracing::debug!(request_id = %self.request_id, session = session.id,
                                error = %e.error(), "idempotent request lost with its session; re-sending");
                            request = again.request();
                            continue;
                        }
                        Verdict::Lost(Loss::Refused(why)) => {
                            tracing::warn!(request_id = %self.request_id, agent = %session.info.name,
                                session = session.id, error = %why,
                                "the agent sent what HTTP/2 refuses (e.g. a header block over the session's limit); request not re-sent");
                        }
                        Verdict::Lost(_) => {
                            tracing::info!(request_id = %self.request_id, agent = %session.info.name,
                                error = %e.error(), "request lost with its agent session");
                        }
                    }
                    return Dispatched::Reached(self.fail(
                        ErrorCode::AgentLost,
                        "the agent session ended before the response",
                    ));
                }
            };
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // Nothing an agent relays speaks for the relay.
            strip_tether(&mut parts.headers);
            if let Ok(v) = HeaderValue::from_str(&session.info.name) {
                parts.headers.insert(th::AGENT, v);
            }
            self.stamp(&mut parts.headers);
            let body = GuardedBody::new(FilteredTrailers::new(body), in_flight);
            return Dispatched::Reached(Response::from_parts(parts, body.boxed()));
        }
        Dispatched::NoAgentHere(self.fail(
            ErrorCode::AgentLost,
            "every matching agent session was closing",
        ))
    }

    /// The answer when no session could be chosen at all.
    fn not_placed(&self, e: SelectError, route: Option<&str>, max_streams: usize) -> Dispatched {
        match e {
            SelectError::NoAgent => Dispatched::NoAgentHere(self.fail(
                ErrorCode::NoAgent,
                "no agent connected for this account and selector",
            )),
            SelectError::Busy => Dispatched::Reached(self.fail(
                ErrorCode::RateLimited,
                &format!(
                    "every matching agent session has {max_streams} requests in flight ([agents] max_streams)"
                ),
            )),
            SelectError::NoSuchRoute if route == Some(protocol::FORWARD_AUTHORITY) => {
                Dispatched::NoAgentHere(self.fail(
                    ErrorCode::NoSuchRoute,
                    "no connected agent serves forward mode ([forward] allow)",
                ))
            }
            SelectError::NoSuchRoute => Dispatched::NoAgentHere(self.fail(
                ErrorCode::NoSuchRoute,
                &format!("no connected agent serves route {:?}", route.unwrap_or("")),
            )),
        }
    }

    /// The answer to a request whose body failed, with the reason logged.
    fn body_failed(&self, fault: BodyFault) -> Response<BoxBody> {
        match fault {
            BodyFault::TooLarge(cap) => {
                tracing::info!(request_id = %self.request_id, cap,
                    "request body over [limits] max_body_bytes; refused with 413");
                self.fail(
                    ErrorCode::PayloadTooLarge,
                    &format!("request body over {cap} bytes"),
                )
            }
            BodyFault::Unreadable(error) => {
                tracing::info!(request_id = %self.request_id, %error,
                    "request body unreadable (malformed chunked encoding, or the caller stopped); refused with 400");
                self.fail(
                    ErrorCode::BadRequest,
                    "the request body could not be read (malformed chunked encoding?)",
                )
            }
        }
    }
}

/// A request head's size as HTTP/2 counts it, pseudo-header fields
/// included (RFC 9113 §6.5.2).
fn head_size(request: &Request<BoxBody>) -> usize {
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (
            ":authority",
            uri.authority().map_or(0, |a| a.as_str().len()),
        ),
        (
            ":path",
            uri.path_and_query().map_or(1, |pq| pq.as_str().len()),
        ),
    ];
    let pseudo: usize = pseudo.iter().map(|(name, len)| name.len() + len + 32).sum();
    pseudo + header_list_size(request.headers())
}

/// Waits (bounded) until a matching session not in `tried` is registered.
async fn wait_for_session(state: &State, to: &Destination<'_>, tried: &[u64]) {
    // Subscribed before the check: a session arriving in between is seen.
    let mut arrivals = state.registry.arrivals();
    let arrived = async {
        loop {
            let found = state
                .registry
                .select(to.account, to.selector, to.route, tried, usize::MAX)
                .is_ok();
            if found || arrivals.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(REPLACEMENT_WAIT, arrived).await;
}
