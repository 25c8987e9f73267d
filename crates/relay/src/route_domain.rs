//! Host-addressed routes (`[listen] route_domain`): gRPC clients and other
//! callers that cannot put `/v1/routes/{route}` in front of their paths
//! address a route by name instead: `{route}.{route_domain}`.
//!
//! The rule (DESIGN.md, "Upgrades (WebSocket, SPDY) and gRPC"): a request
//! whose `:authority`/`Host` is exactly `{route}.{route_domain}` — one
//! label, lower-cased, port and trailing dot removed — goes to that route
//! with its path unchanged. It is decided per request from the request's
//! own head, never from the TLS SNI (HTTP/2 lets a client coalesce
//! requests for several hosts on one connection). The relay rewrites the
//! path to `/v1/routes/{route}{path}` on the session, so the agent applies
//! the route's rules and `keys` exactly as for path routing. A host match
//! wins over `/v1/…` paths: the whole path space of that host belongs to
//! the route. Where the request names its host twice (absolute form or
//! `:authority`, and `Host`) and the two differ, it is refused (400): the
//! relay must not route by one while something behind it reads the other.
//!
//! [`address`] is the pure decision; [`handle`] the public listener's use
//! of it. The proxy listener never consults it.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;

use http::{HeaderMap, Request, Response, Uri, header};
use hyper::body::Incoming;
use serde::Deserialize;
use tether_wire::protocol::{self, valid_route_name};
use tether_wire::{BoxBody, ErrorCode};

use crate::State;
use crate::admission::{self, Entrance};
use crate::call::Call;
use crate::ingress::{self, Ask};

/// `[listen] route_domain`: a DNS name under which each route whose name
/// is a DNS label is a host of its own. Stored lower-case, without a
/// trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RouteDomain(String);

/// Why a `route_domain` value is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "route_domain {0:?}: expected a DNS name such as \"routes.relay.example.com\" (labels of a-z 0-9 -, no port, no wildcard, not an IP address)"
)]
pub struct BadRouteDomain(String);

impl TryFrom<String> for RouteDomain {
    type Error = BadRouteDomain;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let name = text.strip_suffix('.').unwrap_or(&text).to_ascii_lowercase();
        let labels_ok = !name.is_empty() && name.len() <= 253 && name.split('.').all(dns_label);
        // An all-numeric last label is an IPv4 address, not a domain.
        let ip_like = name
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if labels_ok && !ip_like {
            Ok(Self(name))
        } else {
            Err(BadRouteDomain(text))
        }
    }
}

impl RouteDomain {
    /// The domain, lower-case, no trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A DNS label as a host name may use it (RFC 1123 §2.1), lower-case:
/// 1–63 of `a-z 0-9 -`, not starting or ending with `-`. Route names
/// outside this set (`_`, upper case, 64 characters) are reachable by
/// path only.
fn dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// What a request's host says about where it goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Addressed {
    /// `{route}.{route_domain}`: to that route.
    Route(String),
    /// Under the route domain but not one route-name label (`a.b.…`, an
    /// empty label, `_`): no route has that host.
    NotARoute,
    /// Any other host, or none: routed by path as usual.
    Elsewhere,
    /// The request names its host twice and the two differ, or carries
    /// more than one `Host`.
    Ambiguous,
}

/// Where a request with target authority `authority` (absolute form or
/// HTTP/2 `:authority`) and `Host` fields `headers` goes under `domain`.
pub(crate) fn address(
    domain: &RouteDomain,
    authority: Option<&str>,
    headers: &HeaderMap,
) -> Addressed {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(v), None) => match v.to_str() {
            Ok(v) => Some(v),
            Err(_) => return Addressed::Ambiguous,
        },
        (Some(_), Some(_)) => return Addressed::Ambiguous,
    };
    let named = match (authority, host) {
        (Some(a), Some(h)) if normalise(a) != normalise(h) => return Addressed::Ambiguous,
        (Some(a), _) => a,
        (None, Some(h)) => h,
        (None, None) => return Addressed::Elsewhere,
    };
    let Some(name) = host_name(named) else {
        return Addressed::Elsewhere;
    };
    let Some(label) = name
        .strip_suffix(domain.as_str())
        .and_then(|rest| rest.strip_suffix('.'))
    else {
        return Addressed::Elsewhere;
    };
    if dns_label(label) && valid_route_name(label) {
        Addressed::Route(label.to_owned())
    } else {
        Addressed::NotARoute
    }
}

/// An authority compared with another: trimmed, lower-case, the host's
/// trailing dot and an empty port removed (`A.example.com.:443` =
/// `a.example.com:443`).
fn normalise(authority: &str) -> String {
    let lower = authority.trim().to_ascii_lowercase();
    let (host, port) = split(&lower);
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// An authority's host (one trailing dot removed) and non-empty port.
fn split(authority: &str) -> (&str, Option<&str>) {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => (&authority[..=end], authority[end + 1..].strip_prefix(':')),
            None => (authority, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    (
        host.strip_suffix('.').unwrap_or(host),
        port.filter(|p| !p.is_empty()),
    )
}

/// The host name of an authority: lower-case, port and one trailing dot
/// removed. `None` for an IP literal, user info or a port that is not a
/// number.
fn host_name(authority: &str) -> Option<String> {
    let (host, port) = split(authority.trim());
    if host.starts_with('[') || host.contains('@') {
        return None;
    }
    if port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// The public listener's host addressing: answers a request addressed to
/// a route by host (or refuses an ambiguous one), or hands the request
/// back for path routing.
pub(crate) async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> ControlFlow<Response<BoxBody>, Request<Incoming>> {
    let Some(domain) = &state.config.listen.route_domain else {
        return ControlFlow::Continue(req);
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    let route = match address(domain, authority, req.headers()) {
        Addressed::Elsewhere => return ControlFlow::Continue(req),
        Addressed::Route(route) => route,
        Addressed::NotARoute => {
            return ControlFlow::Break(Call::new().fail(
                ErrorCode::NoSuchRoute,
                "this host is not {route}.{route_domain} with a route name that is a DNS label",
            ));
        }
        Addressed::Ambiguous => {
            return ControlFlow::Break(Call::new().fail(
                ErrorCode::BadRequest,
                "the request names two different hosts (request target and Host)",
            ));
        }
    };
    let response = relay_to(state, req, remote, route).await;
    state.metrics.request(response.status());
    ControlFlow::Break(response)
}

/// Authenticates the caller and relays `req` to `route` with its path
/// under `/v1/routes/{route}`.
async fn relay_to(
    state: &State,
    mut req: Request<Incoming>,
    remote: SocketAddr,
    route: String,
) -> Response<BoxBody> {
    let call = Call::new();
    let caller = match admission::identify(state, Entrance::Routes, req.headers(), remote).await {
        Ok(caller) => caller,
        Err(refused) => return call.refuse(refused, Entrance::Routes),
    };
    if req.method() == http::Method::CONNECT {
        return call.fail(
            ErrorCode::BadRequest,
            "CONNECT goes to the proxy listener, not to a route",
        );
    }
    let Some(path_and_query) = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
    else {
        return call.fail(ErrorCode::BadRequest, "expected a path starting with /");
    };
    let Ok(uri) = Uri::try_from(format!(
        "{}{route}{path_and_query}",
        protocol::ROUTES_PREFIX
    )) else {
        return call.fail(ErrorCode::BadRequest, "unusable request target");
    };
    *req.uri_mut() = uri;
    ingress::relay(state, &call, &caller, req, Ask::Route(route)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn domain() -> RouteDomain {
        RouteDomain::try_from("Routes.Relay.Example.com.".to_owned()).unwrap()
    }

    fn with_host(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    fn route(r: &str) -> Addressed {
        Addressed::Route(r.to_owned())
    }

    #[test]
    fn domain_values() {
        assert_eq!(domain().as_str(), "routes.relay.example.com");
        for bad in [
            "",
            ".",
            "routes..example.com",
            "*.example.com",
            "routes.example.com:443",
            "10.0.0.1",
            "-x.example.com",
            "under_score.example.com",
            "https://routes.example.com",
        ] {
            assert!(RouteDomain::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_label_under_the_domain_is_a_route() {
        let d = domain();
        let none = HeaderMap::new();
        let a = |authority: &str| address(&d, Some(authority), &none);
        assert_eq!(a("grpc.routes.relay.example.com"), route("grpc"));
        assert_eq!(a("GRPC.Routes.Relay.Example.COM"), route("grpc"));
        assert_eq!(a("x.routes.relay.example.com.:443"), route("x"));
        assert_eq!(a("x.routes.relay.example.com:"), route("x"));
        assert_eq!(a("a-1.routes.relay.example.com"), route("a-1"));
        assert_eq!(a("a.b.routes.relay.example.com"), Addressed::NotARoute);
        assert_eq!(a(".routes.relay.example.com"), Addressed::NotARoute);
        assert_eq!(a("my_route.routes.relay.example.com"), Addressed::NotARoute);
        assert_eq!(a("-x.routes.relay.example.com"), Addressed::NotARoute);
        assert_eq!(a("routes.relay.example.com"), Addressed::Elsewhere);
        assert_eq!(a("xroutes.relay.example.com"), Addressed::Elsewhere);
        assert_eq!(a("x.routes.relay.example.com.evil"), Addressed::Elsewhere);
        assert_eq!(a("x.routes.relay.example.com:x"), Addressed::Elsewhere);
        assert_eq!(a("u@x.routes.relay.example.com"), Addressed::Elsewhere);
        assert_eq!(a("[::1]:443"), Addressed::Elsewhere);
        assert_eq!(a("127.0.0.1:8080"), Addressed::Elsewhere);
        let long = format!("{}.routes.relay.example.com", "a".repeat(64));
        assert_eq!(a(&long), Addressed::NotARoute);
    }

    #[test]
    fn host_header_alone_addresses_too() {
        let d = domain();
        assert_eq!(
            address(&d, None, &with_host("X.routes.relay.example.com:8443")),
            route("x")
        );
        assert_eq!(address(&d, None, &HeaderMap::new()), Addressed::Elsewhere);
    }

    #[test]
    fn two_different_hosts_are_refused() {
        let d = domain();
        let host = with_host("b.routes.relay.example.com");
        assert_eq!(
            address(&d, Some("a.routes.relay.example.com"), &host),
            Addressed::Ambiguous
        );
        assert_eq!(
            address(&d, Some("b.routes.relay.example.com:443"), &host),
            Addressed::Ambiguous
        );
        // The same host written differently is one host.
        assert_eq!(
            address(&d, Some("B.Routes.relay.example.com."), &host),
            route("b")
        );
        // Elsewhere too: the relay routes by one of them only.
        assert_eq!(
            address(&d, Some("relay.example.com"), &host),
            Addressed::Ambiguous
        );
        let mut two = with_host("b.routes.relay.example.com");
        two.append(
            header::HOST,
            HeaderValue::from_static("c.routes.relay.example.com"),
        );
        assert_eq!(address(&d, None, &two), Addressed::Ambiguous);
    }
}
