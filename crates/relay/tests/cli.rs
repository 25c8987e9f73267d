//! The relay's admin CLI, run as a process.

use std::process::Command;

fn relay(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let config = dir.join("relay.toml");
    if !config.exists() {
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = \"sqlite://{}\"\n",
                dir.join("r.db").display()
            ),
        )
        .unwrap();
    }
    Command::new(env!("CARGO_BIN_EXE_tether-relay"))
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap()
}

#[test]
fn create_prints_the_secret_alone_and_stores_only_a_hash() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay(
        dir.path(),
        &["tokens", "create", "--account", "acme", "--name", "eu"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.trim_end_matches('\n');
    assert!(!token.contains('\n'));
    assert!(token.starts_with("tta_") && token.len() == 85, "{token}");
    // The log line names the id, never the secret.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&token[21..]), "{stderr}");

    let out = relay(dir.path(), &["keys", "create", "--account", "acme"]);
    let key = String::from_utf8(out.stdout).unwrap();
    assert!(key.trim().starts_with("ttk_"));
    let db = std::fs::read(dir.path().join("r.db")).unwrap_or_default();
    let wal = std::fs::read(dir.path().join("r.db-wal")).unwrap_or_default();
    for secret in [&token[21..], &key.trim()[21..]] {
        for file in [&db, &wal] {
            assert!(!file.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }
}

#[test]
fn config_comes_before_or_after_the_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{}\"\n",
            dir.path().join("r.db").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether-relay"))
        .arg("--config")
        .arg(&config)
        .args(["keys", "create", "--account", "acme"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn bad_account_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay(dir.path(), &["keys", "create", "--account", "has space"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid account name"));
}

#[test]
fn config_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "[listen]\npublic = \"127.0.0.1:0\"\nadmn = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether-relay"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:", config.display())),
        "{stderr}"
    );
    assert!(stderr.contains("admn"), "{stderr}");
}

#[test]
fn example_config_is_valid() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/relay.example.toml");
    tether_relay::config::RelayConfig::load(&path).unwrap();
}

#[test]
fn tokens_list_shows_expiry_and_a_store_without_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = relay(
        dir.path(),
        &[
            "tokens",
            "create",
            "--account",
            "acme",
            "--expires-in",
            "90d",
        ],
    );
    assert!(out.status.success());
    relay(dir.path(), &["tokens", "create", "--account", "acme"]);
    let out = relay(dir.path(), &["tokens", "list"]);
    let table = String::from_utf8(out.stdout).unwrap();
    let mut lines = table.lines();
    assert!(lines.next().unwrap().contains("EXPIRES"), "{table}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows.iter().any(|r| r.contains("never")), "{table}");
    assert!(
        rows.iter().filter(|r| r.matches("Z ").count() >= 2).count() >= 1,
        "an expiry date: {table}"
    );

    // Without --config the default store is created in the working
    // directory: the command says so.
    let out = Command::new(env!("CARGO_BIN_EXE_tether-relay"))
        .args(["keys", "create", "--account", "acme"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no --config given") && stderr.contains("sqlite://tether-relay.db"),
        "{stderr}"
    );
    assert!(dir.path().join("tether-relay.db").exists());
}

/// A port on 127.0.0.1 nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn check_names_every_problem_serve_would_meet() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{d}/no-such-dir/r.db\"\n\
             [tls]\ncert_file = \"{d}/missing.crt\"\nkey_file = \"{d}/missing.key\"\n\
             [admin]\nkey_file = \"{d}/missing-admin.key\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether-relay"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
    for named in [
        "missing-admin.key",
        "missing.crt",
        "no-such-dir",
        "3 problem(s)",
    ] {
        assert!(stderr.contains(named), "{named} not in: {stderr}");
    }
    assert!(
        !dir.path().join("no-such-dir").exists(),
        "check creates nothing"
    );

    // An unreachable Postgres: named with its cause, for check and serve
    // alike, in seconds rather than after a pool's 30 s timeout.
    let port = closed_port();
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"postgres://tether:hunter2@127.0.0.1:{port}/tether\"\n\
             [listen]\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    for command in ["check", "serve"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tether-relay"))
            .args([command, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}"))
                && stderr.to_lowercase().contains("refused"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{command}: {stderr}");
        assert!(!stderr.contains("pool timed out"), "{command}: {stderr}");
    }
}

/// Every independent problem of the file at once, each at its key's
/// line and column; the process exits non-zero.
#[test]
fn check_reports_every_problem_of_the_file_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{}\"\n\n[agents]\nmax_streams = 0\n\n[limits]\nmax_header_bytes = 10\n\n\
             [cluster]\npeer_listen = \"127.0.0.1:9470\"\npeer_key_file = \"/k\"\n  lease = \"1s\"\n",
            dir.path().join("r.db").display()
        ),
    )
    .unwrap();
    let out = relay(dir.path(), &["check", "--offline"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let path = config.display();
    for line in [
        format!("{path}:5:1: [agents] max_streams must be above zero"),
        format!("{path}:8:1: [limits] max_header_bytes must be at least 8192"),
        format!("{path}:10:2: [cluster] needs a Postgres store"),
        format!("{path}:13:3: [cluster] lease must be at least 3s"),
    ] {
        assert!(err.contains(&line), "{line:?} not in {err}");
    }
}
