//! The agent's admin listener: liveness, readiness (a relay session is up)
//! and a few gauges.

use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode, header};
use tether_wire::serve::{self, ServeOptions};
use tether_wire::{BoxBody, ErrorCode, Problem, full_body};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::secrets::Secrets;
use crate::tunnel::Sessions;

pub(crate) async fn serve(
    listener: TcpListener,
    sessions: Arc<Sessions>,
    secrets: Arc<Secrets>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let handler = serve::handler(move |req, _| {
        let sessions = sessions.clone();
        let secrets = secrets.clone();
        async move {
            let up = sessions.up();
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
                (&Method::GET, "/readyz") if up > 0 => text(StatusCode::OK, "ready\n".into()),
                (&Method::GET, "/readyz") => {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no relay session\n".into())
                }
                (&Method::GET, "/metrics") => text(StatusCode::OK, metrics(up, &secrets)),
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

fn metrics(sessions: usize, secrets: &Secrets) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "# HELP tether_agent_sessions Relay sessions up.\n\
         # TYPE tether_agent_sessions gauge\n\
         tether_agent_sessions {sessions}\n\
         # HELP tether_agent_secret_reads_total Reads of a secret's store.\n\
         # TYPE tether_agent_secret_reads_total counter\n"
    );
    let stats = secrets.stats();
    for s in &stats {
        let _ = writeln!(
            out,
            "tether_agent_secret_reads_total{{secret=\"{}\"}} {}",
            s.name, s.reads
        );
    }
    out.push_str(
        "# HELP tether_agent_secret_stale_total Requests served a stale value while the store failed.\n\
         # TYPE tether_agent_secret_stale_total counter\n",
    );
    for s in &stats {
        let _ = writeln!(
            out,
            "tether_agent_secret_stale_total{{secret=\"{}\"}} {}",
            s.name, s.stale_served
        );
    }
    out
}

fn text(status: StatusCode, body: String) -> Response<BoxBody> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
