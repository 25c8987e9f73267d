//! `[audit]`: where the audit lines go and whether they are required.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::Problems;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    file: Option<PathBuf>,
    required: Option<bool>,
}

/// `[audit]` validated: the file, and whether a request waits for its
/// line (default true with a file).
pub(super) fn validate(
    raw: Option<Spanned<RawAudit>>,
    problems: &mut Problems<'_>,
) -> (Option<PathBuf>, bool) {
    let Some(raw) = raw else {
        return (None, false);
    };
    let span = raw.span();
    let audit = raw.into_inner();
    match (audit.file, audit.required) {
        (None, Some(true)) => {
            problems.at(
                span,
                "[audit] required = true needs [audit] file (the log stream cannot refuse)",
            );
            (None, false)
        }
        (file, required) => {
            let required = file.is_some() && required.unwrap_or(true);
            (file, required)
        }
    }
}
