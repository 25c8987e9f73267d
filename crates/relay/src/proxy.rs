//! The standard forward-proxy listener (`[listen] proxy`): what portal
//! backends written in any language reach through `HTTPS_PROXY`.
//!
//! - Credentials: `Proxy-Authorization: Bearer <api key>`, or `Basic` with
//!   the key as the password (for clients that only speak Basic). Missing
//!   or bad: `407 proxy_auth_required` with `Proxy-Authenticate`. Checked
//!   by [`crate::admission`] like the caller API's, `[limits] caller_rate`
//!   included.
//! - `GET http://host/path` (absolute form): relayed exactly like
//!   `/v1/forward/http/host/path`, with the agent's policy and secret
//!   injection.
//! - `CONNECT host:port`: an HTTP/2 CONNECT stream to a forward-mode agent
//!   of the key's account (and `Tether-Selector`), which dials the target
//!   only if its lists, `connect_ports` and the SSRF guard allow it; bytes
//!   are then copied both ways ([`crate::splice`]). TLS inside is end to
//!   end, so nothing can be injected into a tunnel.
//!
//! Both go through [`ingress::relay`], so they reach an agent by the same
//! session choice, peer forwarding and retry rules as the caller API.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tether_wire::{BoxBody, ErrorCode};

use crate::State;
use crate::admission::{self, Entrance};
use crate::call::Call;
use crate::ingress::{self, Ask};

/// Handles one request on the proxy listener.
pub(crate) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<BoxBody> {
    let call = Call::new();
    if let Some(refused) = crate::bad_target(&req) {
        return refused;
    }
    let response = match admission::identify(&state, Entrance::Proxy, req.headers(), remote).await {
        Ok(caller) => match ask(&req) {
            Ok(ask) => ingress::relay(&state, &call, &caller, req, ask).await,
            Err(detail) => call.fail(ErrorCode::BadRequest, detail),
        },
        Err(refused) => call.refuse(refused, Entrance::Proxy),
    };
    state.metrics.request(response.status());
    response
}

/// What a proxy request asks for: a CONNECT tunnel, or an absolute-form
/// `http://` request relayed as `/v1/forward/http/{authority}/…`.
fn ask(req: &Request<Incoming>) -> Result<Ask, &'static str> {
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        return uri
            .authority()
            .cloned()
            .map(Ask::Connect)
            .ok_or("CONNECT needs host:port");
    }
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(
            "this is a proxy: send absolute-form requests (GET http://host/path) or CONNECT",
        );
    };
    if scheme != "http" {
        return Err("only http:// in absolute form; use CONNECT for https");
    }
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Ok(Ask::Forward {
        path_and_query: format!("/http/{authority}{path_and_query}"),
    })
}
