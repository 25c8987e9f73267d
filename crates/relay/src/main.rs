//! `tether-relay`: serve, and manage tokens and keys.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tether_relay::config::RelayConfig;
use tether_relay::store::Store;
use tether_wire::cli::LogFormat;
use tokio_util::sync::CancellationToken;

static VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| tether_wire::version_text(env!("CARGO_PKG_VERSION")));

#[derive(Parser)]
#[command(
    name = "tether-relay",
    version = VERSION.as_str(),
    about = "Tether relay: the cloud side of the tunnel"
)]
struct Cli {
    /// Configuration file (TOML). Without it: loopback defaults and
    /// ./tether-relay.db.
    #[arg(long, global = true, env = "TETHER_RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve,
    /// Check the configuration file (with its environment overrides) and
    /// what `serve` needs (TLS and key files, the store) and exit: 0 if the
    /// relay would start.
    Check {
        /// Do not connect to the store (e.g. checking a rendered chart
        /// away from its cluster).
        #[arg(long)]
        offline: bool,
    },
    /// Agent tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Caller API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Connected agents (asks the running relay's admin API).
    Agents {
        /// JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// The admin listener to ask, if not `[listen] admin` of the config.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Print a shell completion script (bash, zsh, fish, …) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create an agent token; prints it alone on stdout.
    Create {
        /// Account the token belongs to (created if new).
        #[arg(long)]
        account: String,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 90d.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List tokens (never their secrets).
    List {
        /// Only this account's.
        #[arg(long)]
        account: Option<String>,
        /// JSON array of {id, account, name, created, last_used, expires, status}.
        #[arg(long)]
        json: bool,
    },
    /// New secret for the same id, printed alone on stdout; the old secret
    /// keeps working until the grace ends, then its sessions are closed.
    Rotate {
        /// Token id.
        id: String,
        /// How long the old secret stays valid.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        grace: Duration,
    },
    /// Revoke a token: refused from now on, its sessions closed at once.
    Revoke {
        /// Token id.
        id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a caller API key; prints it alone on stdout.
    Create {
        /// Account the key belongs to (created if new).
        #[arg(long)]
        account: String,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        /// Only this account's.
        #[arg(long)]
        account: Option<String>,
        /// JSON array of {id, account, name, created, last_used, expires, status}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: refused from now on.
    Revoke {
        /// Key id.
        id: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "tether-relay",
            &mut std::io::stdout(),
        );
        return std::process::ExitCode::SUCCESS;
    }
    tether_wire::cli::init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-relay: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Each text of the chain once (a source whose text its
            // wrapper already printed is not repeated).
            match e.downcast_ref::<tether_relay::config::ConfigError>() {
                // `file:line:column: message` lines, as compilers print them.
                Some(invalid @ tether_relay::config::ConfigError::Invalid { .. }) => {
                    eprintln!("{invalid}");
                }
                _ => {
                    let chain: &(dyn std::error::Error + 'static) = e.as_ref();
                    eprintln!("tether-relay: {}", tether_wire::error_chain(chain));
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match &cli.config {
        Some(path) => RelayConfig::load(path)?,
        None => {
            // Commands that write the store would otherwise create one in
            // the working directory without a word.
            if !matches!(cli.command, Command::Check { .. } | Command::Agents { .. }) {
                let cwd = std::env::current_dir()
                    .map(|d| format!(" (in {})", d.display()))
                    .unwrap_or_default();
                eprintln!(
                    "tether-relay: no --config given: using the store {}{cwd}",
                    RelayConfig::default().store.url
                );
            }
            RelayConfig::default()
        }
    };
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Check { offline } => {
            let problems = tether_relay::preflight::check(&config, offline).await;
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("tether-relay check: {p}");
                }
                anyhow::bail!("{} problem(s): `serve` would not start", problems.len());
            }
            println!(
                "configuration ok{}",
                config
                    .cluster
                    .as_ref()
                    .map(|c| format!(
                        " (cluster mode: replica {}, peers reach it at {})",
                        c.replica_id,
                        c.advertised()
                    ))
                    .unwrap_or_default()
            );
            Ok(())
        }
        // Answered in main, before the runtime starts.
        Command::Completions { .. } => Ok(()),
        Command::Tokens(TokensCommand::Create {
            account,
            name,
            expires_in,
        }) => {
            let store = Store::open(&config.store.url).await?;
            let expires = expires_in.map(|d| SystemTime::now() + d);
            let token = store
                .create_token(&account, name.as_deref(), expires)
                .await?;
            tracing::info!(account, id = %token.id, "agent token created");
            println!("{}", token.secret);
            Ok(())
        }
        Command::Tokens(TokensCommand::List { account, json }) => {
            let store = Store::open(&config.store.url).await?;
            print_list(&store.list_tokens(account.as_deref()).await?, json)
        }
        Command::Tokens(TokensCommand::Rotate { id, grace }) => {
            let store = Store::open(&config.store.url).await?;
            match store.rotate_token(&id, grace).await? {
                Some(token) => {
                    tracing::info!(id = %token.id, grace = %humantime::format_duration(grace),
                        "agent token rotated");
                    println!("{}", token.secret);
                    Ok(())
                }
                None => anyhow::bail!("no active token with id {id:?}"),
            }
        }
        Command::Tokens(TokensCommand::Revoke { id }) => {
            revoke(&config, tether_relay::credential::Kind::AgentToken, &id).await
        }
        Command::Keys(KeysCommand::Create { account, name }) => {
            let store = Store::open(&config.store.url).await?;
            let key = store.create_key(&account, name.as_deref()).await?;
            tracing::info!(account, id = %key.id, "API key created");
            println!("{}", key.secret);
            Ok(())
        }
        Command::Keys(KeysCommand::List { account, json }) => {
            let store = Store::open(&config.store.url).await?;
            print_list(&store.list_keys(account.as_deref()).await?, json)
        }
        Command::Keys(KeysCommand::Revoke { id }) => {
            revoke(&config, tether_relay::credential::Kind::ApiKey, &id).await
        }
        Command::Agents { json, admin } => agents(&config, json, admin).await,
    }
}

/// `GET /v1/admin/agents` on the admin listener of `config`.
async fn agents(
    config: &RelayConfig,
    json: bool,
    admin: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let Some(addr) = admin.or(config.listen.admin) else {
        anyhow::bail!("[listen] admin is off: no running relay to ask (or pass --admin)");
    };
    let key = match &config.admin.key_file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => std::env::var("TETHER_RELAY_ADMIN_KEY")
            .context("the admin API needs [admin] key_file or TETHER_RELAY_ADMIN_KEY")?,
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<tether_wire::BoxBody>();
    let request = http::Request::get(format!("http://{addr}/v1/admin/agents"))
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.trim()),
        )
        .body(tether_wire::empty_body())?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("asking the relay's admin listener at {addr}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "admin API answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<16}  {:<8}  {:<16}  {:<20}  {:<24}  {:<12}  {:<16}  {:>9}  ROUTES",
        "REPLICA", "SESSION", "ACCOUNT", "AGENT", "INSTANCE", "VERSION", "TOKEN", "IN FLIGHT"
    );
    // Other replicas' agents (cluster mode) come without session or load.
    let or_dash = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for a in list.as_array().into_iter().flatten() {
        println!(
            "{:<16}  {:<8}  {:<16}  {:<20}  {:<24}  {:<12}  {:<16}  {:>9}  {}",
            or_dash(&a["replica"]),
            or_dash(&a["session"]),
            a["account"].as_str().unwrap_or(""),
            a["name"].as_str().unwrap_or(""),
            a["instance"].as_str().unwrap_or(""),
            or_dash(&a["version"]),
            a["token_id"].as_str().unwrap_or("-"),
            or_dash(&a["in_flight"]),
            a["routes"]
                .as_array()
                .map(|r| r
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

async fn revoke(
    config: &RelayConfig,
    kind: tether_relay::credential::Kind,
    id: &str,
) -> anyhow::Result<()> {
    let store = Store::open(&config.store.url).await?;
    if !store.revoke(kind, id).await? {
        anyhow::bail!("nothing to revoke: no unrevoked credential with id {id:?}");
    }
    tracing::info!(
        id,
        "revoked; running relays close its sessions within a second"
    );
    Ok(())
}

fn print_list(records: &[tether_relay::store::CredentialRecord], json: bool) -> anyhow::Result<()> {
    let now = tether_relay::store::unix_now();
    if json {
        let list: Vec<_> = records.iter().map(|r| r.to_json(now)).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<16}  {:<16}  {:<16}  {:<20}  {:<20}  {:<20}  STATUS",
        "ID", "ACCOUNT", "NAME", "CREATED", "LAST USED", "EXPIRES"
    );
    for r in records {
        let doc = r.to_json(now);
        println!(
            "{:<16}  {:<16}  {:<16}  {:<20}  {:<20}  {:<20}  {}",
            r.id,
            r.account,
            r.name.as_deref().unwrap_or("-"),
            doc["created"].as_str().unwrap_or("-"),
            doc["last_used"].as_str().unwrap_or("-"),
            doc["expires"].as_str().unwrap_or("never"),
            r.status(now),
        );
    }
    Ok(())
}

/// An optional listener address as an operator reads it: the address, or `off`.
fn shown(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "off".to_owned(), |a| a.to_string())
}

async fn serve(config: RelayConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let relay = tether_relay::Relay::bind(config, shutdown.clone())
        .await
        .context("starting the relay")?;
    tracing::info!(
        public = %relay.public_addr(),
        admin = %shown(relay.admin_addr()),
        proxy = %shown(relay.proxy_addr()),
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    let public = relay.public_addr();
    tokio::spawn(tether_wire::notify::run(
        tether_wire::notify::Notifier::from_env(),
        move || Some(format!("listening on {public}")),
        shutdown.clone(),
    ));
    tokio::spawn(async move {
        tether_wire::cli::wait_for_signal().await;
        tracing::info!("shutting down: draining");
        shutdown.cancel();
    });
    relay.run().await;
    tracing::info!("stopped");
    Ok(())
}
