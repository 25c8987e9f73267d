//! The caller API: `ANY /v1/routes/{route}/{path…}`.
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
use tether_wire::protocol::{self, header as th};
use tether_wire::{BoxBody, BoxError, ErrorCode, Problem};

use crate::State;
use crate::auth::AuthError;
use crate::credential::{self, Kind};
use crate::registry::{InFlight, SelectError};

/// Handles a caller request under `/v1/routes/`.
pub(crate) async fn handle_route(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let request_id = new_request_id();
    let fail = |code: ErrorCode, detail: &str| {
        let mut response = Problem::new(code, detail)
            .with_request_id(request_id.clone())
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(th::REQUEST_ID, v);
        }
        response
    };

    let key = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(credential::bearer);
    let Some(key) = key else {
        return fail(
            ErrorCode::Unauthorized,
            "API key required in Proxy-Authorization: Bearer",
        );
    };
    let caller = match state.auth.verify(Kind::ApiKey, key).await {
        Ok(caller) => caller,
        Err(AuthError::Malformed | AuthError::Invalid) => {
            tracing::info!(%remote, "caller refused: invalid API key");
            return fail(ErrorCode::Unauthorized, "invalid API key");
        }
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "key check failed: store unavailable");
            return fail(ErrorCode::Internal, "key store unavailable");
        }
    };

    let Some((route, _)) = protocol::split_route_path(req.uri().path()) else {
        return fail(ErrorCode::NoSuchRoute, "expected /v1/routes/{route}/{path}");
    };
    let route = route.to_owned();
    let selector = req
        .headers()
        .get(th::SELECTOR)
        .and_then(|v| v.to_str().ok())
        .map(protocol::parse_tags)
        .unwrap_or_default();
    let session = match state
        .registry
        .select(&caller.account, &selector, Some(&route))
    {
        Ok(session) => session,
        Err(SelectError::NoAgent) => {
            return fail(
                ErrorCode::NoAgent,
                "no agent connected for this account and selector",
            );
        }
        Err(SelectError::NoSuchRoute) => {
            return fail(
                ErrorCode::NoSuchRoute,
                &format!("no connected agent serves route {route:?}"),
            );
        }
    };

    let cap = state.config.limits.max_body_bytes;
    if let Some(cap) = cap {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > cap) {
            return fail(
                ErrorCode::PayloadTooLarge,
                &format!("request body over {cap} bytes"),
            );
        }
    }

    let (mut parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let Ok(uri) = Uri::try_from(format!(
        "http://{}{path_and_query}",
        protocol::TUNNEL_AUTHORITY
    )) else {
        return fail(ErrorCode::BadRequest, "unusable request target");
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers);
    strip_tether(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        parts.headers.insert(th::REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&caller.credential_id) {
        parts.headers.insert(th::CALLER_KEY_ID, v);
    }
    let body: BoxBody = match cap {
        Some(cap) => Limited::new(body, usize::try_from(cap).unwrap_or(usize::MAX)).boxed(),
        None => body.map_err(BoxError::from).boxed(),
    };

    let (mut sender, in_flight) = session.begin_request();
    if sender.ready().await.is_err() {
        return fail(ErrorCode::AgentLost, "agent session closed");
    }
    let response = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(e) if caused_by_length_limit(&e) => {
            return fail(
                ErrorCode::PayloadTooLarge,
                &format!("request body over {} bytes", cap.unwrap_or(0)),
            );
        }
        Err(e) => {
            tracing::info!(request_id = %request_id, agent = %session.info.name, error = %e,
                "request lost with its agent session");
            return fail(
                ErrorCode::AgentLost,
                "the agent session ended before the response",
            );
        }
    };
    tracing::debug!(request_id = %request_id, account = %caller.account, route,
        agent = %session.info.name, status = response.status().as_u16(), "relayed");

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(v) = HeaderValue::from_str(&session.info.name) {
        parts.headers.insert(th::AGENT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        parts.headers.insert(th::REQUEST_ID, v);
    }
    let body = InFlightBody {
        inner: body.map_err(BoxError::from).boxed(),
        _in_flight: in_flight,
    };
    Response::from_parts(parts, body.boxed())
}

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
struct InFlightBody {
    inner: BoxBody,
    _in_flight: InFlight,
}

impl Body for InFlightBody {
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
