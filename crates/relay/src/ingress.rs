//! The caller API: `ANY /v1/routes/{route}/{path…}` and
//! `POST /v1/secrets/resolve`.
//!
//! Authenticates the caller's API key (`Proxy-Authorization: Bearer`),
//! picks a connected agent of the key's account, and relays the request over
//! that agent's HTTP/2 session. Bodies stream both ways; nothing is buffered.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tether_wire::headers::{strip_hop_by_hop, strip_tether};
use tether_wire::protocol::{self, ResolveRequest, header as th};
use tether_wire::{BoxBody, ErrorCode, Problem};

use crate::State;
use crate::auth::{AuthError, Identity};
use crate::credential::{self, Kind};
use crate::dispatch::Destination;
use crate::request_body::{BodyWatch, CallerBody};

/// One caller request's id, and its problem answers.
pub(crate) struct Call {
    pub(crate) request_id: String,
}

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

    /// A problem carrying the request id.
    fn problem(&self, code: ErrorCode, detail: &str) -> Problem {
        Problem::new(code, detail).with_request_id(self.request_id.clone())
    }

    /// The response for `problem`, with the request id header too.
    pub(crate) fn respond(&self, problem: Problem) -> Response<BoxBody> {
        // Every answer the relay makes itself is in its log, findable by
        // the id the caller got.
        tracing::info!(request_id = %self.request_id, status = problem.code.status().as_u16(),
            code = %problem.code, detail = %problem.detail, "answered by the relay");
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
    let (body, watch) = CallerBody::wrap(body, cap);
    let to = Destination {
        account: &caller.account,
        selector: &selector,
        route: Some(&route),
    };
    let response = call
        .dispatch(&state, &to, Request::from_parts(parts, body), &watch)
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
        .dispatch(
            &state,
            &Destination {
                account: &caller.account,
                selector: &selector,
                route: None,
            },
            control,
            &BodyWatch::default(),
        )
        .await;
    tracing::info!(request_id = %call.request_id, account = %caller.account,
        caller_key_id = %caller.credential_id, names = ?request.names,
        status = response.status().as_u16(), "secret resolution");
    response
}

/// The caller's `Tether-Selector` tags.
pub(crate) fn selector(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get(th::SELECTOR)
        .and_then(|v| v.to_str().ok())
        .map(protocol::parse_tags)
        .unwrap_or_default()
}

/// Largest resolve request accepted.
const RESOLVE_MAX_BYTES: usize = 64 * 1024;

/// 128 random bits as hex: unique enough to grep logs on both sides.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
