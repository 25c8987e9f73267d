//! What both binaries do the same way at start and stop: logging set-up
//! and waiting for a termination signal.

/// Log output (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// The journal when stderr is connected to it (systemd sets
    /// `JOURNAL_STREAM`), human-readable lines otherwise.
    #[default]
    Auto,
    /// Human-readable lines on stderr (colour only on a terminal).
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Native journald entries: every span and event field becomes a
    /// journal field (`REQUEST_ID`, `ROUTE`, …); the target is `TARGET`
    /// (audit lines: `tether::audit`).
    Journald,
}

/// Installs the global tracing subscriber: level from `TETHER_LOG`, else
/// `RUST_LOG`, else `info`.
///
/// Journald goes through tracing-journald rather than the design card's
/// systemd-journal-logger: the latter is a `log` backend, so it would see
/// tracing events only through the `log` bridge, which flattens their
/// fields into the message text. tracing-journald writes each field as a
/// journal field of its own, so `journalctl REQUEST_ID=…` works.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        EnvFilter::try_from_env("TETHER_LOG")
            .or_else(|_| EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer.with_field_prefix(None))
                    .init();
                return;
            }
            Err(e) => eprintln!("journald unavailable ({e}); logging to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        // A failed write to stderr (a closed pipe, a full disk) is dropped,
        // never reported with eprintln!, which panics on a broken pipe: the
        // panic would land in whatever task logged, such as the one that
        // carries SIGTERM to the shutdown token. Logging must never decide
        // whether the daemon can stop.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        _ => builder.init(),
    }
}

/// Whether stderr is the journal stream systemd connected (its device and
/// inode are in `JOURNAL_STREAM`), as sd_journal_stream_fd documents.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    expected.to_str() == Some(&format!("{}:{}", meta.dev(), meta.ino()))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
