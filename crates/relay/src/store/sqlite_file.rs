//! The SQLite database file is created readable by its owner only.
//!
//! It holds token and key hashes, account names and credential events:
//! nothing another local user should read. SQLite creates the file with
//! the process's umask (0644 under the usual 022), and its `-wal` and
//! `-shm` files with the mode of the database file; so creating the
//! database file 0600 before SQLite opens it covers all three.

use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;

/// Creates the database file of `url` (a `sqlite:` URL), empty and mode
/// 0600, if it does not exist yet. In-memory databases are left alone; an
/// existing file keeps its mode, with a warning if others may read it.
pub(super) fn create_private(url: &str) {
    let Some(path) = file_of(url) else {
        return;
    };
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    match created {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(&path).map_or(0, |m| m.permissions().mode());
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                    "the store file is readable by other users: chmod 600 it");
            }
        }
        // A missing directory and the like: SQLite says so when it opens.
        Err(_) => {}
    }
}

/// The file a `sqlite:` URL names, unless it is an in-memory database.
fn file_of(url: &str) -> Option<PathBuf> {
    if url.contains("mode=memory") {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let path = options.get_filename();
    let name = path.to_str()?;
    (!name.is_empty() && name != ":memory:" && !name.starts_with("file:"))
        .then(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_urls() {
        assert_eq!(
            file_of("sqlite:///var/lib/tether/relay.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/tether/relay.db"))
        );
        assert_eq!(
            file_of("sqlite://relay.db"),
            Some(PathBuf::from("relay.db"))
        );
        assert_eq!(file_of("sqlite::memory:"), None);
        assert_eq!(file_of("sqlite://x.db?mode=memory"), None);
    }

    #[test]
    fn a_new_file_is_0600_and_an_existing_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        create_private(&format!("sqlite://{}?mode=rwc", path.display()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let old = dir.path().join("old.db");
        std::fs::write(&old, b"data").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();
        create_private(&format!("sqlite://{}", old.display()));
        assert_eq!(std::fs::read(&old).unwrap(), b"data");
        let mode = std::fs::metadata(&old).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
