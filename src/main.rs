//! `tether-agent`: run the daemon or check a configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether_agent::config::{AgentConfig, ProcessEnv};
use tether_wire::cli::LogFormat;
use tokio_util::sync::CancellationToken;

static VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| tether_wire::version_text(env!("CARGO_PKG_VERSION")));

#[derive(Parser)]
#[command(
    name = "tether-agent",
    version = VERSION.as_str(),
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
    /// Validate the configuration, then open a session with the relay,
    /// read every secret from its store (printing ok or the error per
    /// name, never a value) and send HEAD to every route's upstream. Exits
    /// non-zero if anything fails.
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
    /// Route policies (Rego).
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, …) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load the files together (a policy and its tests) and run every
    /// rule named `test_*`; exits non-zero if one is not true.
    Test {
        /// Rego files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tether_wire::cli::init_logging(cli.log_format);
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tether-agent",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Policy {
            command: PolicyCommand::Test { files },
        } => policy_test(&files),
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
                // Local files the agent reads: checked offline too.
                if let Err(e) = check_token_file(&c) {
                    println!("{e}");
                    return ExitCode::FAILURE;
                }
                if !check_policies(&c) {
                    return ExitCode::FAILURE;
                }
                if offline {
                    return ExitCode::SUCCESS;
                }
                match tokio::runtime::Runtime::new() {
                    Ok(rt) => rt.block_on(check_online(&c)),
                    Err(e) => {
                        eprintln!("tether-agent: cannot start the runtime: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                print_config_error(&e);
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let path = config;
            let config = match AgentConfig::load(&path, &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    print_config_error(&e);
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

/// Every problem of the file on a line of its own (`file:line:column:
/// message`, as compilers print them), then how many.
fn print_config_error(e: &tether_agent::config::ConfigError) {
    use tether_agent::config::ConfigError;
    match e {
        ConfigError::Invalid { path, problems } => {
            eprintln!("{e}");
            if problems.len() > 1 {
                eprintln!(
                    "tether-agent: {} problems in {}",
                    problems.len(),
                    path.display()
                );
            }
        }
        ConfigError::Read { .. } => eprintln!("tether-agent: {e}"),
    }
}

/// `tether-agent policy test FILE…`: one line per test, then a summary.
fn policy_test(files: &[PathBuf]) -> ExitCode {
    match tether_agent::rego::test::run(files) {
        Ok(outcomes) => {
            let failed = outcomes.iter().filter(|o| !o.passed).count();
            for o in &outcomes {
                match &o.detail {
                    None => println!("PASS {} {}", o.file.display(), o.rule),
                    Some(d) => println!("FAIL {} {}: {d}", o.file.display(), o.rule),
                }
            }
            println!("{} passed, {failed} failed", outcomes.len() - failed);
            if outcomes.is_empty() {
                eprintln!("tether-agent: no test_ rules found");
                return ExitCode::FAILURE;
            }
            if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("tether-agent: {e}");
            ExitCode::from(2)
        }
    }
}

/// Every route's policy compiles (checked offline too).
fn check_policies(config: &AgentConfig) -> bool {
    let mut ok = true;
    for route in config.routes.values() {
        if let Some(path) = &route.access.policy {
            match tether_agent::rego::Policy::load(path) {
                Ok(_) => println!(
                    "route {} policy {}: ok (compiles)",
                    route.name,
                    path.display()
                ),
                Err(e) => {
                    println!("route {}: error: {e}", route.name);
                    ok = false;
                }
            }
        }
    }
    ok
}

/// `relay.token_file` must be readable and hold a token: without it the
/// agent starts but never connects (it keeps retrying).
fn check_token_file(config: &AgentConfig) -> Result<(), String> {
    let tether_agent::config::TokenSource::File(path) = &config.relay.token else {
        return Ok(());
    };
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Err(format!(
            "relay token_file {}: error: the file is empty",
            path.display()
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "relay token_file {}: error: {e} (the agent cannot connect without it)",
            path.display()
        )),
    }
}

/// The online part of `check`: opens a session with the relay (reachable,
/// TLS verified, token accepted), reads every secret once from its store
/// (printing `ok` or the error per name, never a value), and sends `HEAD`
/// to each route's upstream (any HTTP answer counts as reachable).
async fn check_online(config: &AgentConfig) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut failed = false;
    let mut report = |ok: bool, line: String| {
        failed |= !ok;
        println!("{line}");
    };

    match tether_agent::relay_tls_config(config) {
        Ok(tls) => match tether_agent::tunnel::probe(config, &std::sync::Arc::new(tls)).await {
            Ok(()) => report(
                true,
                format!(
                    "relay {}: ok (session opened, token accepted)",
                    config.relay.url
                ),
            ),
            Err(e) => report(false, format!("relay {}: error: {e}", config.relay.url)),
        },
        Err(e) => report(false, format!("relay {}: error: {e}", config.relay.url)),
    }

    match tether_agent::secrets::Secrets::new(
        &config.secrets,
        config.vault.as_ref(),
        config.aws.as_ref(),
        std::sync::Arc::new(ProcessEnv),
    )
    .await
    {
        Ok(secrets) => {
            let in_headers = header_secrets(config);
            for spec in &config.secrets {
                let in_headers = in_headers.contains(spec.name.as_str());
                match secrets.check(&spec.name, in_headers).await {
                    Ok(()) => report(
                        true,
                        format!("secret {} ({}): ok", spec.name, spec.source.kind()),
                    ),
                    Err(e) => report(
                        false,
                        format!("secret {} ({}): error: {e}", spec.name, spec.source.kind()),
                    ),
                }
            }
        }
        Err(e) => report(false, format!("secrets: error: {e}")),
    }

    if let Some(identity) = &config.user_identity {
        use tether_agent::identity::{fetch::Fetcher, jwks::KeySet};
        let fetched = match Fetcher::new(identity) {
            Ok(fetcher) => fetcher.fetch().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match fetched.and_then(|doc| KeySet::parse(&doc).map_err(|e| e.to_string())) {
            Ok(_) => report(
                true,
                format!("identity {}: ok (issuer keys fetched)", identity.issuer),
            ),
            Err(e) => report(false, format!("identity {}: error: {e}", identity.issuer)),
        }
    }

    if let Some(path) = &config.audit_file {
        // What the agent does at start: append, created 0600 if missing.
        use std::os::unix::fs::OpenOptionsExt;
        let opened = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path);
        match opened {
            Ok(_) => report(true, format!("audit {}: ok (writable)", path.display())),
            Err(e) => report(false, format!("audit {}: error: {e}", path.display())),
        }
    }

    let mut clients = tether_agent::upstream::Clients::default();
    for route in config.routes.values() {
        let url = format!("{}{}/", route.origin, route.base_path);
        let result = match clients.get(route.ca_file.as_deref(), route.protocol()) {
            Ok(client) => {
                let request = http::Request::head(url.as_str())
                    .body(tether_wire::empty_body())
                    .map_err(|e| e.to_string());
                match request {
                    Ok(request) => tokio::time::timeout(route.timeout, client.request(request))
                        .await
                        .map_err(|_| {
                            format!(
                                "no answer within {}",
                                humantime::format_duration(route.timeout)
                            )
                        })
                        .and_then(|r| r.map_err(|e| tether_agent::error_chain(&e))),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(response) => report(
                true,
                format!(
                    "route {} {url}: reachable (HEAD answered {})",
                    route.name,
                    response.status()
                ),
            ),
            Err(e) => report(false, format!("route {} {url}: error: {e}", route.name)),
        }
    }

    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Secrets that go into header values: named in a route's or a forward
/// target's `headers`, or placed by callers (`callers`). Their values must
/// be valid header values; the others are only exported.
fn header_secrets(config: &AgentConfig) -> std::collections::BTreeSet<&str> {
    let configured = config
        .routes
        .values()
        .flat_map(|r| &r.headers)
        .chain(config.forward_headers.iter().flat_map(|(_, h)| h))
        .flat_map(|h| h.template.secrets());
    let by_callers = config
        .secrets
        .iter()
        .filter(|s| s.callers.is_some())
        .map(|s| s.name.as_str());
    configured.chain(by_callers).collect()
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
    tracing::info!(agent = %name, admin = %agent.admin_addr().map_or_else(|| "off".to_owned(), |a| a.to_string()), version = env!("CARGO_PKG_VERSION"), "starting");
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
