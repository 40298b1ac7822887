//! `hoist::config::Config::parse`: the agent's `hoist.toml`. Every `env:` secret resolves to a
//! fixed value and every `file:` one fails, so that parsing never reads the machine's files.
#![no_main]

use std::path::Path;

use hoist::config::{Config, SecretSource};
use libfuzzer_sys::fuzz_target;

struct Fixed;

impl SecretSource for Fixed {
    fn env(&self, _name: &str) -> Option<String> {
        Some("fuzz-secret-value".to_string())
    }

    fn file(&self, _path: &Path) -> std::io::Result<String> {
        Err(std::io::Error::other("no files while fuzzing"))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse("hoist.toml", text, &Fixed) {
        // Errors render (they name the file, line and key).
        let _ = e.to_string();
    }
});
