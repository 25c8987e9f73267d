//! A request for a named route (`/v1/routes/{route}/…`): route lookup,
//! the route's key list and policy, its identity rules, then the upstream
//! call.

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use tether_wire::protocol::{self, header as th};
use tether_wire::{BoxBody, ErrorCode};

use super::call::Upstream;
use super::{Dispatcher, header_str};

impl Dispatcher {
    pub(super) async fn handle_relayed(&self, mut req: Request<Incoming>) -> Response<BoxBody> {
        let request_id = header_str(&req, th::REQUEST_ID).to_owned();
        let caller = header_str(&req, th::CALLER_KEY_ID).to_owned();
        let method = req.method().clone();
        let mut audit = self.audit(&request_id, &caller, method.as_str());
        let fail = super::problem_for(&request_id);

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
        match self.admit(live, &req, &path, &mut audit).await {
            Ok(Some(user)) => {
                req.extensions_mut().insert(crate::identity::Verified(user));
            }
            Ok(None) => {}
            Err(problem) => return problem.with_request_id(request_id.clone()).into_response(),
        }
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
}
