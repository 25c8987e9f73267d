//! The wire protocol shared by `tether-agent` and `tether-relay`.
//!
//! # Layout
//! - [`protocol`]: the WebSocket handshake (path, subprotocol, headers), the
//!   reserved HTTP/2 authorities and the control messages.
//! - [`problem`]: the stable error codes and their `application/problem+json`
//!   rendering, used by both sides for every error they generate.
//! - [`headers`]: hop-by-hop and `Tether-*` header removal, trailer hygiene.
//! - [`body`]: [`body::FilteredTrailers`], trailer hygiene on any body;
//!   [`body::GuardedBody`], a guard held until a body ends.
//! - [`target`]: which request targets (RFC 3986 bytes) are accepted.
//! - [`cli`]: logging set-up and signal handling both binaries share.
//! - [`notify`]: systemd readiness, watchdog and stopping notifications.
//! - [`pem`]: certificates, keys and CA bundles for rustls, with typed
//!   errors; the relay's listener and the agent's clients are built here.
//! - [`config_location`]: byte offset → `line:column` for config errors.
//! - [`serve`]: the HTTP accept loop every listener uses.
//! - [`splice`]: two byte streams joined after an upgrade, with
//!   half-close, counts and an idle timeout.
//! - [`upgrade`]: HTTP Upgrade through the tunnel: the caller's token,
//!   the agent's check of the upstream's 101.
//! - [`ws_io`]: [`WsIo`], which turns a WebSocket into a byte stream
//!   (`AsyncRead + AsyncWrite`) so that HTTP/2 can run over it.
//!
//! After the upgrade the WebSocket carries one HTTP/2 connection in which the
//! relay is the client and the agent the server. hyper does the multiplexing,
//! flow control and cancellation; this crate only adapts the framing.

pub mod body;
pub mod cli;
pub mod config_location;
pub mod headers;
pub mod metrics;
pub mod notify;
pub mod pem;
pub mod problem;
pub mod protocol;
pub mod serve;
pub mod splice;
pub mod target;
pub mod upgrade;
pub mod ws_io;

/// The git revision the binaries were built from (`unknown` outside a
/// checkout; `-modified` with uncommitted changes).
pub const GIT_REVISION: &str = env!("TETHER_GIT_REVISION");

/// `--version` text: `pkg_version` and the git revision.
pub fn version_text(pkg_version: &str) -> String {
    format!("{pkg_version} (git {GIT_REVISION})")
}

pub use problem::{ErrorCode, Problem};
pub use ws_io::WsIo;

/// The body type both sides use for bodies they build or forward.
pub type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// The error type of [`BoxBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body holding `data` (or nothing) that never fails.
pub fn full_body(data: impl Into<bytes::Bytes>) -> BoxBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty_body() -> BoxBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// An error and its sources, joined by `: `, for operators: a source
/// whose text the message already ends with is not repeated (an
/// `io::Error` both formatted into its wrapper's message and returned
/// as its `source()` would otherwise read `No such file or directory (os
/// error 2): No such file or directory (os error 2)`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod error_chain_tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("config.toml: {source}")]
    struct Repeats {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect")]
    struct Wraps {
        source: std::io::Error,
    }

    #[test]
    fn each_text_once() {
        let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = missing().to_string();
        assert_eq!(
            error_chain(&Repeats { source: missing() }),
            format!("config.toml: {text}")
        );
        assert_eq!(
            error_chain(&Wraps { source: missing() }),
            format!("cannot connect: {text}")
        );
    }
}
