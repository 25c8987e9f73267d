//! [`SecretString`]: a value that never prints and is wiped on drop.

use std::fmt;

use zeroize::Zeroizing;

/// A secret (agent token, credential, resolved secret value). `Debug` and
/// `Display` print `***`, so a secret cannot reach a log line or an error
/// message by formatting; the memory is zeroed when the last copy drops.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(Zeroizing::new(value))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::SecretString;

    #[test]
    fn formatting_never_shows_the_value() {
        let s = SecretString::from("tta_hunter2".to_owned());
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "tta_hunter2");
    }
}
