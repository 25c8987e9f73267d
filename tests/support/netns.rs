//! Tests that run in namespaces of their own: a network namespace with
//! nothing but loopback (brought up), so relay, agent and upstream talk
//! over it and a broken guard cannot send a packet off the machine; and a
//! mount namespace where `/etc/hosts` and `/etc/resolv.conf` are private
//! copies, so a test can give names addresses ([`add_hosts`]) and a name
//! it did not add fails to resolve at once (the only name server is
//! `127.0.0.1`, where nothing listens).

use std::process::Command;

/// Whether this process is the isolated re-run. If not, runs the test
/// `name` again in a new user + network + mount namespace and asserts it
/// passed there.
pub fn in_own_netns(name: &str) -> bool {
    if inside() {
        let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(
            links.lines().all(|l| l.contains(": lo:")),
            "expected loopback only: {links}"
        );
        return true;
    }
    let files = tempfile::tempdir().unwrap();
    let hosts = files.path().join("hosts");
    std::fs::copy("/etc/hosts", &hosts).unwrap();
    let resolv = files.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--",
            "sh",
            "-c",
        ])
        .arg(
            r#"ip link set lo up && mount --bind "$2" /etc/hosts && mount --bind "$3" /etc/resolv.conf && exec "$0" --exact "$1" --nocapture"#,
        )
        .arg(&exe)
        .arg(name)
        .arg(&hosts)
        .arg(&resolv)
        .env("TETHER_TEST_NETNS", "1")
        .status()
        .expect("unshare (util-linux) and ip (iproute2) are needed");
    assert!(
        status.success(),
        "{name} failed inside its network namespace"
    );
    false
}

fn inside() -> bool {
    std::env::var_os("TETHER_TEST_NETNS").is_some()
}

/// A test that re-runs itself in its own namespaces (see
/// [`in_own_netns`]) and there runs the async `$body`.
#[macro_export]
macro_rules! netns_test {
    ($name:ident, $body:ident) => {
        #[test]
        fn $name() {
            if $crate::support::netns::in_own_netns(stringify!($name)) {
                $crate::support::netns::runtime().block_on($body());
            }
        }
    };
}

/// The runtime a netns test body runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Gives `name` the address `ip` in this namespace's private `/etc/hosts`.
pub fn add_hosts(entries: &[(&str, &str)]) {
    assert!(inside(), "only inside the test's own mount namespace");
    let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap();
    for (name, ip) in entries {
        hosts.push_str(&format!("{ip} {name}\n"));
    }
    std::fs::write("/etc/hosts", hosts).unwrap();
}

/// Puts the IPv4 address `ip` on this namespace's loopback interface: an
/// address of "the host" that is not in the loopback range, as a pod IP.
pub fn add_loopback_address(ip: &str) {
    assert!(inside(), "only inside the test's own network namespace");
    let status = Command::new("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .status()
        .unwrap();
    assert!(status.success(), "ip addr add {ip}");
}
