//! What the agent does with each HTTP/2 stream the relay opens.
//!
//! Control requests (reserved authority) are answered here. Relayed
//! requests go through: route lookup → policy (method, normalised path) →
//! header hygiene → route headers → upstream call with a deadline on the
//! response head → response streamed back. Every relayed request leaves one
//! audit line.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tether_wire::headers::{strip_hop_by_hop, strip_tether};
use tether_wire::protocol::{self, AgentInfo, ResolveRequest, header as th};
use tether_wire::{BoxBody, BoxError, ErrorCode, Problem, full_body};

use crate::audit::{self, AuditLog, AuditRecord, PendingRecord};
use crate::body::{Counted, Direction};
use crate::config::{AgentConfig, Route};
use crate::hygiene;
use crate::secret::SecretString;
use crate::secrets::export::{self, Refusal};
use crate::secrets::placeholder::{Origin, Template};
use crate::secrets::{SecretError, Secrets};
use crate::upstream::{Clients, TlsConfigError, UpstreamClient};

/// A route ready to serve.
struct LiveRoute {
    route: Route,
    client: UpstreamClient,
}

/// Forward mode, when `[forward] allow` is set.
struct LiveForward {
    guard: Arc<crate::forward::Guard>,
    headers: crate::config::ForwardHeaders,
    client: crate::upstream::ForwardClient,
    pins: crate::upstream::Pins,
}

/// Serves the relay's requests; shared by all sessions.
pub struct Dispatcher {
    routes: HashMap<String, LiveRoute>,
    forward: Option<LiveForward>,
    info: AgentInfo,
    secrets: Arc<Secrets>,
    audit: Arc<AuditLog>,
    /// `token_file`, when `accept_rotation` lets the relay push new tokens.
    rotation_target: Option<std::path::PathBuf>,
}

impl Dispatcher {
    /// Builds upstream clients for every route of `config`.
    pub fn new(
        config: &AgentConfig,
        secrets: Arc<Secrets>,
        audit: Arc<AuditLog>,
    ) -> Result<Self, TlsConfigError> {
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
            forward: config.forward.enabled(),
        };
        let forward = if config.forward.enabled() {
            let pins = crate::upstream::Pins::default();
            let mut policy = config.forward.clone();
            policy.services = crate::forward::own_services(
                config.relay.proxy.as_ref(),
                config.vault.as_ref().map(|v| v.address.as_str()),
                config.aws.as_ref().and_then(|a| a.endpoint.as_deref()),
            );
            Some(LiveForward {
                guard: Arc::new(crate::forward::Guard::new(policy)),
                headers: config.forward_headers.clone(),
                client: crate::upstream::forward_client(pins.clone())?,
                pins,
            })
        } else {
            None
        };
        audit.metrics().add_routes(config.routes.keys());
        let rotation_target = match (&config.relay.token, config.relay.accept_rotation) {
            (crate::config::TokenSource::File(path), true) => Some(path.clone()),
            _ => None,
        };
        Ok(Self {
            routes,
            forward,
            info,
            secrets,
            audit,
            rotation_target,
        })
    }

    /// The audit log.
    pub fn audit_log(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Forward mode's SSRF guard, when forward mode is on (its watched
    /// names are kept resolved by the agent).
    pub fn forward_guard(&self) -> Option<Arc<crate::forward::Guard>> {
        self.forward.as_ref().map(|f| f.guard.clone())
    }

    fn audit(&self, request_id: &str, caller: &str, method: &str) -> Audit {
        Audit {
            record: AuditRecord::begin(request_id, caller, method),
            log: self.audit.clone(),
        }
    }

    /// The secrets this dispatcher injects.
    pub fn secrets(&self) -> &Arc<Secrets> {
        &self.secrets
    }

    /// Handles one stream.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<BoxBody> {
        if let Err(refused) = self.audit.admit(&req).await {
            return refused.into_response();
        }
        if req.method() == http::Method::CONNECT {
            return self.handle_connect(req).await;
        }
        match req.uri().authority().map(|a| a.as_str()) {
            Some(protocol::CONTROL_AUTHORITY) => self.handle_control(req).await,
            Some(protocol::TUNNEL_AUTHORITY) => self.handle_relayed(req).await,
            Some(protocol::FORWARD_AUTHORITY) => self.handle_forward(req).await,
            _ => Problem::new(ErrorCode::BadRequest, "unknown authority").into_response(),
        }
    }

    async fn handle_control(&self, req: Request<Incoming>) -> Response<BoxBody> {
        match (req.method(), req.uri().path()) {
            (&http::Method::POST, protocol::CONTROL_RESOLVE_PATH) => self.handle_resolve(req).await,
            (&http::Method::POST, protocol::CONTROL_ROTATED_PATH) => {
                let target = self.rotation_target.as_deref();
                crate::rotation::handle_notice(req, target, self.audit.metrics()).await
            }
            (_, protocol::CONTROL_INFO_PATH) => {
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

    /// A pipeline's request for exported secrets (see [`export`]).
    async fn handle_resolve(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let request_id = header_str(&req, th::REQUEST_ID).to_owned();
        let caller = header_str(&req, th::CALLER_KEY_ID).to_owned();
        let mut audit = self.audit(&request_id, &caller, "POST");
        audit.record.route = "secrets/resolve".into();
        audit.record.path = protocol::RESOLVE_PATH.into();
        let problem = |code: ErrorCode, detail: String| {
            Problem::new(code, detail).with_request_id(request_id.clone())
        };
        let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes());
        let request: ResolveRequest = match body.ok().and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(r) => r,
            None => {
                audit.log(StatusCode::BAD_REQUEST, "bad_request");
                return problem(
                    ErrorCode::BadRequest,
                    "expected {\"names\": [...], \"recipient\": \"age1...\"} (at most 64 KiB)"
                        .into(),
                )
                .into_response();
            }
        };
        audit.record.secrets = request.names.iter().take(100).cloned().collect();
        match export::resolve(&self.secrets, &request).await {
            Ok(answer) => {
                audit.log(StatusCode::OK, "allowed");
                let mut response =
                    Response::new(full_body(serde_json::to_vec(&answer).unwrap_or_default()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(Refusal::BadRequest(why)) => {
                audit.log(StatusCode::BAD_REQUEST, "bad_request");
                problem(ErrorCode::BadRequest, why).into_response()
            }
            Err(Refusal::Refused(refused)) => {
                audit.log(StatusCode::FORBIDDEN, "denied");
                let mut p = problem(
                    ErrorCode::Denied,
                    format!(
                        "not exported to this recipient, or unknown: {}",
                        refused.join(", ")
                    ),
                );
                p.refused = Some(refused);
                p.into_response()
            }
            Err(Refusal::Unavailable(e)) => {
                // The store's own text (paths, ids, its error) stays here.
                tracing::warn!(request_id = %request_id, error = %e, "secret unavailable for export");
                audit.log(StatusCode::BAD_GATEWAY, "secret_unavailable");
                problem(
                    ErrorCode::SecretUnavailable,
                    "a requested secret is unavailable".into(),
                )
                .into_response()
            }
        }
    }

    async fn handle_relayed(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let request_id = header_str(&req, th::REQUEST_ID).to_owned();
        let caller = header_str(&req, th::CALLER_KEY_ID).to_owned();
        let method = req.method().clone();
        let mut audit = self.audit(&request_id, &caller, method.as_str());
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
        audit.record.route = route_name.to_owned();
        audit.record.path.clone_from(&rest);
        let Some(live) = self.routes.get(route_name) else {
            audit.log(StatusCode::NOT_FOUND, "no_such_route");
            return fail(
                ErrorCode::NoSuchRoute,
                format!("no route {route_name:?} on this agent"),
            );
        };
        let route = &live.route;
        if let Some(keys) = &route.keys
            && !keys.contains(&caller)
        {
            audit.log(StatusCode::FORBIDDEN, "denied");
            return fail(
                ErrorCode::Denied,
                format!("route {route_name}: this API key may not use it"),
            );
        }
        let path = match route.policy.check(&method, &rest) {
            Ok(path) => path,
            Err(denial) => {
                audit.log(StatusCode::FORBIDDEN, "denied");
                return fail(ErrorCode::Denied, format!("route {route_name}: {denial}"));
            }
        };
        audit.record.path.clone_from(&path);
        let target = match req.uri().query() {
            Some(q) => format!("{}{}{path}?{q}", route.origin, route.base_path),
            None => format!("{}{}{path}", route.origin, route.base_path),
        };
        let Ok(target) = target.parse::<Uri>() else {
            audit.log(StatusCode::BAD_REQUEST, "bad_request");
            return fail(ErrorCode::BadRequest, "request target not usable".into());
        };

        self.call_upstream(
            req,
            target,
            route,
            Upstream::Route(&live.client),
            audit,
            &request_id,
        )
        .await
    }

    /// `/{scheme}/{host[:port]}/{path…}` under the forward authority: the
    /// target must pass `[forward]` (allow, deny) and every address its
    /// name resolves to must pass the SSRF guard; the connection then goes
    /// to those checked addresses only. Headers of
    /// `[forward.headers."scheme://host[:port]"]` are set; caller
    /// placeholders follow each secret's `callers` binding, as for routes.
    async fn handle_forward(&self, req: Request<Incoming>) -> Response<BoxBody> {
        use crate::forward::{Host, Refusal};
        let request_id = header_str(&req, th::REQUEST_ID).to_owned();
        let caller = header_str(&req, th::CALLER_KEY_ID).to_owned();
        let method = req.method().clone();
        let mut audit = self.audit(&request_id, &caller, method.as_str());
        audit.record.route = "forward".to_owned();
        let fail = |code: ErrorCode, detail: String| {
            Problem::new(code, detail)
                .with_request_id(request_id.clone())
                .into_response()
        };
        let Some(forward) = &self.forward else {
            audit.log(StatusCode::NOT_FOUND, "no_such_route");
            return fail(
                ErrorCode::NoSuchRoute,
                "forward mode is off on this agent".into(),
            );
        };
        let path = req.uri().path().to_owned();
        let mut parts = path.splitn(4, '/').skip(1);
        let (scheme, hostport) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let rest = format!("/{}", parts.next().unwrap_or(""));
        let default_port = match scheme {
            "https" => 443,
            "http" => 80,
            _ => {
                audit.log(StatusCode::BAD_REQUEST, "bad_request");
                return fail(
                    ErrorCode::BadRequest,
                    "expected /v1/forward/{http|https}/{host[:port]}/{path}".into(),
                );
            }
        };
        let (host_text, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => match p.parse::<u16>() {
                Ok(port) if port > 0 => (h, port),
                _ => {
                    audit.log(StatusCode::BAD_REQUEST, "bad_request");
                    return fail(ErrorCode::BadRequest, format!("bad port in {hostport:?}"));
                }
            },
            _ => (hostport, default_port),
        };
        let host = match Host::parse(host_text) {
            Ok(h) => h,
            Err(why) => {
                audit.log(StatusCode::BAD_REQUEST, "bad_request");
                return fail(ErrorCode::BadRequest, why);
            }
        };
        let origin_text = format!("{scheme}://{}", host.authority(port));
        audit.record.route = format!("forward {origin_text}");
        audit.record.path.clone_from(&rest);
        // The path first: its answer must not depend on the target.
        let path = match crate::policy::normalize(&rest) {
            Ok(p) => p,
            Err(why) => {
                audit.log(StatusCode::FORBIDDEN, "denied");
                return fail(ErrorCode::Denied, format!("forward: {why}"));
            }
        };
        audit.record.path.clone_from(&path);
        match forward.guard.check(&host, port).await {
            Ok(addrs) => {
                if let Host::Name(name) = &host {
                    forward
                        .pins
                        .set(name, addrs.iter().map(std::net::SocketAddr::ip).collect());
                }
            }
            Err(refusal) => {
                refusal.log(&request_id, &origin_text);
                audit.log(StatusCode::FORBIDDEN, "denied");
                return fail(ErrorCode::Denied, Refusal::CALLER_DETAIL.into());
            }
        }
        let Ok(target) = Origin::parse(&origin_text) else {
            audit.log(StatusCode::BAD_REQUEST, "bad_request");
            return fail(
                ErrorCode::BadRequest,
                format!("unusable target {origin_text:?}"),
            );
        };
        let headers = forward
            .headers
            .iter()
            .find(|(o, _)| *o == target)
            .map(|(_, h)| h.clone())
            .unwrap_or_default();
        let uri = match req.uri().query() {
            Some(q) => format!("{origin_text}{path}?{q}"),
            None => format!("{origin_text}{path}"),
        };
        let Ok(uri) = uri.parse::<Uri>() else {
            audit.log(StatusCode::BAD_REQUEST, "bad_request");
            return fail(ErrorCode::BadRequest, "request target not usable".into());
        };
        let route = Route {
            name: format!("forward {origin_text}"),
            origin: origin_text,
            target,
            base_path: String::new(),
            policy: crate::policy::RoutePolicy::new(Vec::new(), Vec::new()),
            headers,
            ca_file: None,
            timeout: crate::config::DEFAULT_ROUTE_TIMEOUT,
            keys: None,
            allow_override_headers: false,
        };
        self.call_upstream(
            req,
            uri,
            &route,
            Upstream::Forward(&forward.client),
            audit,
            &request_id,
        )
        .await
    }

    /// `CONNECT host:port` from the relay's proxy listener: allowed only to
    /// a forward target on one of `connect_ports`, every address checked;
    /// the TCP connection goes to a checked address and bytes are copied
    /// both ways (end-to-end TLS: nothing is injected).
    async fn handle_connect(&self, mut req: Request<Incoming>) -> Response<BoxBody> {
        use crate::forward::{Host, Refusal};
        let request_id = header_str(&req, th::REQUEST_ID).to_owned();
        let caller = header_str(&req, th::CALLER_KEY_ID).to_owned();
        let mut audit = self.audit(&request_id, &caller, "CONNECT");
        audit.record.route = "connect".to_owned();
        let fail = |audit: &mut Audit, code: ErrorCode, detail: String| {
            audit.log(code.status(), code.as_str());
            Problem::new(code, detail)
                .with_request_id(request_id.clone())
                .into_response()
        };
        let Some(forward) = &self.forward else {
            return fail(
                &mut audit,
                ErrorCode::NoSuchRoute,
                "forward mode is off on this agent".into(),
            );
        };
        let Some((host_text, port)) = req
            .uri()
            .authority()
            .and_then(|a| Some((a.host().to_owned(), a.port_u16()?)))
        else {
            return fail(
                &mut audit,
                ErrorCode::BadRequest,
                "CONNECT needs host:port".into(),
            );
        };
        let host = match Host::parse(&host_text) {
            Ok(h) => h,
            Err(why) => return fail(&mut audit, ErrorCode::BadRequest, why),
        };
        let target = host.authority(port);
        audit.record.route = format!("connect {target}");
        let checked = if forward.guard.policy().connect_ports.contains(&port) {
            forward.guard.check(&host, port).await
        } else {
            Err(Refusal::Policy(format!(
                "CONNECT to port {port}: not in forward.connect_ports"
            )))
        };
        let addrs = match checked {
            Ok(a) => a,
            Err(refusal) => {
                refusal.log(&request_id, &target);
                return fail(&mut audit, ErrorCode::Denied, Refusal::CALLER_DETAIL.into());
            }
        };
        let mut tcp = None;
        for addr in &addrs {
            match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    tcp = Some(stream);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::info!(%request_id, %addr, error = %e, "CONNECT: cannot connect")
                }
                Err(_) => tracing::info!(%request_id, %addr, "CONNECT: no connection within 10 s"),
            }
        }
        let Some(mut tcp) = tcp else {
            return fail(
                &mut audit,
                ErrorCode::UpstreamUnreachable,
                "forward: the target did not accept the connection".into(),
            );
        };
        let _ = tcp.set_nodelay(true);
        let upgrade = hyper::upgrade::on(&mut req);
        audit.log(StatusCode::OK, "allowed");
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let result = tokio::io::copy_bidirectional(&mut io, &mut tcp).await;
                    tracing::debug!(%request_id, ?result, "CONNECT tunnel closed");
                }
                Err(e) => tracing::debug!(%request_id, error = %e, "CONNECT upgrade failed"),
            }
        });
        Response::new(tether_wire::empty_body())
    }

    /// Header hygiene, caller placeholders, the route's (or forward
    /// target's) headers with their secrets, then the upstream call with
    /// the deadline on the response head; the response streams back and
    /// its audit line is written when its body ends.
    async fn call_upstream(
        &self,
        req: Request<Incoming>,
        target: Uri,
        route: &Route,
        client: Upstream<'_>,
        mut audit: Audit,
        request_id: &str,
    ) -> Response<BoxBody> {
        let route_name = route.name.as_str();
        let fail = |code: ErrorCode, detail: String| {
            Problem::new(code, detail)
                .with_request_id(request_id.to_owned())
                .into_response()
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = target;
        parts.version = http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        strip_tether(&mut parts.headers);
        parts.headers.remove(header::HOST);
        if !route.allow_override_headers {
            hygiene::strip_override_headers(&mut parts.headers);
        }
        audit.record.caller_request_id = hygiene::set_request_id(&mut parts.headers, request_id);
        let caller_templates = match self.caller_placeholders(&parts.headers, route) {
            Ok(t) => t,
            Err(why) => {
                audit.log(StatusCode::FORBIDDEN, "denied");
                return fail(ErrorCode::Denied, format!("route {route_name}: {why}"));
            }
        };
        let needed: BTreeSet<String> = caller_templates
            .iter()
            .flat_map(|(_, values)| values.iter().filter_map(|v| v.as_ref().err()))
            .flat_map(Template::secrets)
            .chain(route.headers.iter().flat_map(|h| h.template.secrets()))
            .map(str::to_owned)
            .collect();
        audit.record.secrets = needed.iter().cloned().collect();
        let values = match self.resolve(&needed).await {
            Ok(values) => values,
            Err(SecretError::Unknown(name)) => {
                audit.log(StatusCode::FORBIDDEN, "denied");
                return fail(ErrorCode::Denied, format!("unknown secret {name:?}"));
            }
            Err(e @ SecretError::Unavailable { .. }) => {
                // The store's own text (paths, ids, its error) stays here.
                tracing::warn!(request_id = %request_id, route = %route_name, error = %e,
                    "secret unavailable");
                audit.log(StatusCode::BAD_GATEWAY, "secret_unavailable");
                return fail(
                    ErrorCode::SecretUnavailable,
                    format!("route {route_name}: a secret it needs is unavailable"),
                );
            }
        };
        if let Err(name) = inject(&mut parts.headers, caller_templates, route, &values) {
            audit.log(StatusCode::BAD_GATEWAY, "secret_unavailable");
            return fail(
                ErrorCode::SecretUnavailable,
                format!("header {name}: value not usable"),
            );
        }
        let bytes = Arc::new(audit::Bytes::default());
        let route_writes = route.headers.iter().map(|h| h.name.clone()).collect();
        let body = Counted::new(
            body.map_err(BoxError::from).boxed(),
            bytes.clone(),
            Direction::In { route_writes },
            None,
        );
        let mut upstream_req = Request::from_parts(parts, body.boxed());
        let informational = hygiene::Informational::watch(&mut upstream_req);

        let response = tokio::time::timeout(route.timeout, async {
            tokio::select! {
                response = client.request(upstream_req) => Some(response),
                () = informational.flooded() => None,
            }
        })
        .await;
        let response = match response {
            Ok(Some(Ok(response))) => response,
            Ok(None) => {
                tracing::info!(request_id = %request_id, route = %route_name,
                    limit = hygiene::MAX_INFORMATIONAL, "upstream sent too many 1xx responses");
                audit.log(StatusCode::BAD_GATEWAY, "upstream_unreachable");
                return fail(
                    ErrorCode::UpstreamUnreachable,
                    format!("route {route_name}: upstream sent too many interim (1xx) responses"),
                );
            }
            Ok(Some(Err(e))) => {
                tracing::info!(request_id = %request_id, route = %route_name, error = %crate::error_chain(&e),
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
        let (mut parts, body) = response.into_parts();
        if let Err(e) = hygiene::admit_response_head(parts.status, &mut parts.headers) {
            tracing::warn!(request_id = %request_id, route = %route_name, error = %e,
                "upstream response refused");
            audit.log(StatusCode::BAD_GATEWAY, "upstream_headers_too_large");
            return fail(
                ErrorCode::UpstreamHeadersTooLarge,
                format!(
                    "route {route_name}: upstream response headers over {} bytes",
                    e.limit
                ),
            );
        }
        let pending = audit.pending(parts.status, bytes.clone());
        let body = Counted::new(
            body.map_err(BoxError::from).boxed(),
            bytes,
            Direction::Out,
            Some(pending),
        );
        Response::from_parts(parts, body.boxed())
    }
}

/// The pooled client a request goes out on.
enum Upstream<'a> {
    /// A route's.
    Route(&'a UpstreamClient),
    /// Forward mode's (addresses pinned by the SSRF check).
    Forward(&'a crate::upstream::ForwardClient),
}

impl Upstream<'_> {
    fn request(&self, req: Request<BoxBody>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Self::Route(c) => c.request(req),
            Self::Forward(c) => c.request(req),
        }
    }
}

impl Dispatcher {
    /// Caller headers holding placeholders, each value either kept as is
    /// (`Ok`) or a template to render (`Err`, grouped by header name), after
    /// checking every placeholder against its secret's `callers` binding:
    /// the header name and the route's upstream origin must both be listed.
    #[allow(clippy::type_complexity)]
    fn caller_placeholders(
        &self,
        headers: &HeaderMap,
        route: &Route,
    ) -> Result<Vec<(HeaderName, Vec<Result<HeaderValue, Template>>)>, String> {
        let mut out: Vec<(HeaderName, Vec<Result<HeaderValue, Template>>)> = Vec::new();
        for name in headers.keys() {
            let values = headers.get_all(name);
            if !values
                .iter()
                .any(|v| Template::mentions_placeholder(v.as_bytes()))
            {
                continue;
            }
            let mut list = Vec::new();
            for value in values {
                if !Template::mentions_placeholder(value.as_bytes()) {
                    list.push(Ok(value.clone()));
                    continue;
                }
                let text = value
                    .to_str()
                    .map_err(|_| format!("header {name}: placeholder in a non-text value"))?;
                let template = Template::parse(text).map_err(|e| format!("header {name}: {e}"))?;
                for secret in template.secrets() {
                    let Some(spec) = self.secrets.spec(secret) else {
                        return Err(format!("header {name}: unknown secret {secret:?}"));
                    };
                    let permitted = spec
                        .callers
                        .as_ref()
                        .is_some_and(|b| b.permits(name.as_str(), &route.target));
                    if !permitted {
                        return Err(format!(
                            "header {name}: secret {secret:?} may not be placed by callers in \
                             this header towards {}",
                            route.target
                        ));
                    }
                }
                list.push(Err(template));
            }
            out.push((name.clone(), list));
        }
        Ok(out)
    }

    /// Resolves every secret in `names`.
    async fn resolve(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<HashMap<String, SecretString>, SecretError> {
        let mut values = HashMap::with_capacity(names.len());
        for name in names {
            values.insert(name.clone(), self.secrets.get(name).await?);
        }
        Ok(values)
    }
}

/// Writes the caller's rendered headers, then the route's own headers
/// (which win). Rendered values are marked sensitive so HTTP/2 never puts
/// them in a compression table. Returns the header whose value could not
/// be built.
fn inject(
    headers: &mut HeaderMap,
    caller: Vec<(HeaderName, Vec<Result<HeaderValue, Template>>)>,
    route: &Route,
    values: &HashMap<String, SecretString>,
) -> Result<(), HeaderName> {
    let render = |template: &Template, name: &HeaderName| -> Result<HeaderValue, HeaderName> {
        let text = template.render(|secret| {
            values
                .get(secret)
                .map(|v| v.expose().to_owned())
                .ok_or_else(|| name.clone())
        })?;
        let text = SecretString::from(text);
        let mut value = HeaderValue::from_str(text.expose()).map_err(|_| name.clone())?;
        value.set_sensitive(true);
        Ok(value)
    };
    for (name, list) in caller {
        headers.remove(&name);
        for value in list {
            let value = match value {
                Ok(plain) => plain,
                Err(template) => render(&template, &name)?,
            };
            headers.append(name.clone(), value);
        }
    }
    for h in &route.headers {
        let value = match &h.literal {
            Some(v) => v.clone(),
            None => render(&h.template, &h.name)?,
        };
        headers.insert(h.name.clone(), value);
    }
    Ok(())
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The audit record of one request, on its way to the audit log.
struct Audit {
    record: AuditRecord,
    log: Arc<AuditLog>,
}

impl Audit {
    /// Writes the record now, with `status` and `decision`.
    fn log(&mut self, status: StatusCode, decision: &str) {
        self.record.finish(status.as_u16(), decision);
        self.log.record(&self.record);
    }

    /// A record written when the response body ends (bytes, duration).
    fn pending(mut self, status: StatusCode, bytes: Arc<audit::Bytes>) -> PendingRecord {
        self.record.finish(status.as_u16(), "allowed");
        PendingRecord::new(self.record, bytes, self.log)
    }
}
