//! One connection attempt: TCP (or the `[relay] proxy`), TLS for `wss`,
//! the WebSocket upgrade with the agent's headers, and what the relay's
//! refusal said.

use std::sync::Arc;
use std::time::Duration;

use crate::ws_client::HandshakeError;
use http::{HeaderValue, Uri, header};
use tether_wire::protocol::{self, header as th};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::config::{AgentConfig, TokenSource};
use crate::secret::SecretString;

/// TCP connect + TLS + upgrade must finish within this.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Byte stream under the WebSocket: TCP or TLS over TCP.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An upgraded session, before HTTP/2 runs over it.
pub(super) type Session = crate::ws_client::SessionIo;

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The token could not be read.
    #[error("reading the token from {0}: {1}")]
    Token(String, std::io::Error),
    /// TCP or DNS failure.
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    /// TLS failure (including certificate verification).
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    /// The relay answered the upgrade with an HTTP error.
    #[error("relay refused the session: HTTP {status}{hint}: {body}")]
    Refused {
        /// The status.
        status: u16,
        /// What it likely means.
        hint: &'static str,
        /// The problem document or body the relay sent (never holds a secret).
        body: String,
    },
    /// Anything else in the WebSocket handshake.
    #[error("WebSocket handshake: {0}")]
    Handshake(String),
    /// The whole attempt took too long.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Opens one session (TCP, proxy, TLS, token check, upgrade) and closes
/// it: what `tether-agent check` reports on. It never falls back to
/// `token_file.prev` nor changes a file.
pub async fn probe(config: &AgentConfig, tls: &Arc<rustls::ClientConfig>) -> Result<(), DialError> {
    let token = read_token(&config.relay.token).await?;
    dial_timed(config, tls, &token).await.map(drop)
}

/// [`dial`] within [`DIAL_TIMEOUT`].
pub(super) async fn dial_timed(
    config: &AgentConfig,
    tls: &Arc<rustls::ClientConfig>,
    token: &SecretString,
) -> Result<(Session, Option<String>), DialError> {
    tokio::time::timeout(DIAL_TIMEOUT, dial(config, tls, token))
        .await
        .unwrap_or(Err(DialError::Timeout(DIAL_TIMEOUT)))
}

/// One attempt with `token`: TCP, TLS if `wss`, WebSocket upgrade with our
/// headers. The session, and the relay replica holding it (cluster mode).
async fn dial(
    config: &AgentConfig,
    tls: &Arc<rustls::ClientConfig>,
    token: &SecretString,
) -> Result<(Session, Option<String>), DialError> {
    let url = &config.relay.url;
    let secure = url.scheme_str() == Some("wss");
    let host = url.host().unwrap_or_default().to_owned();
    let port = url.port_u16().unwrap_or(if secure { 443 } else { 80 });

    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = match &config.relay.proxy {
        Some(proxy) => crate::egress::connect(proxy, &bare_host, port)
            .await
            .map_err(|e| DialError::Connect(format!("{host}:{port} through proxy {proxy}"), e))?,
        None => TcpStream::connect((bare_host.as_str(), port))
            .await
            .map_err(|e| DialError::Connect(format!("{host}:{port}"), e))?,
    };
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if secure {
        let name = rustls_pki_types::ServerName::try_from(bare_host.clone())
            .map_err(|e| DialError::Tls(host.clone(), std::io::Error::other(e)))?;
        let tls = TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| DialError::Tls(host.clone(), e))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };

    let request = handshake_request(url, token, config)?;
    let (io, headers) = crate::ws_client::handshake(stream, request)
        .await
        .map_err(refusal)?;
    let agreed = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if agreed != Some(protocol::SUBPROTOCOL_V1) {
        return Err(DialError::Handshake(format!(
            "relay agreed on protocol {agreed:?}, expected {}",
            protocol::SUBPROTOCOL_V1
        )));
    }
    let replica = headers
        .get(protocol::header::REPLICA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((io, replica))
}

fn handshake_request(
    url: &Uri,
    token: &SecretString,
    config: &AgentConfig,
) -> Result<http::Request<()>, DialError> {
    let mut request = url
        .to_string()
        .into_client_request()
        .map_err(|e| DialError::Handshake(e.to_string()))?;
    let value = |s: &str| {
        HeaderValue::from_str(s).map_err(|_| DialError::Handshake("header value not usable".into()))
    };
    let h = request.headers_mut();
    let mut auth = value(&format!("Bearer {}", token.expose()))?;
    auth.set_sensitive(true);
    h.insert(header::AUTHORIZATION, auth);
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol::SUBPROTOCOL_V1),
    );
    h.insert(th::AGENT_NAME, value(&config.identity.name)?);
    h.insert(th::AGENT_INSTANCE, value(&config.identity.instance)?);
    h.insert(
        th::AGENT_VERSION,
        HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
    );
    if !config.identity.tags.is_empty() {
        h.insert(th::AGENT_TAGS, value(&config.identity.tags.join(","))?);
    }
    Ok(request)
}

fn refusal(e: HandshakeError) -> DialError {
    match e {
        HandshakeError::Refused { status, body } => {
            let status = status.as_u16();
            let hint = match status {
                401 => " (token invalid, revoked or expired)",
                426 => " (this agent is too old for the relay: its protocol or its version)",
                429 => " (rate limited)",
                _ => "",
            };
            DialError::Refused { status, hint, body }
        }
        other => DialError::Handshake(other.to_string()),
    }
}

pub(super) async fn read_token(source: &TokenSource) -> Result<SecretString, DialError> {
    match source {
        TokenSource::Inline(token) => Ok(token.clone()),
        TokenSource::File(path) => tokio::fs::read_to_string(path)
            .await
            .map(|s| SecretString::from(s.trim().to_owned()))
            .map_err(|e| DialError::Token(path.display().to_string(), e)),
    }
}
