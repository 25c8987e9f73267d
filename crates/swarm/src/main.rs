//! `tether-swarm`: runs N agents in one process, each with the real
//! agent's connection slot (dial, handshake, HTTP/2 server, keepalive,
//! backoff with full jitter), so a relay can be measured with thousands of
//! idle agents and their reconnect storm after a restart.
//!
//! Every agent is named `{prefix}-{i}` and serves no route. The swarm
//! prints one JSON line whenever the number of sessions up changes (at
//! most every `--report-ms`): `{"t_ms": unix millis, "up": n}`, so a
//! script can tell when all of them are back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tether_agent::audit::AuditLog;
use tether_agent::config::AgentConfig;
use tether_agent::dispatch::Dispatcher;
use tether_agent::secrets::Secrets;
use tether_agent::tunnel::{Sessions, Slot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Parser)]
#[command(
    version,
    about = "Opens many agent sessions from one process (benchmarks)"
)]
struct Args {
    /// The relay's connect URL (ws:// or wss://).
    #[arg(long)]
    relay: String,
    /// File holding an agent token.
    #[arg(long)]
    token_file: PathBuf,
    /// How many agents.
    #[arg(long, default_value_t = 1000)]
    agents: u32,
    /// Agent name prefix.
    #[arg(long, default_value = "swarm")]
    prefix: String,
    /// Stop after this many seconds (0: until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Smallest interval between two reports.
    #[arg(long, default_value_t = 100)]
    report_ms: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let sessions = Arc::new(Sessions::default());
    // The token never changes here; the receiver just has to stay open.
    let (_token_changes, token_rx) = tokio::sync::watch::channel(0u64);
    let relay_tls = Arc::new({
        let mut c = tether_agent::upstream::tls_client_config(None, None)?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    });
    let empty: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..args.agents {
        let text = format!(
            "[relay]\nurl = {:?}\ntoken_file = {:?}\nconnections = 1\n[agent]\nname = \"{}-{i}\"\n",
            args.relay,
            args.token_file.display().to_string(),
            args.prefix
        );
        let config = AgentConfig::parse(Path::new("swarm.toml"), &text, &empty)?;
        let secrets = Arc::new(Secrets::new(&[], None, None, Arc::new(empty.clone())).await?);
        let dispatcher = Arc::new(Dispatcher::new(
            &config,
            secrets,
            Arc::new(AuditLog::to_log()),
        )?);
        let slot = Slot {
            number: 0,
            config: Arc::new(config),
            tls: relay_tls.clone(),
            // Never replaced: the swarm does not reload.
            dispatcher: tokio::sync::watch::channel(dispatcher).1,
            sessions: sessions.clone(),
            token_changes: token_rx.clone(),
            tracker: tracker.clone(),
            // One session per swarm agent: nothing to spread.
            replicas: Arc::default(),
        };
        tracker.spawn(slot.run(shutdown.clone()));
    }

    let stop = shutdown.clone();
    let seconds = args.seconds;
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let limit = async {
            if seconds == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_secs(seconds)).await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            () = limit => {}
        }
        stop.cancel();
    });

    let mut last = usize::MAX;
    let mut tick = tokio::time::interval(Duration::from_millis(args.report_ms.max(10)));
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let up = sessions.up();
        if up != last {
            let t_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            println!("{}", serde_json::json!({ "t_ms": t_ms, "up": up }));
            last = up;
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}
