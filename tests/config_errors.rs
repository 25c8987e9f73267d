//! What `tether-agent check` says about a configuration: every
//! independent problem at once with file:line:column, the mistakes it
//! used to accept, forward globs by the public suffix list, and operator
//! text on one line without repetition.

mod support;

use std::path::Path;
use std::process::Command;

use support::{all_output, bin, free_port};

/// `tether-agent check [--offline]` on `text`: (exit code, stdout+stderr,
/// the config's path).
fn check(dir: &Path, text: &str, offline: bool) -> (Option<i32>, String, String) {
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(bin("tether-agent"));
    cmd.arg("check");
    if offline {
        cmd.arg("--offline");
    }
    let out = cmd
        .arg("--config")
        .arg(&path)
        // Any AWS SDK stays on 127.0.0.1: no metadata service, static
        // test credentials, a fixed region.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("TETHER_TOKEN")
        .env_remove("TETHER_RELAY_URL")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .unwrap();
    let text = all_output(&out);
    (out.status.code(), text, path.display().to_string())
}

const HEAD: &str = "[relay]\nurl = \"wss://relay.example.com/v1/agent/connect\"\ntoken = \"t\"\n\n[agent]\nname = \"a\"\n\n";

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn three_independent_mistakes_are_reported_together_each_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{HEAD}[routes.a]\nurl = \"http://a.internal\"\nmethods = [\"G ET\"]\npaths = [\"/**\"]\n\n\
         [routes.b]\nurl = \"ftp://b.internal\"\npaths = [\"/**\"]\n\n\
         [forward]\nallow = [\"*.com\"]\n"
    );
    let (code, out, path) = check(dir.path(), &text, true);
    assert_eq!(code, Some(2), "{out}");
    for (needle, column, key) in [
        ("\"G ET\"", 12, "routes.a.methods"),
        ("ftp://", 7, "routes.b.url"),
        ("*.com", 10, "forward.allow"),
    ] {
        let at = format!("{path}:{}:{column}: {key}", line_of(&text, needle));
        assert!(out.contains(&at), "{at:?} not in {out}");
    }
    assert!(out.contains("3 problems in"), "{out}");
}

#[test]
fn forward_globs_are_refused_by_the_public_suffix_list_not_by_labels() {
    let dir = tempfile::tempdir().unwrap();
    let allow = |globs: &str| format!("{HEAD}[forward]\nallow = [{globs}]\n");
    let (code, out, _) = check(
        dir.path(),
        &allow(
            "\"*.internal\", \"*.corp.internal\", \"*.lan\", \"*.corp\", \"*.home.arpa\", \"*.example.co.uk\"",
        ),
        true,
    );
    assert_eq!(code, Some(0), "{out}");
    for too_broad in ["*.com", "*.co.uk", "*.github.io"] {
        let (code, out, _) = check(dir.path(), &allow(&format!("\"{too_broad}\"")), true);
        assert_eq!(code, Some(2), "{too_broad}: {out}");
        assert!(out.contains("is a public suffix"), "{too_broad}: {out}");
    }
}

#[test]
fn a_route_without_paths_and_a_relay_url_without_the_connect_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{HEAD}[routes.nothing]\nurl = \"http://a.internal\"\n")
        .replace("relay.example.com/v1/agent/connect", "relay.example.com");
    let (code, out, path) = check(dir.path(), &text, true);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(&format!("{path}:{}:", line_of(&text, "[routes.nothing]")))
            && out.contains("routes.nothing has no paths: the route would deny every request"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{path}:2:7: relay.url: the path must end with /v1/agent/connect (e.g. wss://relay.example.com/v1/agent/connect)")),
        "{out}"
    );
}

#[test]
fn check_offline_reports_a_missing_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("token");
    let text = HEAD.replace(
        "token = \"t\"",
        &format!("token_file = \"{}\"", missing.display()),
    );
    let (code, out, _) = check(dir.path(), &text, true);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("relay token_file {}: error:", missing.display())),
        "{out}"
    );
    std::fs::write(&missing, "tta_x\n").unwrap();
    let (code, out, _) = check(dir.path(), &text, true);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn an_unreachable_aws_endpoint_is_one_short_line_per_secret() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let text = format!(
        "[relay]\nurl = \"ws://127.0.0.1:{relay}/v1/agent/connect\"\ntoken = \"t\"\n\n[agent]\nname = \"a\"\n\n\
         [aws]\nendpoint = \"http://127.0.0.1:{closed}\"\n\n\
         [secrets.one]\naws = {{ id = \"ci/one\" }}\n\n[secrets.two]\naws = {{ id = \"ci/two\", key = \"k\" }}\n",
        relay = free_port(),
    );
    let (code, out, _) = check(dir.path(), &text, false);
    assert_eq!(code, Some(1), "{out}");
    for name in ["one", "two"] {
        let lines: Vec<_> = out
            .lines()
            .filter(|l| l.starts_with(&format!("secret {name} (aws): error")))
            .collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line = lines[0];
        assert!(line.len() < 300, "{} characters: {line}", line.len());
        assert!(
            line.contains(&format!("AWS Secrets Manager at http://127.0.0.1:{closed}")),
            "{line}"
        );
        for debug in ["DispatchFailure", "{", "Some(", "None"] {
            assert!(!line.contains(debug), "debug text {debug:?}: {line}");
        }
    }
}

#[test]
fn a_missing_file_is_named_once_by_both_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let agent = Command::new(bin("tether-agent"))
        .args(["check", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    let relay = Command::new(bin("tether-relay"))
        .arg("--config")
        .arg(&missing)
        .args(["check", "--offline"])
        .output()
        .unwrap();
    for out in [agent, relay] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    }
}
