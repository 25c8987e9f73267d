//! `tether-agent`: run the daemon or check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether_agent::config::{AgentConfig, ProcessEnv};
use tether_wire::cli::LogFormat;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "tether-agent",
    version,
    about = "Tether agent: private services for a cloud portal, over an outbound WebSocket"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        /// Configuration file.
        #[arg(
            long,
            env = "TETHER_AGENT_CONFIG",
            default_value = "/etc/tether/agent.toml"
        )]
        config: PathBuf,
    },
    /// Validate the configuration, then read every secret from its store
    /// (printing ok or the error per name, never a value).
    Check {
        /// Configuration file.
        #[arg(
            long,
            env = "TETHER_AGENT_CONFIG",
            default_value = "/etc/tether/agent.toml"
        )]
        config: PathBuf,
        /// Only validate the file; contact no store.
        #[arg(long)]
        offline: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tether_wire::cli::init_logging(cli.log_format);
    match cli.command {
        Command::Check { config, offline } => match AgentConfig::load(&config, &ProcessEnv) {
            Ok(c) => {
                println!(
                    "{}: ok (agent {:?}, {} route(s), {} secret(s), relay {})",
                    config.display(),
                    c.identity.name,
                    c.routes.len(),
                    c.secrets.len(),
                    c.relay.url
                );
                if offline {
                    return ExitCode::SUCCESS;
                }
                match tokio::runtime::Runtime::new() {
                    Ok(rt) => rt.block_on(check_secrets(&c)),
                    Err(e) => {
                        eprintln!("tether-agent: cannot start the runtime: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("tether-agent: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let path = config;
            let config = match AgentConfig::load(&path, &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tether-agent: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tether-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config, path))
        }
    }
}

/// Reads every configured secret once from its store; prints `ok` or the
/// error per name, never a value.
async fn check_secrets(config: &AgentConfig) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secrets = match tether_agent::secrets::Secrets::new(
        &config.secrets,
        config.vault.as_ref(),
        config.aws.as_ref(),
        std::sync::Arc::new(ProcessEnv),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tether-agent: secrets: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for spec in &config.secrets {
        match secrets.check(&spec.name).await {
            Ok(()) => println!("secret {} ({}): ok", spec.name, spec.source.kind()),
            Err(e) => {
                failed = true;
                println!("secret {} ({}): error: {e}", spec.name, spec.source.kind());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn run(config: AgentConfig, path: std::path::PathBuf) -> ExitCode {
    let name = config.identity.name.clone();
    let agent = match tether_agent::Agent::start(config).await {
        Ok(agent) => agent.reload_from(path),
        Err(e) => {
            eprintln!("tether-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(agent = %name, admin = ?agent.admin_addr(), version = env!("CARGO_PKG_VERSION"), "starting");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        tether_wire::cli::wait_for_signal().await;
        tracing::info!("shutting down: draining sessions");
        signal.cancel();
    });
    agent.run(shutdown).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
