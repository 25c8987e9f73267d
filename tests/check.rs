//! `tether-agent check` reports on the relay, each secret and each
//! route's upstream, and exits non-zero if any fails.

mod support;

use std::process::Command;

use support::*;

fn check(config_text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = Command::new(bin("tether-agent"))
        .args(["check", "--config"])
        .arg(&path)
        .env("CHECK_SECRET", "s3cret-value")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .unwrap();
    let text = all_output(&out);
    (out.status.success(), text)
}

fn config(relay_url: &str, token: &str, upstream: &str) -> String {
    format!(
        "[relay]\nurl = \"{relay_url}\"\ntoken = \"{token}\"\n[agent]\nname = \"a\"\n\
         [routes.sample]\nurl = \"http://{upstream}\"\npaths = [\"/**\"]\n\
         [secrets.token]\nenv = \"CHECK_SECRET\"\n"
    )
}

// Multi-threaded: `check` runs as a blocking child while this runtime
// serves the upstream it probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_relay_secrets_and_routes() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let token = relay.token("acme");
    let upstream_addr = upstream.addr.to_string();

    let (ok, text) = check(&config(&relay.agent_url(), &token, &upstream_addr));
    assert!(ok, "{text}");
    assert!(text.contains("session opened, token accepted"), "{text}");
    assert!(text.contains("secret token (env): ok"), "{text}");
    assert!(
        text.contains("route sample") && text.contains("reachable"),
        "{text}"
    );
    assert!(
        !text.contains("s3cret-value"),
        "never a secret value: {text}"
    );

    // A wrong token and an upstream that is not there: both reported.
    let closed = format!("127.0.0.1:{}", free_port());
    let (ok, text) = check(&config(
        &relay.agent_url(),
        "tta_0000000000000000_0000000000000000000000000000000000000000000000000000000000000000",
        &closed,
    ));
    assert!(!ok, "{text}");
    assert!(text.contains("HTTP 401"), "{text}");
    assert!(
        text.contains("route sample") && text.contains("error"),
        "{text}"
    );
}

/// `check` resolves each secret as a request would use it: a value that
/// header injection would refuse (CR/LF, control characters) is reported
/// unusable by name, never printed, and `check` fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_secrets_a_header_cannot_carry_as_unusable() {
    let relay = Relay::start("");
    let upstream = Upstream::start().await;
    let token = relay.token("acme");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("split");
    std::fs::write(&file, "first-half\r\nX-Injected: second-half\n").unwrap();
    let config = format!(
        "[relay]\nurl = \"{relay_url}\"\ntoken = \"{token}\"\n[agent]\nname = \"a\"\n\
         [routes.sample]\nurl = \"http://{up}\"\npaths = [\"/**\"]\n\
         headers = {{ X-One = \"${{{{ secrets.split }}}}\", X-Two = \"Bearer ${{{{ secrets.escape }}}}\", \
         X-Three = \"${{{{ secrets.fine }}}}\" }}\n\
         [secrets.split]\nfile = \"{file}\"\n\
         [secrets.escape]\nenv = \"CHECK_ESCAPE\"\n\
         [secrets.fine]\nenv = \"CHECK_FINE\"\n",
        relay_url = relay.agent_url(),
        up = upstream.addr,
        file = file.display(),
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(bin("tether-agent"))
        .args(["check", "--config"])
        .arg(&path)
        .env("CHECK_ESCAPE", "esc-\u{1b}[31m-value")
        .env("CHECK_FINE", "fine-value")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .unwrap();
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    for line in [
        "secret split (file): error",
        "secret escape (env): error",
        "secret fine (env): ok",
        "session opened, token accepted",
    ] {
        assert!(text.contains(line), "{line:?} not in {text}");
    }
    assert_eq!(text.matches("unusable").count(), 2, "{text}");
    for value in ["first-half", "second-half", "esc-", "fine-value"] {
        assert!(!text.contains(value), "a value in the output: {text}");
    }
}

#[test]
fn version_names_the_git_revision_and_completions_are_generated() {
    for binary in ["tether-agent", "tether-relay"] {
        let out = Command::new(bin(binary)).arg("--version").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!("{binary} {} (git ", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        let out = Command::new(bin(binary))
            .args(["completions", "bash"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("complete -F") && script.contains(binary),
            "{script}"
        );
    }
}
