//! Forward mode (`/v1/forward/{scheme}/{host[:port]}/…`): the target
//! checked against `[forward]` and the SSRF guard, then the upstream call
//! to the checked addresses only.

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tether_wire::protocol::header as th;
use tether_wire::{BoxBody, ErrorCode};

use super::call::Upstream;
use super::{Dispatcher, header_str};
use crate::config::Route;
use crate::secrets::placeholder::Origin;

impl Dispatcher {
    /// `/{scheme}/{host[:port]}/{path…}` under the forward authority: the
    /// target must pass `[forward]` (allow, deny) and every address its
    /// name resolves to must pass the SSRF guard; the connection then goes
    /// to those checked addresses only. Headers of
    /// `[forward.headers."scheme://host[:port]"]` are set; caller
    /// placeholders follow each secret's `callers` binding, as for routes.
    pub(super) async fn handle_forward(&self, req: Request<Incoming>) -> Response<BoxBody> {
        use crate::forward::{Host, Refusal};
        let request_id = header_str(&req, th::REQUEST_ID).to_owned();
        let caller = header_str(&req, th::CALLER_KEY_ID).to_owned();
        let method = req.method().clone();
        let mut audit = self.audit(&request_id, &caller, method.as_str());
        audit.record.route = "forward".to_owned();
        let fail = super::problem_for(&request_id);
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
            upstream_http2: false,
            access: Default::default(),
            upgrades: forward.upgrades.clone(),
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
}
