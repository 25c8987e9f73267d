//! The agent's admin listener: liveness, readiness (a relay session is up
//! and the audit trail writable) and the metrics.

use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode, header};
use tether_wire::serve::{self, ServeOptions};
use tether_wire::{BoxBody, ErrorCode, Problem, full_body};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::Dispatcher;
use crate::tunnel::Sessions;

pub(crate) async fn serve(
    listener: TcpListener,
    sessions: Arc<Sessions>,
    dispatcher: tokio::sync::watch::Receiver<Arc<Dispatcher>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let handler = serve::handler(move |req, _| {
        let sessions = sessions.clone();
        let current = dispatcher.borrow().clone();
        async move {
            let up = sessions.up();
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
                // Not ready while requests are refused for want of an
                // audit trail ([audit] required), nor without a session.
                (&Method::GET, "/readyz") if current.audit_log().refusing() => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit file cannot be written\n".into(),
                ),
                (&Method::GET, "/readyz") if up > 0 => text(StatusCode::OK, "ready\n".into()),
                (&Method::GET, "/readyz") => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no relay session\n".into())
                }
                (&Method::GET, "/metrics") => {
                    let audit = current.audit_log();
                    let stats = current.secrets().stats();
                    let body = audit.metrics().render(up, &stats, &audit.stats());
                    let mut response = text(StatusCode::OK, body);
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
                    response
                }
                _ => Problem::new(ErrorCode::NoSuchRoute, "no such endpoint").into_response(),
            }
        }
    });
    serve::serve(
        listener,
        None,
        ServeOptions::default(),
        handler,
        shutdown,
        tracker,
    )
    .await;
}

/// What prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text(status: StatusCode, body: String) -> Response<BoxBody> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
