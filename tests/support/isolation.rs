//! Tests that re-run themselves in namespaces of their own: a network
//! namespace with only loopback (nothing a broken guard does can leave the
//! machine) and, for a full-disk stand-in, a mount namespace with a tiny
//! tmpfs.

use std::path::PathBuf;
use std::process::Command;

/// Set in the re-run.
const ISOLATED: &str = "TETHER_TEST_ISOLATED";
/// Where the re-run's tmpfs is mounted.
const TMPFS: &str = "TETHER_TEST_TMPFS";

/// What the re-run gets besides its own loopback-only network.
#[derive(Clone, Copy, Default)]
pub struct Isolation {
    /// A tmpfs of this size (e.g. `"64k"`), at [`tmpfs_dir`].
    pub tmpfs: Option<&'static str>,
}

/// Whether this process is the isolated re-run. If not, runs the test
/// `name` again in a new user + network namespace (loopback only, brought
/// up), with a mount namespace and a tmpfs if asked, and asserts it passed
/// there.
pub fn in_isolation(name: &str, isolation: Isolation) -> bool {
    if std::env::var_os(ISOLATED).is_some() {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let mount_point = tempfile::tempdir().unwrap();
    let mut flags = vec!["--user", "--map-root-user", "--net"];
    let mut script = String::from("ip link set lo up");
    if let Some(size) = isolation.tmpfs {
        flags.push("--mount");
        script.push_str(&format!(
            r#" && mount -t tmpfs -o size={size},mode=0700 tmpfs "${TMPFS}""#
        ));
    }
    script.push_str(r#" && exec "$0" --exact "$1" --nocapture"#);
    let status = Command::new("unshare")
        .args(&flags)
        .args(["--", "sh", "-c", &script])
        .arg(&exe)
        .arg(name)
        .env(ISOLATED, "1")
        .env(TMPFS, mount_point.path())
        .status()
        .expect("unshare (util-linux), ip (iproute2) and mount are needed");
    assert!(status.success(), "{name} failed inside its namespaces");
    false
}

/// The tmpfs of the isolated re-run.
pub fn tmpfs_dir() -> PathBuf {
    PathBuf::from(std::env::var_os(TMPFS).expect("only inside in_isolation"))
}

/// A test that re-runs itself isolated (see [`in_isolation`]) and there
/// runs the async `$body` on a two-thread runtime.
#[macro_export]
macro_rules! isolated_test {
    ($name:ident, $isolation:expr, $body:ident) => {
        #[test]
        fn $name() {
            if support::isolation::in_isolation(stringify!($name), $isolation) {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on($body());
            }
        }
    };
}
