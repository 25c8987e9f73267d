//! Route policies as code (DESIGN.md, "policy as code"): a route's
//! `policy = "file.rego"` evaluated in the agent with regorus, after the
//! method/path and users/groups rules (all must allow).
//!
//! - Query `data.tether.allow`: only `true` allows; `data.tether.reason`
//!   (a string, at most [`MAX_REASON`] characters, control characters
//!   removed) goes into the 403 detail.
//! - Evaluation is bounded by regorus's execution timer
//!   ([`EVAL_LIMIT`]) and fails closed: an error or a timeout denies, and
//!   the agent's log says why.
//! - `input`: [`input::Input`], built from the caller's request before
//!   anything is injected, without credentials.
//! - [`test`]: `tether-agent policy test FILE…`.

pub mod input;
pub mod test;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;

/// How long one evaluation may run before it is stopped (and denies).
pub const EVAL_LIMIT: Duration = Duration::from_millis(100);

/// Longest `data.tether.reason` passed to the caller, in characters.
pub const MAX_REASON: usize = 200;

/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// Engines kept ready per policy (one is cloned when all are busy).
const POOL: usize = 16;

/// The rule that decides.
const ALLOW: &str = "data.tether.allow";
/// The optional rule that explains.
const REASON: &str = "data.tether.reason";

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("policy {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The file does not compile (regorus's message names file:line).
    #[error("policy {path}: {message}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// regorus's message.
        message: String,
    },
}

/// What a policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether `data.tether.allow` is `true`.
    pub allow: bool,
    /// `data.tether.reason`, cleaned, if it is a string.
    pub reason: Option<String>,
}

/// A compiled policy, ready to evaluate.
pub struct Policy {
    path: PathBuf,
    /// Compiled engine, cloned into the pool.
    template: regorus::Engine,
    pool: Mutex<Vec<regorus::Engine>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("path", &self.path).finish()
    }
}

/// An engine with `files` loaded and the execution timer set.
fn engine(files: &[&Path]) -> Result<regorus::Engine, PolicyError> {
    let mut engine = regorus::Engine::new();
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: EVAL_LIMIT,
        check_interval: NonZeroU32::MIN.saturating_add(63),
    });
    for path in files {
        let text = read(path)?;
        engine
            .add_policy(path.display().to_string(), text)
            .map_err(|e| PolicyError::Compile {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    }
    Ok(engine)
}

fn read(path: &Path) -> Result<String, PolicyError> {
    let failed = |reason| PolicyError::Read {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(failed)?;
    if meta.len() > MAX_POLICY_BYTES {
        return Err(failed(std::io::Error::other(format!(
            "over {MAX_POLICY_BYTES} bytes"
        ))));
    }
    std::fs::read_to_string(path).map_err(failed)
}

impl Policy {
    /// Reads and compiles `path` (parsed, analysed and `data.tether.allow`
    /// compiled, nothing evaluated), so an error surfaces here, not on the
    /// first request.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let mut template = engine(&[path])?;
        template
            .compile_with_entrypoint(&regorus::Rc::from(ALLOW))
            .map_err(|e| PolicyError::Compile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_owned(),
            template,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The file the policy came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Evaluates the policy for `input`; any error denies (fail closed)
    /// and is logged with the request id.
    pub fn evaluate(&self, input: &input::Input, request_id: &str) -> Decision {
        let mut engine = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| self.template.clone());
        let decision = evaluate(&mut engine, input);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL {
            pool.push(engine);
        }
        drop(pool);
        match decision {
            Ok(decision) => decision,
            Err(e) => {
                tracing::warn!(request_id, policy = %self.path.display(), error = %e,
                    "policy evaluation failed; the request is denied");
                Decision {
                    allow: false,
                    reason: Some("policy evaluation failed".into()),
                }
            }
        }
    }
}

fn evaluate(engine: &mut regorus::Engine, input: &input::Input) -> anyhow::Result<Decision> {
    engine.set_input(regorus::Value::from(input.to_json()));
    let allow = engine.eval_rule(ALLOW.to_owned())?;
    let allow = allow == regorus::Value::from(true);
    let reason = match engine.eval_rule(REASON.to_owned()) {
        Ok(value) => value.as_string().ok().map(|r| clean_reason(r)),
        Err(_) => None,
    };
    Ok(Decision { allow, reason })
}

/// At most [`MAX_REASON`] characters, control characters removed.
fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn policy(text: &str) -> (tempfile::NamedTempFile, Result<Policy, PolicyError>) {
        let mut file = tempfile::Builder::new().suffix(".rego").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let policy = Policy::load(file.path());
        (file, policy)
    }

    fn input(method: &str, user: Option<&str>) -> input::Input {
        input::Input {
            method: method.into(),
            path: "/api/v1/pods".into(),
            query: String::new(),
            headers: Default::default(),
            upgrade: None,
            route: "k8s".into(),
            caller_key_id: "0123456789abcdef".into(),
            user: user.map(str::to_owned),
            groups: vec!["group:default/platform".into()],
        }
    }

    #[test]
    fn allow_and_reason_come_from_the_policy() {
        let (_f, p) = policy(
            r#"package tether
default allow := false
allow if { input.method == "GET"; "group:default/platform" in input.groups }
reason := sprintf("%s is read-only for %s\u0007", [input.route, input.user]) if not allow
"#,
        );
        let p = p.unwrap();
        assert!(p.evaluate(&input("GET", Some("jane")), "r").allow);
        let denied = p.evaluate(&input("POST", Some("jane")), "r");
        assert!(!denied.allow);
        assert_eq!(denied.reason.as_deref(), Some("k8s is read-only for jane"));
    }

    #[test]
    fn anything_but_true_denies_and_errors_fail_closed() {
        let (_f, p) = policy("package tether\nallow := \"yes\"\n");
        assert!(!p.unwrap().evaluate(&input("GET", None), "r").allow);
        let (_f, p) = policy("package tether\nallow if { 1 / 0 == 1 }\n");
        assert!(!p.unwrap().evaluate(&input("GET", None), "r").allow);
        let (_f, p) = policy("package tether\nallow if {\n");
        assert!(matches!(p, Err(PolicyError::Compile { .. })));
    }

    #[test]
    fn reasons_are_cut_and_cleaned() {
        let long = "é".repeat(300) + "\r\n";
        let cleaned = clean_reason(&format!("a\r\nb{long}"));
        assert!(cleaned.starts_with("abé"));
        assert_eq!(cleaned.chars().count(), MAX_REASON);
    }

    #[test]
    fn a_slow_policy_is_stopped_and_denies() {
        // Run to its end, this would allow (25 million steps, none matching).
        let (_f, p) = policy(
            "package tether\nallow if { not slow }\nslow if { some i in numbers.range(1, 5000); some j in numbers.range(1, 5000); i * j == -1 }\n",
        );
        let decision = p.unwrap().evaluate(&input("GET", None), "r");
        assert!(!decision.allow);
    }
}
