//! `hoist::image::dockerignore`: `.dockerignore` rules from the repository against paths of
//! the build context. The input's last line is the path, the lines before it the rules.
//! Matching must stay linear: run with `-timeout` so a pattern that backtracks is a finding.
#![no_main]

use hoist::image::dockerignore::Ignore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rules, path) = text.rsplit_once('\n').unwrap_or(("", text));
    if let Ok(ignore) = Ignore::parse(rules) {
        let _ = ignore.excludes(path);
        let _ = ignore.may_include_under(path);
    }
});
