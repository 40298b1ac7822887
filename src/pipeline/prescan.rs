//! The hostile-YAML pre-scan: a `.hoist.yml` comes from whoever can push, so before it is
//! deserialized it is size-capped and its parser events are measured for alias bombs ("billion
//! laughs") and deep nesting. The limits here also size the budgets of [`super::raw`], the
//! second line of defence, and its messages for the same breaches.

use serde_saphyr::granit_parser::{Event, Parser, Span};

use super::Problem;

/// Larger than any sensible pipeline by two orders of magnitude; refused before parsing so a
/// hostile push cannot make the agent hold or scan megabytes of YAML.
pub(super) const MAX_FILE_BYTES: usize = 1024 * 1024;

/// Deepest nesting accepted; the deepest real path (`steps[].deploy.health.http.port`) is 6.
pub(super) const MAX_DEPTH: usize = 32;

/// Nodes the document may have with every alias expanded; real pipelines have hundreds.
const MAX_EXPANDED_NODES: u64 = 100_000;

pub(super) const TOO_MANY_ALIASES: &str = "the pipeline file uses too many aliases (`*name`) \
     or expands them too far (a YAML \"billion laughs\"?); write the values out instead";
pub(super) const TOO_LARGE: &str =
    "the pipeline file is too large (too many values); split long lists or remove repetition";
// The number is MAX_DEPTH's.
pub(super) const TOO_DEEP: &str = "the pipeline file is nested too deeply (more than 32 levels)";

/// Refuse what no real pipeline is before anything deserializes it: a file over
/// [`MAX_FILE_BYTES`], too deep, or too large once its aliases are expanded.
pub(super) fn prescan(text: &str) -> Result<(), Problem> {
    if text.len() > MAX_FILE_BYTES {
        // A whole-file problem: its place is the start.
        return Err(Problem {
            line: 1,
            column: 1,
            message: format!(
                "the pipeline file is too large ({} bytes, at most {MAX_FILE_BYTES}); a pipeline \
                 this size is almost certainly not meant as one",
                text.len()
            ),
        });
    }
    scan_events(text)
}

/// One pass over the parser's events, before deserializing, measuring what the document
/// *would* be with every alias expanded, without expanding anything. serde-saphyr's budgets
/// only act on what deserialization consumes, and it stops at the first unknown key or type
/// error, so a bomb could otherwise be refused for a misleading reason, or at all only by
/// chance of where it sits. This catches it wherever it is, at the alias that tips it over.
/// Syntax errors are left to serde-saphyr, whose messages are better.
fn scan_events(text: &str) -> Result<(), Problem> {
    let place = |span: &Span, message: &str| Problem {
        line: span.start.line(),
        column: span.start.col().saturating_add(1),
        message: message.to_string(),
    };
    // Expanded size of each closed anchored node, by anchor id.
    let mut sizes: std::collections::HashMap<usize, u64> = std::collections::HashMap::new();
    // Open collections: their anchor id (0 for none) and the running count when they opened.
    let mut open: Vec<(usize, u64)> = Vec::new();
    let mut expanded: u64 = 0;
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else {
            return Ok(());
        };
        match event {
            Event::Scalar(_, _, anchor, _) => {
                expanded = expanded.saturating_add(1);
                if anchor != 0 {
                    sizes.insert(anchor, 1);
                }
            }
            Event::SequenceStart(_, anchor, _) | Event::MappingStart(_, anchor, _) => {
                open.push((anchor, expanded));
                expanded = expanded.saturating_add(1);
                if open.len() > MAX_DEPTH {
                    return Err(place(&span, TOO_DEEP));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, start)) = open.pop()
                    && anchor != 0
                {
                    sizes.insert(anchor, expanded.saturating_sub(start));
                }
            }
            // An alias of a still-open anchor (a cycle) counts as one; serde-saphyr refuses it.
            Event::Alias(id) => {
                expanded = expanded.saturating_add(sizes.get(&id).copied().unwrap_or(1));
            }
            _ => continue,
        }
        if expanded > MAX_EXPANDED_NODES {
            let message = if matches!(event, Event::Alias(_)) {
                TOO_MANY_ALIASES
            } else {
                TOO_LARGE
            };
            return Err(place(&span, message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse;
    use crate::pipeline::testing::check;
    use std::time::Duration;

    #[test]
    fn billion_laughs_is_refused_quickly() {
        // The classic: ten levels of nine aliases, 9^9 strings if expanded.
        let mut bomb = String::from(
            "app: web\nenv:\n  A0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
        );
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            bomb.push_str(&format!("  A{i}: &a{i} [{refs}]\n"));
        }
        bomb.push_str("steps:\n  - {name: t, shell: [a]}\n");
        let started = std::time::Instant::now();
        let problems = parse(&bomb).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("too many aliases"),
            "{problems:?}"
        );
        assert!(problems[0].line >= 5, "{problems:?}");

        // Many aliases of one small value, where deserialization would accept every one.
        let flood = format!(
            "app: web\nsteps:\n  - name: t\n    shell: [&x a, {}]\n",
            vec!["*x"; 5000].join(", ")
        );
        let problems = parse(&flood).unwrap_err();
        assert!(
            problems[0].message.contains("too many aliases"),
            "{problems:?}"
        );
        // A few aliases are fine.
        check(
            "app: web\nenv: {A: &v x}\nsteps:\n  - {name: t, shell: [*v, *v]}\n",
            "ok",
        );
    }

    #[test]
    fn deep_nesting_and_huge_files_are_refused() {
        let deep = format!(
            "app: web\nsteps: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let started = std::time::Instant::now();
        check(
            &deep,
            ".hoist.yml:2:40: the pipeline file is nested too deeply (more than 32 levels)",
        );
        assert!(started.elapsed() < Duration::from_millis(200));

        let mut block = String::from("app: web\nsteps:\n");
        for depth in 0..40 {
            block.push_str(&format!("{}- \n", "  ".repeat(depth + 1)));
        }
        check(
            &block,
            ".hoist.yml:34:65: the pipeline file is nested too deeply (more than 32 levels)",
        );

        let huge = format!("app: web\n# {}\n", "x".repeat(MAX_FILE_BYTES));
        check(
            &huge,
            &format!(
                ".hoist.yml:1:1: the pipeline file is too large ({} bytes, at most 1048576); a pipeline this size is almost certainly not meant as one",
                huge.len()
            ),
        );
    }

    #[test]
    fn no_input_panics() {
        // Every truncation of the fullest example: unclosed brackets, half keys, cut scalars.
        let full = include_str!("../../pipelines/full.yml");
        // Every 11th cut keeps the test near a second in debug builds.
        for (i, _) in full.char_indices().step_by(11) {
            let _ = parse(&full[..i]);
        }
        for text in [
            "\u{0}",
            "\u{feff}app: web",
            "- a",
            "42",
            "~",
            "&a [*a]",
            "app: !!binary x",
            "? [a]\n: b",
        ] {
            let _ = parse(text);
        }
    }
}
