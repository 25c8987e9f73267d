//! The agent's half of the session's WebSocket handshake.
//!
//! hyper sends the upgrade request and reads the answer, so whatever the
//! relay sends right behind its 101 (HTTP/2's preface and settings) stays
//! with the session: hyper's `Upgraded` hands over what it read ahead.
//! tungstenite only makes the key and checks the accept value.

use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tether_wire::ws_io::{Role, WsIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The session's byte stream once the handshake is done.
pub type SessionIo = WsIo<TokioIo<Upgraded>>;

/// How much of a refusal's body is kept for the log.
const REFUSAL_BODY: usize = 512;

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

    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection.with_upgrades());
    let response = sender.send_request(request).await?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        connection.abort();
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
