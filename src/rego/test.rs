//! `tether-agent policy test FILE…`: the files loaded together (a policy
//! and its tests, as `opa test` does), then every rule whose name starts
//! with `test_` evaluated; a test passes only if it is `true`.

use std::path::{Path, PathBuf};

use super::{PolicyError, engine, read};

/// One test's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The file that defines it.
    pub file: PathBuf,
    /// `data.<package>.<rule>`.
    pub rule: String,
    /// Whether it evaluated to `true`.
    pub passed: bool,
    /// What it evaluated to otherwise (`undefined`, `false`, an error).
    pub detail: Option<String>,
}

/// Runs the `test_` rules of `files`; errors only if a file cannot be read
/// or compiled.
pub fn run(files: &[PathBuf]) -> Result<Vec<Outcome>, PolicyError> {
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let mut engine = engine(&paths)?;
    engine.set_input(regorus::Value::new_object());
    let mut outcomes = Vec::new();
    for file in files {
        let text = read(file)?;
        let Some(package) = package(&text) else {
            continue;
        };
        for name in test_rules(&text) {
            let rule = format!("data.{package}.{name}");
            let (passed, detail) = match engine.eval_rule(rule.clone()) {
                Ok(v) if v == regorus::Value::from(true) => (true, None),
                Ok(regorus::Value::Undefined) => (false, Some("undefined".to_owned())),
                Ok(v) => (false, Some(v.to_string())),
                Err(e) => (false, Some(e.to_string())),
            };
            outcomes.push(Outcome {
                file: file.clone(),
                rule,
                passed,
                detail,
            });
        }
    }
    Ok(outcomes)
}

/// The `package` line's path.
fn package(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix("package "))
        .map(|p| p.split('#').next().unwrap_or(p).trim())
}

/// Names of the rules starting with `test_` (defined at the start of a
/// line), each once, in order.
fn test_rules(text: &str) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for line in text.lines() {
        if !line.starts_with("test_") {
            continue;
        }
        let end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(line.len());
        let name = &line[..end];
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_packages_and_test_rules() {
        let text = "package tether.k8s_test # tests\n\ntest_get if { true }\ntest_get if { false }\n  test_no := 1\ntest_post := true\n";
        assert_eq!(package(text), Some("tether.k8s_test"));
        assert_eq!(test_rules(text), ["test_get", "test_post"]);
    }
}
