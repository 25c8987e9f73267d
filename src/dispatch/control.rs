//! Control requests (the reserved control authority): the agent's info
//! document, the relay's draining notice, pushed tokens and secret
//! resolution for pipelines. Every one of them is answered here.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tether_wire::protocol::{self, ResolveRequest, header as th};
use tether_wire::{BoxBody, ErrorCode, Problem, full_body};

use self::message::{ControlRequest, RESOLVE_BODY_LIMIT, read_json};
use super::{Dispatcher, header_str};
use crate::secrets::export::{self, Refusal};

mod message;

/// What a session learns from the control requests it serves; shared
/// with the task that owns the session.
#[derive(Debug, Clone, Default)]
pub struct SessionSignals {
    /// Notified once the relay has asked this session for the agent's
    /// info: from then on the relay routes requests to it.
    pub registered: Arc<tokio::sync::Notify>,
    /// Notified when the relay says it is shutting down (its draining
    /// notice).
    pub relay_draining: Arc<tokio::sync::Notify>,
}

impl Dispatcher {
    pub(super) async fn handle_control(
        &self,
        req: Request<Incoming>,
        session: &SessionSignals,
    ) -> Response<BoxBody> {
        match ControlRequest::of(req.method(), req.uri().path()) {
            ControlRequest::Draining => {
                // It concerns the session it came on, not the dispatcher.
                session.relay_draining.notify_one();
                let mut response = Response::new(tether_wire::empty_body());
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            ControlRequest::Resolve => self.handle_resolve(req).await,
            ControlRequest::Rotated => {
                let target = self.rotation_target.as_deref();
                crate::rotation::handle_notice(req, target, self.audit.metrics()).await
            }
            ControlRequest::Info => {
                let body = serde_json::to_vec(&self.info).unwrap_or_default();
                let mut response = Response::new(full_body(body));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                // The relay registers a session once it has the info; then
                // the session may replace an older one. notify_one keeps a
                // permit if nobody waits yet.
                session.registered.notify_one();
                response
            }
            ControlRequest::Unknown => {
                Problem::new(ErrorCode::BadRequest, "unknown control request").into_response()
            }
        }
    }

    /// A pipeline's request for exported secrets (see [`export`]).
    pub(super) async fn handle_resolve(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let request_id = header_str(&req, th::REQUEST_ID).to_owned();
        let caller = header_str(&req, th::CALLER_KEY_ID).to_owned();
        let mut audit = self.audit(&request_id, &caller, "POST");
        audit.record.route = "secrets/resolve".into();
        audit.record.path = protocol::RESOLVE_PATH.into();
        let problem = |code: ErrorCode, detail: String| {
            Problem::new(code, detail).with_request_id(request_id.clone())
        };
        let request: ResolveRequest = match read_json(req.into_body(), RESOLVE_BODY_LIMIT).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(request_id = %request_id, error = %e, "resolve request refused");
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
}
