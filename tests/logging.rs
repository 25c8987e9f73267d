//! Log destination: under systemd (stderr is the stream named by
//! `JOURNAL_STREAM`) the agent logs natively to journald; otherwise text
//! on stderr.

mod support;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// Runs the agent for a moment with stderr on a pipe whose device:inode
/// is `JOURNAL_STREAM` (or a different one, if `matching` is false);
/// returns what reached stderr.
fn run_with_journal_stream(matching: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    // A relay that is not there: the agent logs its attempts.
    std::fs::write(
        &config,
        format!(
            "[relay]\nurl = \"ws://127.0.0.1:{}/v1/agent/connect\"\ntoken = \"tta_x\"\n[agent]\nname = \"a\"\n",
            free_port()
        ),
    )
    .unwrap();
    let (mut reader, writer) = std::io::pipe().unwrap();
    let writer = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
    let meta = writer.metadata().unwrap();
    let stream = if matching {
        format!("{}:{}", meta.dev(), meta.ino())
    } else {
        format!("{}:{}", meta.dev(), meta.ino() + 1)
    };
    let mut child = Command::new(bin("tether-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .env("JOURNAL_STREAM", stream)
        .env("TETHER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let _ = child.kill();
    let _ = child.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut reader, &mut out).unwrap();
    out
}

#[test]
fn journal_stream_on_stderr_switches_to_journald() {
    let out = run_with_journal_stream(true);
    let journal_socket = std::path::Path::new("/run/systemd/journal/socket").exists();
    if journal_socket {
        // Entries went to the journal, none to stderr.
        assert!(!out.contains("starting"), "{out}");
    } else {
        assert!(out.contains("journald unavailable"), "{out}");
        assert!(out.contains("starting"), "fell back to stderr: {out}");
    }
}

#[test]
fn another_stream_keeps_text_on_stderr() {
    let out = run_with_journal_stream(false);
    assert!(!out.contains("journald"), "{out}");
    assert!(out.contains("INFO") && out.contains("starting"), "{out}");
}

/// Starts `binary` with `args`, stderr on a pipe whose reading end is
/// closed once `ready` answers, then sends SIGTERM: the daemon must still
/// stop, cleanly, although every log line now fails with EPIPE.
fn stops_on_sigterm_with_stderr_gone(binary: &str, args: &[&str], ready: &str) {
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = Command::new(bin(binary))
        .args(args)
        .env("TETHER_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::from(
            std::os::fd::OwnedFd::from(writer),
        )))
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(until(
        Duration::from_secs(20),
        "the daemon answers",
        || async {
            client()
                .get(ready.parse().unwrap())
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    ));
    drop(reader);
    // Something is logged after the pipe closed (debug level logs each
    // probe and reconnect attempt), then the signal.
    rt.block_on(async {
        let _ = client().get(ready.parse().unwrap()).await;
    });
    send_signal(child.id(), "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{binary} ignored SIGTERM with its stderr closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{binary} exited with {status}");
}

#[test]
fn the_agent_stops_on_sigterm_with_a_broken_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let admin = free_port();
    std::fs::write(
        &config,
        format!(
            "drain_timeout = \"1s\"\n[relay]\nurl = \"ws://127.0.0.1:{}/v1/agent/connect\"\ntoken = \"tta_x\"\n\
             [agent]\nname = \"a\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
            free_port()
        ),
    )
    .unwrap();
    stops_on_sigterm_with_stderr_gone(
        "tether-agent",
        &["run", "--config", config.to_str().unwrap()],
        &format!("http://127.0.0.1:{admin}/healthz"),
    );
}

#[test]
fn the_relay_stops_on_sigterm_with_a_broken_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let admin = free_port();
    std::fs::write(
        &config,
        format!(
            "drain_timeout = \"1s\"\n[listen]\npublic = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{admin}\"\n\
             [store]\nurl = \"sqlite://{}\"\n",
            free_port(),
            dir.path().join("relay.db").display()
        ),
    )
    .unwrap();
    stops_on_sigterm_with_stderr_gone(
        "tether-relay",
        &["serve", "--config", config.to_str().unwrap()],
        &format!("http://127.0.0.1:{admin}/healthz"),
    );
}
