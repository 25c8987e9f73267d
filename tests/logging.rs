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
