//! Any config text yields a config or an error with a location, never a
//! panic.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tether_agent::config::AgentConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let env: BTreeMap<String, String> = BTreeMap::new();
        if let Err(e) = AgentConfig::parse(Path::new("fuzz.toml"), text, &env) {
            assert!(e.to_string().starts_with("fuzz.toml:"));
        }
    }
});
