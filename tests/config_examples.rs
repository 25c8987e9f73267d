//! The shipped example configs are valid, and `check` reports errors with
//! file and line.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

/// `tether-agent` with an environment that keeps any AWS SDK off the
/// network even if a store were contacted by mistake.
fn agent_command() -> Command {
    let mut cmd = Command::new(support::bin("tether-agent"));
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    cmd
}

use tether_agent::config::AgentConfig;

#[test]
fn agent_example_loads() {
    let path = support::repo_file("config/agent.example.toml");
    let config = AgentConfig::load(&path, &BTreeMap::new()).unwrap();
    assert_eq!(config.identity.name, "eu-prod-1");
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes["jenkins"].base_path, "/ci");
    assert_eq!(config.secrets.len(), 3);
    assert!(config.vault.is_some() && config.aws.is_some());
}

#[test]
fn relay_example_loads() {
    let path = support::repo_file("config/relay.example.toml");
    tether_relay::config::RelayConfig::load(&path).unwrap();
}

#[test]
fn check_accepts_the_example_and_names_file_and_line_of_an_error() {
    // Offline: the example names real-looking hosts (vault.internal, AWS)
    // that a test must never try to reach.
    let example = support::repo_file("config/agent.example.toml");
    // The example's token_file (/etc/tether/token) is not on the test
    // machine: the token comes from the environment instead.
    let out = agent_command()
        .args(["check", "--offline", "--config"])
        .arg(&example)
        .env("TETHER_TOKEN", "tta_example")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("\"/job/*/api/json\"", "\"job/*/api/json\"");
    std::fs::write(&bad, &text).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("\"job/*/api/json\""))
        .unwrap()
        + 1;
    let out = agent_command()
        .args(["check", "--offline", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:{line}:", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("routes.jenkins.paths"), "{stderr}");
}
