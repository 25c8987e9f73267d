//! Path normalisation and rule matching never panic, and a normalised path
//! never contains a segment that an upstream could read as `.` or `..`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_agent::policy::{PathRule, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rule, path) = text.split_once('\n').unwrap_or(("/**", text));
    if let Ok(normalized) = normalize(path) {
        assert!(normalized.starts_with('/'));
        assert!(!normalized.contains("//"), "{normalized:?}");
        for segment in normalized.split('/') {
            let head = segment.split(';').next().unwrap_or("");
            let decoded = head.to_ascii_lowercase().replace("%2e", ".");
            assert!(decoded != "." && decoded != "..", "{normalized:?} from {path:?}");
        }
        // Normalising is idempotent: what is checked is what is sent.
        assert_eq!(normalize(&normalized).as_deref(), Ok(normalized.as_str()));
        if let Ok(rule) = PathRule::parse(rule) {
            let _ = rule.matches(&normalized);
        }
    }
});
