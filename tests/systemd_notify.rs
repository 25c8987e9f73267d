//! sd_notify from the real agent, on a NOTIFY_SOCKET the test owns.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::*;

fn receive(socket: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < within {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = message.contains(want);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want:?} within {within:?}; saw {seen:?}");
}

#[tokio::test]
async fn agent_reports_ready_after_its_session_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let relay = Relay::start("");
    let token = relay.token("acme");
    let upstream = Upstream::start().await;
    let config = format!(
        "drain_timeout = \"1s\"\n[relay]\nurl = \"{}\"\ntoken = \"{token}\"\n\n[agent]\nname = \"a\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        relay.agent_url(),
        upstream.route("r", "[\"GET\"]", "[\"/**\"]"),
    );
    let agent = Agent::spawn(
        &config,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    // READY=1 only once a relay session is up, saying so in STATUS.
    let seen = receive(&socket, "READY=1", Duration::from_secs(10));
    let ready = seen.last().unwrap();
    assert!(ready.contains("relay session(s) up"), "{ready:?}");
    relay.wait_sessions(2).await;
    // Watchdog every 100 ms (half of WATCHDOG_USEC).
    let seen = receive(&socket, "WATCHDOG=1", Duration::from_secs(2));
    assert!(seen.iter().any(|m| m == "WATCHDOG=1"));

    let status = std::process::Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    receive(&socket, "STOPPING=1", Duration::from_secs(5));
}
