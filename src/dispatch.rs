//! What the agent does with each HTTP/2 stream the relay opens.
//!
//! Control requests (reserved authority) are answered here. Relayed
//! requests go through: route lookup → policy (method, normalised path) →
//! header hygiene → route headers → upstream call with a deadline on the
//! response head → response streamed back. Every relayed request leaves one
//! audit line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tether_wire::headers::{strip_hop_by_hop, strip_tether};
use tether_wire::protocol::{self, AgentInfo, header as th};
use tether_wire::{BoxBody, BoxError, ErrorCode, Problem, full_body};

use crate::config::{AgentConfig, Route};
use crate::upstream::{Clients, TlsConfigError, UpstreamClient};

/// A route ready to serve.
struct LiveRoute {
    route: Route,
    client: UpstreamClient,
}

/// Serves the relay's requests; shared by all sessions.
pub struct Dispatcher {
    routes: HashMap<String, LiveRoute>,
    info: AgentInfo,
}

impl Dispatcher {
    /// Builds upstream clients for every route of `config`.
    pub fn new(config: &AgentConfig) -> Result<Self, TlsConfigError> {
        let mut clients = Clients::default();
        let mut routes = HashMap::new();
        for (name, route) in &config.routes {
            let client = clients.get(route.ca_file.as_deref())?;
            routes.insert(
                name.clone(),
                LiveRoute {
                    route: route.clone(),
                    client,
                },
            );
        }
        let info = AgentInfo {
            name: config.identity.name.clone(),
            instance: config.identity.instance.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tags: config.identity.tags.clone(),
            routes: config.routes.keys().cloned().collect(),
        };
        Ok(Self { routes, info })
    }

    /// Handles one stream.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<BoxBody> {
        match req.uri().authority().map(|a| a.as_str()) {
            Some(protocol::CONTROL_AUTHORITY) => self.handle_control(&req),
            Some(protocol::TUNNEL_AUTHORITY) => self.handle_relayed(req).await,
            _ => Problem::new(ErrorCode::BadRequest, "unknown authority").into_response(),
        }
    }

    fn handle_control(&self, req: &Request<Incoming>) -> Response<BoxBody> {
        match req.uri().path() {
            protocol::CONTROL_INFO_PATH => {
                let body = serde_json::to_vec(&self.info).unwrap_or_default();
                let mut response = Response::new(full_body(body));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            _ => Problem::new(ErrorCode::BadRequest, "unknown control request").into_response(),
        }
    }

    async fn handle_relayed(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let started = Instant::now();
        let request_id = header_str(&req, th::REQUEST_ID).to_owned();
        let caller = header_str(&req, th::CALLER_KEY_ID).to_owned();
        let method = req.method().clone();
        let mut audit = Audit {
            request_id: &request_id,
            caller: &caller,
            route: "",
            method: method.as_str(),
            path: "",
            started,
        };
        let fail = |code: ErrorCode, detail: String| {
            Problem::new(code, detail)
                .with_request_id(request_id.clone())
                .into_response()
        };

        let Some((route_name, rest)) = protocol::split_route_path(req.uri().path())
            .map(|(route, rest)| (route.to_owned(), rest.to_owned()))
        else {
            audit.log(StatusCode::NOT_FOUND, "no_such_route");
            return fail(ErrorCode::NoSuchRoute, "no route in path".into());
        };
        let route_name = route_name.as_str();
        audit.route = route_name;
        audit.path = &rest;
        let Some(live) = self.routes.get(route_name) else {
            audit.log(StatusCode::NOT_FOUND, "no_such_route");
            return fail(
                ErrorCode::NoSuchRoute,
                format!("no route {route_name:?} on this agent"),
            );
        };
        let route = &live.route;
        let path = match route.policy.check(&method, &rest) {
            Ok(path) => path,
            Err(denial) => {
                audit.log(StatusCode::FORBIDDEN, "denied");
                return fail(ErrorCode::Denied, format!("route {route_name}: {denial}"));
            }
        };
        audit.path = &path;
        let target = match req.uri().query() {
            Some(q) => format!("{}{}{path}?{q}", route.origin, route.base_path),
            None => format!("{}{}{path}", route.origin, route.base_path),
        };
        let Ok(target) = target.parse::<Uri>() else {
            audit.log(StatusCode::BAD_REQUEST, "bad_request");
            return fail(ErrorCode::BadRequest, "request target not usable".into());
        };

        let (mut parts, body) = req.into_parts();
        parts.uri = target;
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        strip_tether(&mut parts.headers);
        parts.headers.remove(header::HOST);
        for (name, value) in &route.headers {
            parts.headers.insert(name.clone(), value.clone());
        }
        let upstream_req = Request::from_parts(parts, body.map_err(BoxError::from).boxed());

        let response = tokio::time::timeout(route.timeout, live.client.request(upstream_req)).await;
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::info!(request_id = %request_id, route = %route_name, error = %error_chain(&e),
                    "upstream unreachable");
                audit.log(StatusCode::BAD_GATEWAY, "upstream_unreachable");
                return fail(
                    ErrorCode::UpstreamUnreachable,
                    format!("route {route_name}: upstream did not answer"),
                );
            }
            Err(_) => {
                audit.log(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
                return fail(
                    ErrorCode::UpstreamTimeout,
                    format!("route {route_name}: no response within {:?}", route.timeout),
                );
            }
        };
        audit.log(response.status(), "allowed");
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, body.map_err(BoxError::from).boxed())
    }
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The audit record of one relayed request (never a header value, never a
/// query string: those may carry secrets).
struct Audit<'a> {
    request_id: &'a str,
    caller: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    started: Instant,
}

impl Audit<'_> {
    fn log(&self, status: StatusCode, decision: &str) {
        tracing::info!(
            target: "tether::audit",
            request_id = self.request_id,
            caller_key_id = self.caller,
            route = self.route,
            method = self.method,
            path = self.path,
            status = status.as_u16(),
            decision,
            elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "request"
        );
    }
}
