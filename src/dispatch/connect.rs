//! `CONNECT host:port` from the relay's proxy listener: a TCP tunnel to
//! a checked forward target.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tether_wire::protocol::header as th;
use tether_wire::{BoxBody, ErrorCode, Problem};

use super::{Audit, Dispatcher, header_str};

impl Dispatcher {
    /// `CONNECT host:port` from the relay's proxy listener: allowed only to
    /// a forward target on one of `connect_ports`, every address checked;
    /// the TCP connection goes to a checked address and bytes are copied
    /// both ways (end-to-end TLS: nothing is injected).
    pub(super) async fn handle_connect(&self, mut req: Request<Incoming>) -> Response<BoxBody> {
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
}
