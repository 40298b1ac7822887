//! Which pushes start a run: the `on.branches` and `on.tags` globs of [`Triggers`], matched the
//! way GitHub Actions matches them, and the `[skip ci]` marker of a commit message.

use super::{Triggers, When};
use crate::forge::RefKind;

impl When {
    /// `None` when a push of this ref runs the step; else why it is skipped. Without
    /// `branches` and `tags` every push runs it; with either, each kind of ref must match its
    /// own list (a missing list matches nothing).
    pub fn skips(&self, kind: RefKind, name: &str) -> Option<String> {
        if self.branches.is_none() && self.tags.is_none() {
            return None;
        }
        let (noun, key, patterns) = match kind {
            RefKind::Branch => ("branch", "branches", &self.branches),
            RefKind::Tag => ("tag", "tags", &self.tags),
        };
        match patterns {
            Some(p) if patterns_match(p, name) => None,
            Some(_) => Some(format!("when: {noun} {name:?} does not match when.{key}")),
            None => Some(format!("when: the step runs on no {noun} (no when.{key})")),
        }
    }
}

impl Triggers {
    /// Whether a push of this ref starts a run: the name matches some include pattern and no
    /// exclude pattern.
    pub fn matches(&self, kind: RefKind, name: &str) -> bool {
        match kind {
            RefKind::Branch => self
                .branches
                .as_ref()
                .is_none_or(|patterns| patterns_match(patterns, name)),
            RefKind::Tag => self
                .tags
                .as_ref()
                .is_some_and(|patterns| patterns_match(patterns, name)),
        }
    }
}

/// Compiled on each call rather than cached in [`Triggers`]: a cache would be a private field
/// (breaking struct literals, `PartialEq` and the JSON round trip) and matching runs once per
/// push, where a few microseconds of compiling do not matter. Every pattern was compiled once
/// already at parse time, so a parsed pipeline never hits the error arms.
fn patterns_match(patterns: &[String], name: &str) -> bool {
    let mut included = false;
    for pattern in patterns {
        if let Some(excluded) = pattern.strip_prefix('!') {
            // An exclusion that cannot be compiled (only possible in hand-made JSON) excludes:
            // failing closed starts no run rather than an unwanted one.
            if compile_glob(excluded).is_none_or(|g| g.is_match(name)) {
                return false;
            }
        } else if compile_glob(pattern).is_some_and(|g| g.is_match(name)) {
            included = true;
        }
    }
    included
}

fn compile_glob(pattern: &str) -> Option<globset::GlobMatcher> {
    build_glob(pattern).ok()
}

/// The one way a pattern becomes a matcher: validation compiles every pattern with it to report
/// a broken one, and matching compiles them again.
pub(super) fn build_glob(pattern: &str) -> Result<globset::GlobMatcher, globset::Error> {
    globset::GlobBuilder::new(pattern)
        // `*` must not cross `/`, like GitHub Actions: `release/*` is not `release/a/b`.
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
}

/// `[skip ci]` or `[ci skip]` anywhere in the message (case-insensitive): start no run.
pub fn skip_ci(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("[skip ci]") || lower.contains("[ci skip]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::parse;
    use crate::pipeline::testing::{check, strs};

    #[test]
    fn trigger_patterns_are_checked() {
        check(
            "app: web\non: {branches: [\"!wip/*\"]}\nsteps:\n  - {name: t, shell: [a]}\n",
            r#".hoist.yml:2:17: `on.branches` only excludes; add "**" to include every other one"#,
        );
        check(
            "app: web\non: {branches: [\"[main\"], tags: [\"\"]}\nsteps:\n  - {name: t, shell: [a]}\n",
            r#"
            .hoist.yml:2:17: `on.branches` pattern "[main" is not a glob: unclosed character class; missing ']'
            .hoist.yml:2:34: empty pattern in `on.tags`"#,
        );
        check(
            "app: web\non: {branches: [], tags: [\"v*\"]}\nsteps:\n  - {name: t, shell: [a]}\n",
            "ok",
        );
    }

    #[test]
    fn when_is_checked_and_matched() {
        check(
            "app: web\nsteps:\n  - {name: t, shell: [a], when: {branches: [\"[x\"]}}\n",
            r#".hoist.yml:3:45: `when.branches` pattern "[x" is not a glob: unclosed character class; missing ']'"#,
        );
        check(
            "app: web\non: {branches: [main]}\nsteps:\n  - {name: t, shell: [a], when: {branches: [dev]}}\n",
            r#".hoist.yml:4:33: the `when` of step "t" can never match a push that `on` lets start a run, so the step would always be skipped; widen `when` or `on`"#,
        );
        check(
            "app: web\nsteps:\n  - {name: t, shell: [a], when: {tags: [\"v*\"]}}\n",
            r#".hoist.yml:3:33: the `when` of step "t" can never match a push that `on` lets start a run, so the step would always be skipped; widen `when` or `on`"#,
        );
        check(
            "app: web\non: {tags: [\"v*\"]}\nsteps:\n  - {name: t, shell: [a], when: {tags: [\"v*\"], manual: true}}\n",
            "ok",
        );
        let p = parse("app: web\non: {tags: [\"v*\"]}\nsteps:\n  - {name: t, shell: [a], when: {branches: [main, \"!main\", \"feature/*\"], tags: [\"v*\"]}}\n").unwrap();
        let w = &p.steps[0].when;
        assert!(w.skips(RefKind::Branch, "main").is_some());
        assert!(w.skips(RefKind::Branch, "feature/x").is_none());
        assert!(w.skips(RefKind::Tag, "v1.2.0").is_none());
        assert_eq!(
            w.skips(RefKind::Tag, "1.2").as_deref(),
            Some("when: tag \"1.2\" does not match when.tags")
        );
        let tags_only = When {
            tags: Some(strs(&["v*"])),
            ..When::default()
        };
        assert!(tags_only.skips(RefKind::Branch, "main").is_some());
        assert!(When::default().skips(RefKind::Tag, "x").is_none());
    }

    #[test]
    fn triggers_match_like_github_actions() {
        use RefKind::{Branch, Tag};
        let on = Triggers {
            branches: Some(strs(&["main", "release/*", "!release/old", "feature/**"])),
            tags: Some(strs(&["v*"])),
        };
        let cases = [
            (Branch, "main", true),
            (Branch, "mainline", false),
            (Branch, "release/1.2", true),
            (Branch, "release/a/b", false),
            (Branch, "release/old", false),
            (Branch, "feature/a/b", true),
            (Branch, "dev", false),
            (Tag, "v1.0.0", true),
            (Tag, "1.0.0", false),
            (Tag, "main", false),
        ];
        for (kind, name, expect) in cases {
            assert_eq!(on.matches(kind, name), expect, "{kind:?} {name}");
        }
        // Parsed patterns behave the same as hand-built ones.
        let parsed = parse("app: web\non:\n  branches: [main, \"release/*\", \"!release/old\"]\n  tags: [\"v*\"]\nsteps:\n  - {name: t, shell: [a]}\n").unwrap();
        assert!(
            parsed.on.matches(Branch, "release/1.2") && !parsed.on.matches(Branch, "release/old")
        );

        let default = Triggers::default();
        assert!(default.matches(Branch, "main") && default.matches(Branch, "any/thing"));
        assert!(!default.matches(Tag, "v1"));
        let tags_only = Triggers {
            branches: Some(vec![]),
            tags: Some(strs(&["**"])),
        };
        assert!(!tags_only.matches(Branch, "main") && tags_only.matches(Tag, "v1/rc"));
        // An exclusion that cannot compile (hand-made JSON only) fails closed.
        let broken = Triggers {
            branches: Some(strs(&["**", "![x"])),
            tags: None,
        };
        assert!(!broken.matches(Branch, "main"));
    }

    #[test]
    fn skip_ci_markers() {
        assert!(skip_ci("docs: typo [skip ci]"));
        assert!(skip_ci("[CI Skip] bump\n\nbody"));
        assert!(skip_ci("fix\n\nnot worth a run [Skip CI]"));
        assert!(!skip_ci("skip ci"));
        assert!(!skip_ci("[skip-ci]"));
        assert!(!skip_ci(""));
    }
}
