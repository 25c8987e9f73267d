//! The agent's half of the session's WebSocket handshake.
//!
//! hyper sends the upgrade request and reads the answer, so whatever the
//! relay sends right behind its 101 (HTTP/2's preface and settings) stays
//! with the session: hyper's `Upgraded` hands over what it read ahead.
//! tungstenite only makes the key and checks the accept value.

use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tether_wire::ws_io::{Role, WsIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The session's byte stream once the handshake is done.
pub type SessionIo = WsIo<TokioIo<Upgraded>>;

/// How much of a refusal's body is kept for the log.
const REFUSAL_BODY: usize = 512;

/// How long the rest of a refusal's body is waited for.
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// hyper's read buffer for the relay's answer head (its minimum is 8 KiB).
const HEAD_BUFFER: usize = 64 * 1024;

/// Why the handshake did not give a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The relay answered with something other than 101.
    #[error("HTTP {status}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// The start of its body, control characters blanked.
        body: String,
    },
    /// The 101 was not a valid WebSocket acceptance.
    #[error("{0}")]
    Invalid(&'static str),
    /// The connection failed during the handshake.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Sends `request` (a WebSocket upgrade request with its key, as
/// tungstenite's `into_client_request` makes it) over `stream`; the
/// session and the 101's headers.
pub async fn handshake<S>(
    stream: S,
    request: Request<()>,
) -> Result<(SessionIo, HeaderMap), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let key = request
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or(HandshakeError::Invalid("no key in the upgrade request"))?;
    let (mut parts, ()) = request.into_parts();
    // HTTP/1.1 origin form; the authority is in Host already.
    parts.uri = parts.uri.path_and_query().map_or_else(
        || Uri::from_static("/"),
        |p| Uri::try_from(p.as_str()).unwrap_or_else(|_| Uri::from_static("/")),
    );
    let request = Request::from_parts(parts, Empty::<bytes::Bytes>::new());

    // The relay's answer head is small: a tight read buffer bounds what a
    // hostile relay can make the agent hold.
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(HEAD_BUFFER)
        .handshake(TokioIo::new(stream))
        .await?;
    let connection = tokio::spawn(connection.with_upgrades());
    let response = sender.send_request(request).await?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // The start of the body, for the log: what arrives within a short
        // while, never more than is kept.
        let mut body = response.into_body();
        let mut kept = Vec::new();
        let _ = tokio::time::timeout(REFUSAL_WAIT, async {
            while kept.len() < REFUSAL_BODY {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            kept.extend_from_slice(data);
                        }
                    }
                    _ => break,
                }
            }
        })
        .await;
        connection.abort();
        let body = kept;
        let body = String::from_utf8_lossy(&body[..body.len().min(REFUSAL_BODY)])
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        return Err(HandshakeError::Refused { status, body });
    }
    let headers = response.headers().clone();
    let upgrade_is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade_is_websocket {
        return Err(HandshakeError::Invalid("101 without Upgrade: websocket"));
    }
    let expected = derive_accept_key(key.as_bytes());
    if headers
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes())
        != Some(expected.as_bytes())
    {
        return Err(HandshakeError::Invalid(
            "101 with a wrong Sec-WebSocket-Accept",
        ));
    }
    let upgraded = hyper::upgrade::on(response).await?;
    Ok((WsIo::new(TokioIo::new(upgraded), Role::Client), headers))
}
