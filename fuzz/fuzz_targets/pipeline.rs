//! `hoist::pipeline::parse`: a `.hoist.yml` from any branch of any configured repository.
//! Besides "no panic": a valid pipeline's derived views (the step graph, what runs on the
//! agent) work, and problems render as `hoist validate` prints them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match hoist::pipeline::parse(text) {
        Ok(p) => {
            let needs = p.needs();
            assert_eq!(needs.len(), p.steps.len());
            let _ = p.runs_on_agent();
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "an invalid pipeline must say why");
            let _ = hoist::pipeline::format_problems(".hoist.yml", &problems);
        }
    }
});
