//! The process environment, behind a trait so that tests never touch the
//! real one (linkerd2-proxy's `Strings`). Its own module: configuration,
//! egress and the secret stores all read it, none through another.

use std::collections::BTreeMap;

/// Where the process environment is read, behind a trait so that tests
/// never touch the real environment.
pub trait Env {
    /// The variable `name`, if set and UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}
