//! Tokens pushed by the relay on rotation, and the way back when a pushed
//! token does not work.
//!
//! With `[relay] accept_rotation = true` and `token_file`, a rotation notice
//! may carry a new token (the relay's admin API rotated it). The relay is
//! not trusted with the agent's credential, so a pushed token is written
//! only if ([`judge`]):
//! - it is a well-formed agent token, `tta_<16 hex>_<64 hex>` and nothing
//!   else (no whitespace, CR, LF or other bytes);
//! - its id equals the id of the token *in use* (read from `token_file`),
//!   whatever id the notice itself claims: a relay cannot move the agent
//!   to another token (another account's, or its own);
//! - it is not the token in use, nor one the relay already refused at a
//!   handshake (`token_file.refused`);
//! - the token in use was itself accepted by the relay at a handshake
//!   (not a pushed token no session has proven yet): so `.prev` only ever
//!   holds a token that worked, however many notices a relay sends.
//!
//! Anything else is refused and logged (never the token); `token_file` is
//! left untouched.
//!
//! An accepted token does not replace the one in use blindly: the token in
//! use is first kept in `token_file.prev` (mode 0600). If the relay then
//! refuses the new token at the handshake (401), the session is retried
//! with `.prev` ([`previous`]); once that is accepted it is put back into
//! `token_file` and the refused token is moved to `token_file.refused`
//! ([`restore`]). So a relay pushing a well-formed but wrong secret cannot
//! lock the agent out, and the agent does not flap: from then on it uses the
//! token that works, and refuses the same push again. The log (and
//! `tether_agent_token_rotations_total`) says what happened.

use std::path::{Path, PathBuf};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tether_wire::protocol::{self, RotationNotice};
use tether_wire::{BoxBody, ErrorCode, Problem};

use crate::metrics::{Metrics, RotationOutcome};
use crate::secret::SecretString;

/// 9999-12-31T23:59:59Z, the last time RFC 3339 can write.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// Why a pushed token is not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not `tta_<16 hex>_<64 hex>`.
    #[error("the pushed token is not a well-formed agent token")]
    Malformed,
    /// The token in use could not be parsed, so nothing can match it.
    #[error(
        "the token in token_file is not a well-formed agent token; a pushed token cannot be matched to it"
    )]
    CurrentMalformed,
    /// Another token id than the one in use.
    #[error("the pushed token has another id than the token in use")]
    OtherId,
    /// The relay refused this very token at a handshake before.
    #[error("the relay refused this token at a handshake before (token_file.refused)")]
    RefusedBefore,
    /// The token in `token_file` has not been accepted at a handshake yet
    /// (it was pushed and no session has used it): replacing it would put
    /// an unproven token in `.prev`, and two pushes in a row would leave
    /// no working token on disk.
    #[error(
        "the token in token_file has not been accepted by the relay yet; a new one waits until it is"
    )]
    Unconfirmed,
}

/// What [`judge`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Accept,
    /// It is the token in use already: nothing to do.
    Unchanged,
}

/// Whether `pushed` may replace `current`, the token in use; `refused` is
/// the token the relay refused before, if any. Pure: see the module docs.
pub fn judge(current: &str, pushed: &str, refused: Option<&str>) -> Result<Verdict, Refusal> {
    let pushed_id = protocol::agent_token_id(pushed).ok_or(Refusal::Malformed)?;
    let current_id = protocol::agent_token_id(current).ok_or(Refusal::CurrentMalformed)?;
    if pushed_id != current_id {
        return Err(Refusal::OtherId);
    }
    if pushed == current {
        return Ok(Verdict::Unchanged);
    }
    if refused == Some(pushed) {
        return Err(Refusal::RefusedBefore);
    }
    Ok(Verdict::Accept)
}

/// `token_file` and the two files kept beside it.
struct TokenFiles {
    current: PathBuf,
    /// The token in use before the last accepted push.
    prev: PathBuf,
    /// A pushed token the relay refused at the handshake.
    refused: PathBuf,
}

impl TokenFiles {
    fn new(path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "token".into());
        Self {
            current: path.to_owned(),
            prev: path.with_file_name(format!("{name}.prev")),
            refused: path.with_file_name(format!("{name}.refused")),
        }
    }
}

/// Serialises every change to the token files of this process (there is
/// one `token_file`): a notice being written and a session restoring
/// `.prev` must not interleave.
static FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The last token the relay accepted at a handshake, per token file: only
/// such a token may become `.prev`.
static CONFIRMED: std::sync::Mutex<Option<(PathBuf, SecretString)>> = std::sync::Mutex::new(None);

/// Records that the relay accepted `token`, read from `path`, at a
/// handshake.
pub fn confirm(path: &Path, token: &SecretString) {
    let mut confirmed = CONFIRMED.lock().unwrap_or_else(|p| p.into_inner());
    *confirmed = Some((path.to_owned(), token.clone()));
}

fn is_confirmed(path: &Path, token: &SecretString) -> bool {
    let confirmed = CONFIRMED.lock().unwrap_or_else(|p| p.into_inner());
    confirmed
        .as_ref()
        .is_some_and(|(p, t)| p == path && t == token)
}

/// Reads a token file, trimmed as the agent reads its token; `None` if
/// missing or unreadable.
fn read(path: &Path) -> Option<SecretString> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| SecretString::from(s.trim().to_owned()))
}

/// Why writing a pushed token did not happen.
#[derive(Debug, thiserror::Error)]
enum AcceptError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("reading token_file: {0}")]
    Read(std::io::Error),
    #[error("writing token_file.prev or token_file: {0}")]
    Write(std::io::Error),
}

/// Checks `pushed` against the token in `files.current` and, if accepted,
/// keeps the token in use in `.prev` and writes `pushed`.
fn accept(files: &TokenFiles, pushed: &SecretString) -> Result<Verdict, AcceptError> {
    let _one = FILES.lock().unwrap_or_else(|p| p.into_inner());
    let current = std::fs::read_to_string(&files.current)
        .map(|s| SecretString::from(s.trim().to_owned()))
        .map_err(AcceptError::Read)?;
    let refused = read(&files.refused);
    let verdict = judge(
        current.expose(),
        pushed.expose(),
        refused.as_ref().map(SecretString::expose),
    )?;
    if verdict == Verdict::Accept {
        if !is_confirmed(&files.current, &current) {
            return Err(Refusal::Unconfirmed.into());
        }
        write_token(&files.prev, &current).map_err(AcceptError::Write)?;
        write_token(&files.current, pushed).map_err(AcceptError::Write)?;
    }
    Ok(verdict)
}

/// A rotation notice from the relay. Logged always; with `token_file` set
/// (`accept_rotation = true`) a pushed token is written if [`judge`]
/// accepts it. Answers 204, 403 `denied` for a refused token, 400 for a
/// notice that is not one.
pub async fn handle_notice(
    req: Request<Incoming>,
    token_file: Option<&Path>,
    metrics: &Metrics,
) -> Response<BoxBody> {
    let notice = http_body_util::Limited::new(req.into_body(), 4096)
        .collect()
        .await
        .ok()
        .and_then(|c| serde_json::from_slice::<RotationNotice>(&c.to_bytes()).ok());
    let Some(notice) = notice else {
        return Problem::new(ErrorCode::BadRequest, "not a rotation notice").into_response();
    };
    // Relay-chosen: a time past year 9999 (or one overflowing SystemTime)
    // is not formatted.
    let until = notice
        .valid_until
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t <= LAST_RFC3339_SECOND)
        .and_then(|t| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t)))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into());
    // The id the relay claims goes to the log only if it looks like one:
    // it is relay-chosen text.
    let claimed_id = if notice.token_id.len() == protocol::CREDENTIAL_ID_HEX
        && notice.token_id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        notice.token_id.clone()
    } else {
        "(malformed)".to_owned()
    };
    let no_content = || {
        let mut answer = Response::new(tether_wire::empty_body());
        *answer.status_mut() = StatusCode::NO_CONTENT;
        answer
    };
    let (Some(path), Some(pushed)) = (token_file, notice.token) else {
        tracing::warn!(token_id = %claimed_id, valid_until = %until,
            "the relay rotated this agent's token: put the new token in token_file before the old one stops working");
        return no_content();
    };
    let pushed = SecretString::from(pushed);
    let files = TokenFiles::new(path);
    let result = tokio::task::spawn_blocking(move || accept(&files, &pushed)).await;
    match result {
        Ok(Ok(Verdict::Accept)) => {
            metrics.token_rotation(RotationOutcome::Accepted);
            tracing::info!(token_id = %claimed_id, valid_until = %until,
                "the relay rotated this agent's token; the new one is written to token_file, the previous one kept in token_file.prev");
            no_content()
        }
        Ok(Ok(Verdict::Unchanged)) => {
            tracing::info!(token_id = %claimed_id, "rotation notice: the pushed token is already in use");
            no_content()
        }
        Ok(Err(AcceptError::Refused(why))) => {
            metrics.token_rotation(RotationOutcome::Refused);
            tracing::warn!(token_id = %claimed_id, reason = %why,
                "rotation notice refused: token_file left unchanged");
            Problem::new(ErrorCode::Denied, format!("rotated token refused: {why}")).into_response()
        }
        Ok(Err(e)) => {
            metrics.token_rotation(RotationOutcome::Failed);
            tracing::error!(token_id = %claimed_id, error = %e,
                "could not write the rotated token; update token_file before {until}");
            no_content()
        }
        Err(e) => {
            metrics.token_rotation(RotationOutcome::Failed);
            tracing::error!(error = %e, "token write task failed");
            no_content()
        }
    }
}

/// The token to retry the handshake with after the relay refused
/// `refused` (401): `token_file.prev`, if it is a well-formed token with
/// the same id and another secret.
pub async fn previous(path: &Path, refused: &SecretString) -> Option<SecretString> {
    let files = TokenFiles::new(path);
    let refused = refused.clone();
    tokio::task::spawn_blocking(move || {
        let prev = read(&files.prev)?;
        let id = protocol::agent_token_id(prev.expose())?;
        let same_id = protocol::agent_token_id(refused.expose()) == Some(id);
        (same_id && prev != refused).then_some(prev)
    })
    .await
    .ok()
    .flatten()
}

/// `previous` was accepted where `refused` was not: if `token_file` still
/// holds `refused`, `previous` goes back into it and `refused` is kept in
/// `token_file.refused` (so the same push is refused next time). Whether
/// the files were changed.
pub async fn restore(
    path: &Path,
    refused: &SecretString,
    previous: &SecretString,
) -> std::io::Result<bool> {
    let files = TokenFiles::new(path);
    let (refused, previous) = (refused.clone(), previous.clone());
    tokio::task::spawn_blocking(move || {
        let _one = FILES.lock().unwrap_or_else(|p| p.into_inner());
        if read(&files.current).as_ref() != Some(&refused) {
            // Changed meanwhile (another session restored it, or the
            // operator wrote a new token): leave it.
            return Ok(false);
        }
        write_token(&files.refused, &refused)?;
        write_token(&files.current, &previous)?;
        Ok(true)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Replaces `path` with `token`: a temp file beside it (mode 0600), synced,
/// renamed over it, so a reader never sees half a token.
fn write_token(path: &Path, token: &SecretString) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "token".into());
    let tmp = path.with_file_name(format!(".{name}.new-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(token.expose().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, fill: char) -> String {
        format!("tta_{id}_{}", fill.to_string().repeat(64))
    }

    const ID: &str = "0123456789abcdef";
    const OTHER: &str = "fedcba9876543210";

    #[test]
    fn only_a_well_formed_token_of_the_id_in_use_is_accepted() {
        let current = token(ID, 'a');
        assert_eq!(judge(&current, &token(ID, 'b'), None), Ok(Verdict::Accept));
        assert_eq!(judge(&current, &current, None), Ok(Verdict::Unchanged));
        assert_eq!(
            judge(&current, &token(OTHER, 'b'), None),
            Err(Refusal::OtherId)
        );
        for bad in [
            format!("{}\r\nX-Injected: 1", token(ID, 'b')),
            format!("{}\n", token(ID, 'b')),
            format!("tta_{ID}_{}", "b".repeat(63)),
            format!("tta_{ID}_{}", "B".repeat(64)),
            format!("ttk_{ID}_{}", "b".repeat(64)),
            "garbage".to_owned(),
        ] {
            assert_eq!(
                judge(&current, &bad, None),
                Err(Refusal::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            judge("not-a-token", &token(ID, 'b'), None),
            Err(Refusal::CurrentMalformed)
        );
        let refused = token(ID, 'c');
        assert_eq!(
            judge(&current, &refused, Some(&refused)),
            Err(Refusal::RefusedBefore)
        );
    }

    #[test]
    fn accepting_keeps_the_previous_token_and_restore_undoes_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let files = TokenFiles::new(&path);
        let old = SecretString::from(token(ID, 'a'));
        let new = SecretString::from(token(ID, 'b'));
        std::fs::write(&path, format!("{}\n", old.expose())).unwrap();

        assert!(matches!(
            accept(&files, &SecretString::from(token(OTHER, 'b'))),
            Err(AcceptError::Refused(Refusal::OtherId))
        ));
        assert!(!files.prev.exists(), "nothing written on a refusal");
        // Not yet accepted at a handshake: nothing may replace it.
        assert!(matches!(
            accept(&files, &new),
            Err(AcceptError::Refused(Refusal::Unconfirmed))
        ));
        assert!(!files.prev.exists());
        confirm(&path, &old);
        assert_eq!(accept(&files, &new).unwrap(), Verdict::Accept);
        assert_eq!(read(&files.current), Some(new.clone()));
        assert_eq!(read(&files.prev), Some(old.clone()));
        // A second push before any session used the first: refused, so
        // `.prev` keeps the token the relay accepted.
        let third = SecretString::from(token(ID, 'c'));
        assert!(matches!(
            accept(&files, &third),
            Err(AcceptError::Refused(Refusal::Unconfirmed))
        ));
        assert_eq!(read(&files.current), Some(new.clone()));
        assert_eq!(read(&files.prev), Some(old.clone()));
        let mode = std::fs::metadata(&files.prev).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(previous(&path, &new).await, Some(old.clone()));
            assert!(restore(&path, &new, &old).await.unwrap());
            // Restored once: a second session finds nothing to do.
            assert!(!restore(&path, &new, &old).await.unwrap());
            // The previous token is the one in use now: no fallback loop.
            assert_eq!(previous(&path, &old).await, None);
        });
        assert_eq!(read(&files.current), Some(old));
        assert_eq!(read(&files.refused), Some(new.clone()));
        // The relay pushing the refused token again changes nothing.
        assert!(matches!(
            accept(&files, &new),
            Err(AcceptError::Refused(Refusal::RefusedBefore))
        ));
    }
}
