//! Turning byte offsets in a config file into `line:column` for errors,
//! and the problems both binaries report at such places.

use std::path::Path;

/// One problem at a place in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// `message` at byte `offset` of `source`.
    pub fn at(source: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(source, offset);
        Self {
            line,
            column,
            message: message.into(),
        }
    }
}

/// `file:line:column: message`, one problem a line (what compilers print,
/// so editors can jump to each).
pub struct Lines<'a>(pub &'a Path, pub &'a [Problem]);

impl std::fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.1.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.0.display(),
                p.line,
                p.column,
                p.message
            )?;
        }
        Ok(())
    }
}

/// 1-based line and column of byte `offset` in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    (line, offset - line_start + 1)
}

/// A configuration file that cannot be used, with where and why: the one
/// error type of both binaries' configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read. The reason is part of the message and
    /// not exposed as `source()`, so that printing the chain does not say
    /// it twice.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The first TOML syntax, unknown-key or type error, or every value
    /// that parses but does not make sense, each at its key, in file order.
    #[error("{}", Lines(path, problems))]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong where (never empty).
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems on one line, `; `-separated, for a log line.
    pub fn one_line(&self) -> String {
        self.to_string().replace('\n', "; ")
    }
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn counts_lines_and_columns_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 8), (2, 3));
        assert_eq!(line_col(src, 999), (3, 1));
    }
}
