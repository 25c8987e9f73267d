//! Upgrades (WebSocket, SPDY): the relay opens an HTTP/2 extended CONNECT
//! (RFC 8441, `:protocol` = the caller's `Upgrade` token) with the
//! caller's method in [`METHOD_HEADER`].
//!
//! The request then takes the ordinary way — route (or forward target),
//! keys, method and path rules, header hygiene, injection — with the
//! method the caller used; only the upstream call differs. The upstream is
//! dialled on a dedicated HTTP/1.1 connection (ALPN `http/1.1`, never
//! pooled), and **no caller byte reaches it before a 101 the agent has
//! verified** ([`verify_switch`]): the relay's side of the stream is only
//! taken after the 200 that answers a verified 101. A non-101 answer goes
//! back as an ordinary response and the connection is closed.
//!
//! Audit: one line when the connection opens (status 101, `upgraded`),
//! one when it closes (bytes each way, duration, how it ended).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tether_wire::protocol::{self, header as th};
use tether_wire::splice::splice;
use tether_wire::upgrade::{METHOD_HEADER, UpgradeToken, original_method, verify_switch};
use tether_wire::{BoxBody, BoxError, ErrorCode, Problem, empty_body};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::call::Upstream;
use super::{Audit, Dispatcher, header_str};
use crate::body::{Counted, Direction};
use crate::config::{AgentConfig, Route};
use crate::upstream::{Pins, TlsConfigError, tls_client_config};

/// How long a TCP connect to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An upgrade on its way through the route's checks: put on the request by
/// [`Dispatcher::handle_upgrade`], taken by the upstream call.
#[derive(Clone)]
pub(super) struct PendingUpgrade {
    token: UpgradeToken,
    /// The relay's side of the stream, after the 200.
    relay_side: OnUpgrade,
    /// One of `[limits] max_upgraded`, held while the connection lasts.
    slot: Arc<OwnedSemaphorePermit>,
}

/// What upgraded connections share: their slots, idle timeout and the
/// dialers of dedicated upstream connections.
pub(super) struct Upgrades {
    slots: Arc<Semaphore>,
    max: usize,
    idle: Duration,
    /// TLS (ALPN `http/1.1`) by route `ca_file`.
    tls: HashMap<Option<PathBuf>, Arc<rustls::ClientConfig>>,
    /// Forward mode's checked addresses.
    pins: Option<Pins>,
    /// Never cancelled today: drain ends upgraded streams with the session.
    stop: CancellationToken,
}

impl Upgrades {
    /// The dialers for every route's trust configuration, and forward
    /// mode's pinned addresses (`pins`).
    pub(super) fn new(config: &AgentConfig, pins: Option<Pins>) -> Result<Self, TlsConfigError> {
        let wanted = config.routes.values().any(|r| !r.upgrades.is_empty())
            || !config.forward_upgrades.is_empty();
        let mut tls = HashMap::new();
        if wanted {
            let cas = config
                .routes
                .values()
                .filter(|r| !r.upgrades.is_empty())
                .map(|r| r.ca_file.clone())
                .chain(std::iter::once(None));
            for ca in cas {
                if tls.contains_key(&ca) {
                    continue;
                }
                let mut client = tls_client_config(ca.as_deref(), None)?;
                client.alpn_protocols = vec![b"http/1.1".to_vec()];
                tls.insert(ca, Arc::new(client));
            }
        }
        let max = config.limits.max_upgraded;
        Ok(Self {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            idle: config.limits.upgrade_idle_timeout,
            tls,
            pins,
            stop: CancellationToken::new(),
        })
    }
}

/// Why the dedicated upstream connection could not be opened.
#[derive(Debug, thiserror::Error)]
enum DialError {
    /// The name did not resolve, or forward mode has no checked address.
    #[error("no address for {0}")]
    NoAddress(String),
    /// Every address refused or timed out.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// TLS failed (certificate, handshake).
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The host is not a TLS server name.
    #[error("{0:?} is not a TLS server name")]
    Name(String),
    /// The HTTP/1.1 exchange failed.
    #[error("HTTP/1.1: {0}")]
    Http(#[from] hyper::Error),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Dispatcher {
    /// Takes over the upgraded-connection slots of the `running`
    /// dispatcher on a reload, so that connections open before it still
    /// count against `[limits] max_upgraded` (whose value a reload does
    /// not change).
    pub fn keep_upgrade_slots(&mut self, running: &Dispatcher) {
        if self.upgrades.max != running.upgrades.max {
            tracing::warn!("[limits] max_upgraded changed: it takes effect only after a restart");
        }
        self.upgrades.slots = running.upgrades.slots.clone();
        self.upgrades.max = running.upgrades.max;
    }

    /// An extended CONNECT from the relay: the caller's method restored,
    /// a `[limits] max_upgraded` slot taken, then the route or forward
    /// target handles it as any request up to the upstream call.
    pub(super) async fn handle_upgrade(&self, mut req: Request<Incoming>) -> Response<BoxBody> {
        let request_id = header_str(&req, th::REQUEST_ID).to_owned();
        let fail = super::problem_for(&request_id);
        let protocol = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let token = match UpgradeToken::parse(&protocol) {
            Ok(token) => token,
            Err(e) => return fail(ErrorCode::BadRequest, e.to_string()),
        };
        let Some(method) = original_method(req.headers()).filter(|m| *m != http::Method::CONNECT)
        else {
            return fail(ErrorCode::BadRequest, "upgrade without its method".into());
        };
        let Ok(slot) = self.upgrades.slots.clone().try_acquire_owned() else {
            tracing::info!(%request_id, max = self.upgrades.max,
                "upgrade refused: [limits] max_upgraded connections open");
            return fail(
                ErrorCode::RateLimited,
                format!(
                    "{} upgraded connections open on this agent ([limits] max_upgraded)",
                    self.upgrades.max
                ),
            );
        };
        let relay_side = hyper::upgrade::on(&mut req);
        req.extensions_mut().remove::<hyper::ext::Protocol>();
        req.headers_mut().remove(METHOD_HEADER);
        *req.method_mut() = method;
        req.extensions_mut().insert(PendingUpgrade {
            token,
            relay_side,
            slot: Arc::new(slot),
        });
        match req.uri().authority().map(|a| a.as_str()) {
            Some(protocol::TUNNEL_AUTHORITY) => self.handle_relayed(req).await,
            Some(protocol::FORWARD_AUTHORITY) => self.handle_forward(req).await,
            _ => fail(ErrorCode::BadRequest, "unknown authority".into()),
        }
    }

    /// Calls the upstream for an upgrade that passed every rule of
    /// `route`, with `req`'s head ready (hygiene done, headers injected).
    pub(super) async fn upgrade_upstream(
        &self,
        pending: PendingUpgrade,
        req: Request<BoxBody>,
        route: &Route,
        client: &Upstream<'_>,
        mut audit: Audit,
        request_id: &str,
    ) -> Response<BoxBody> {
        let route_name = route.name.as_str();
        let fail = super::problem_for(request_id);
        let (mut parts, _) = req.into_parts();
        let target = parts.uri.clone();
        let Some(authority) = target.authority().cloned() else {
            audit.log(StatusCode::BAD_REQUEST, "bad_request");
            return fail(ErrorCode::BadRequest, "request target not usable".into());
        };
        parts.uri = target
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse::<Uri>()
            .unwrap_or_default();
        let token_value = HeaderValue::from_str(pending.token.as_str());
        let (Ok(host), Ok(token_value)) = (HeaderValue::from_str(authority.as_str()), token_value)
        else {
            audit.log(StatusCode::BAD_REQUEST, "bad_request");
            return fail(ErrorCode::BadRequest, "request target not usable".into());
        };
        parts.headers.insert(header::HOST, host);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, token_value);
        parts.headers.remove(header::CONTENT_LENGTH);
        if pending.token.is_websocket() && !parts.headers.contains_key("sec-websocket-key") {
            // An HTTP/2 caller (RFC 8441) has no key: the agent makes one,
            // and checks the upstream's answer against it as for any other.
            let generated = tokio_tungstenite::tungstenite::handshake::client::generate_key();
            if let Ok(value) = HeaderValue::from_str(&generated) {
                parts.headers.insert("sec-websocket-key", value);
            }
            parts
                .headers
                .entry("sec-websocket-version")
                .or_insert(HeaderValue::from_static("13"));
        }
        let key = parts.headers.get("sec-websocket-key").cloned();
        let forward = matches!(client, Upstream::Forward(_));
        let handshake = Request::from_parts(parts, empty_body());

        let exchange = async {
            let io = self
                .dial_upstream(&target, route.ca_file.as_deref(), forward)
                .await?;
            let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(io))
                .await?;
            let driver = tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "upgrade connection to the upstream ended");
                }
            });
            Ok::<_, DialError>((sender.send_request(handshake).await?, driver))
        };
        let (mut response, driver) = match tokio::time::timeout(route.timeout, exchange).await {
            Ok(Ok(exchanged)) => exchanged,
            Ok(Err(e)) => {
                tracing::info!(%request_id, route = %route_name, error = %crate::error_chain(&e),
                    "upstream unreachable for an upgrade");
                return super::call::no_answer(
                    &mut audit,
                    route,
                    request_id,
                    super::call::Missing::Unreachable,
                );
            }
            Err(_) => {
                return super::call::no_answer(
                    &mut audit,
                    route,
                    request_id,
                    super::call::Missing::Timeout,
                );
            }
        };
        let status = response.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            return self.not_switched(response, route_name, audit, request_id);
        }
        if let Err(e) = verify_switch(&pending.token, key.as_ref(), status, response.headers()) {
            // The connection is closed now: the upstream got nothing but
            // the handshake. Whichever side holds it — hyper's driver, or
            // the switched connection it handed over — lets go of it here.
            let switched = hyper::upgrade::on(&mut response);
            driver.abort();
            if let Ok(Ok(io)) = tokio::time::timeout(Duration::from_secs(1), switched).await {
                drop(io);
            }
            tracing::warn!(%request_id, route = %route_name, error = %e,
                "upstream's 101 refused; connection closed");
            audit.log(StatusCode::BAD_GATEWAY, "bad_upgrade");
            return fail(
                ErrorCode::UpstreamUnreachable,
                format!(
                    "route {route_name}: the upstream's 101 is not a valid switch to {}",
                    pending.token
                ),
            );
        }
        let upstream_side = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        if let Err(e) = crate::hygiene::admit_response_head(StatusCode::OK, &mut parts.headers) {
            tracing::warn!(%request_id, route = %route_name, error = %e, "upstream's 101 refused");
            audit.log(StatusCode::BAD_GATEWAY, "upstream_headers_too_large");
            return fail(
                ErrorCode::UpstreamHeadersTooLarge,
                format!(
                    "route {route_name}: upstream response headers over {} bytes",
                    e.limit
                ),
            );
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.status = StatusCode::OK;
        audit.log(StatusCode::SWITCHING_PROTOCOLS, "upgraded");
        tracing::info!(%request_id, route = %route_name, protocol = %pending.token, "upgraded");

        let mut record = audit.record.clone();
        let log = audit.log.clone();
        let idle = self.upgrades.idle;
        let stop = self.upgrades.stop.clone();
        let request_id = request_id.to_owned();
        tokio::spawn(async move {
            let _slot = pending.slot;
            let end = match tokio::join!(pending.relay_side, upstream_side) {
                (Ok(relay), Ok(upstream)) => {
                    let spliced = splice(
                        TokioIo::new(relay),
                        TokioIo::new(upstream),
                        Some(idle),
                        &stop,
                    )
                    .await;
                    record.bytes_in = spliced.a_to_b;
                    record.bytes_out = spliced.b_to_a;
                    spliced.end.as_str()
                }
                (relay, upstream) => {
                    tracing::debug!(%request_id, relay = relay.is_ok(), upstream = upstream.is_ok(),
                        "upgraded connection never joined");
                    "failed"
                }
            };
            record.finish(StatusCode::SWITCHING_PROTOCOLS.as_u16(), end);
            tracing::info!(%request_id, end, bytes_in = record.bytes_in,
                bytes_out = record.bytes_out, "upgraded connection closed");
            log.record(&record);
        });
        Response::from_parts(parts, empty_body())
    }

    /// An upstream's answer other than 101: passed on as the ordinary
    /// response it is (the connection closes after it), except a 2xx,
    /// which on the session would read as a switch.
    fn not_switched(
        &self,
        response: Response<Incoming>,
        route_name: &str,
        mut audit: Audit,
        request_id: &str,
    ) -> Response<BoxBody> {
        let (mut parts, body) = response.into_parts();
        if parts.status.is_success() {
            tracing::info!(%request_id, route = %route_name, status = parts.status.as_u16(),
                "upstream answered an upgrade with a success other than 101");
            audit.log(StatusCode::BAD_GATEWAY, "bad_upgrade");
            return Problem::new(
                ErrorCode::UpstreamUnreachable,
                format!(
                    "route {route_name}: the upstream answered the upgrade with {}, not 101",
                    parts.status.as_u16()
                ),
            )
            .with_request_id(request_id.to_owned())
            .into_response();
        }
        if let Err(e) = crate::hygiene::admit_response_head(parts.status, &mut parts.headers) {
            tracing::warn!(%request_id, route = %route_name, error = %e, "upstream response refused");
            audit.log(StatusCode::BAD_GATEWAY, "upstream_headers_too_large");
            return Problem::new(
                ErrorCode::UpstreamHeadersTooLarge,
                format!(
                    "route {route_name}: upstream response headers over {} bytes",
                    e.limit
                ),
            )
            .with_request_id(request_id.to_owned())
            .into_response();
        }
        let bytes = audit.bytes.clone().unwrap_or_default();
        let pending = audit.pending(parts.status, bytes.clone());
        let body = Counted::new(body.map_err(BoxError::from).boxed(), bytes, Direction::Out);
        let body = tether_wire::body::GuardedBody::new(body, pending);
        Response::from_parts(parts, body.boxed())
    }

    /// A dedicated connection to `target`: TCP (forward mode: to the
    /// addresses its check pinned only), then TLS with ALPN `http/1.1`
    /// for `https`.
    async fn dial_upstream(
        &self,
        target: &Uri,
        ca_file: Option<&Path>,
        forward: bool,
    ) -> Result<Box<dyn Io>, DialError> {
        let https = target.scheme_str() == Some("https");
        let host = target
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = target.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else if forward {
            let pins = self.upgrades.pins.as_ref();
            pins.map(|p| p.get(&host))
                .unwrap_or_default()
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()
        } else {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| DialError::NoAddress(host.clone()))?
                .collect()
        };
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    tcp = Some(stream);
                    break;
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(std::io::ErrorKind::TimedOut.into()),
            }
        }
        let Some(tcp) = tcp else {
            return Err(last.map_or(DialError::NoAddress(host), DialError::Connect));
        };
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Box::new(tcp));
        }
        let key = if forward {
            None
        } else {
            ca_file.map(Path::to_owned)
        };
        let Some(tls) = self.upgrades.tls.get(&key) else {
            return Err(DialError::Tls(std::io::Error::other(
                "no TLS configuration",
            )));
        };
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|_| DialError::Name(host.clone()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(DialError::Tls)?;
        Ok(Box::new(stream))
    }
}

/// The 403 when `req` is an upgrade `route` does not list.
pub(super) fn refusal<B>(
    req: &Request<B>,
    route: &Route,
    audit: &mut Audit,
    request_id: &str,
) -> Option<Response<BoxBody>> {
    let pending = req.extensions().get::<PendingUpgrade>()?;
    if route
        .upgrades
        .iter()
        .any(|t| t.matches(pending.token.as_str()))
    {
        return None;
    }
    audit.log(StatusCode::FORBIDDEN, "denied");
    Some(
        Problem::new(
            ErrorCode::Denied,
            format!(
                "{}: upgrades to {} are not allowed here (upgrades)",
                route.name, pending.token
            ),
        )
        .with_request_id(request_id.to_owned())
        .into_response(),
    )
}
