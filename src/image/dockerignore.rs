//! `.dockerignore`: which paths of a build context are left out, with Docker's semantics
//! (moby's `patternmatcher`, as the docker CLI applies it).
//!
//! Docker's rules differ from `.gitignore`'s: a pattern is anchored at the context root (`foo`
//! is only `./foo`, never `a/foo`), `*` and `?` never cross a `/`, `**` crosses any number of
//! directories, a pattern matching a directory excludes everything below it, and the last
//! matching pattern wins, so `!pattern` re-includes. That is why the `ignore` crate (gitignore
//! rules) is not used here.
//!
//! Nor is `globset`, although it is a dependency (for pipeline triggers): it gets every case in
//! the tests below right, but its glob language is not moby's. It reads `{a,b}` as
//! alternatives and `[!a]` as a negated class, both literal characters to Docker; it treats a
//! `**` that is not a whole path component as `*` (`a**b` matches `axb`), where moby's `**`
//! means "any directories" (`ab`, `a/x/b`); and it refuses a trailing `\`, which Docker takes
//! literally. Escaping patterns into globset's language would take as much code as matching
//! them, so the matcher below follows moby's own pattern-to-regexp translation (about 100
//! lines), and the rules around it (anchoring, parent directories, exceptions) are Docker's.

use std::io;
use std::path::Path;

use anyhow::{Context, bail};

/// The patterns of one build context's `.dockerignore`, and the paths always sent.
pub(super) struct Ignore {
    /// In file order; the last one that matches a path decides.
    patterns: Vec<Pattern>,
}

/// One line of `.dockerignore`, compiled.
struct Pattern {
    /// `!pattern`: a match re-includes.
    exception: bool,
    /// The cleaned pattern text, without `!`.
    text: String,
    /// The text compiled for [`glob_match`].
    tokens: Vec<Token>,
    /// How many path components the pattern has: a path whose first that-many components
    /// match is below a matching directory.
    depth: usize,
}

/// One piece of a compiled pattern; each stands for what moby's regexp translation makes of it.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A character matching itself (a `\`-escaped one included).
    Literal(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**` (with a following `/` swallowed) not at the end: nothing, or anything ending in `/`.
    AnyDirs,
    /// `**` at the end: anything.
    Rest,
    /// `[…]` / `[^…]`.
    Class {
        /// `[^…]`: any character outside the ranges (`/` included, as in moby's regexp).
        negated: bool,
        /// Inclusive ranges; a single character is a range of one.
        ranges: Vec<(char, char)>,
    },
}

impl Ignore {
    /// The rules for the context at `context`: its `.dockerignore` (none if there is no such
    /// file), then exceptions for the Dockerfile and `.dockerignore` themselves. Both are
    /// always sent, as the docker CLI does: the engine needs the Dockerfile, and removes both
    /// itself afterwards if `.dockerignore` names them.
    pub(super) fn load(context: &Path, dockerfile: &str) -> anyhow::Result<Ignore> {
        let ignore_file = context.join(".dockerignore");
        let ignore_text = match std::fs::read_to_string(&ignore_file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", ignore_file.display()));
            }
        };
        let mut ignore =
            Ignore::parse(&ignore_text).with_context(|| format!("{}", ignore_file.display()))?;
        ignore.always_send(dockerfile);
        ignore.always_send(".dockerignore");
        Ok(ignore)
    }

    /// Parses `.dockerignore` text: `#` comments (only at the very start of a line), blank
    /// lines skipped, surrounding whitespace trimmed, each pattern cleaned like a path and
    /// made relative (a leading `/` means the context root).
    pub(super) fn parse(text: &str) -> anyhow::Result<Ignore> {
        let mut patterns = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (exception, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if body.is_empty() {
                bail!("line {}: \"!\" alone is not a pattern", n + 1);
            }
            let mut cleaned = clean_path(body);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let tokens = compile(&cleaned).with_context(|| format!("line {}: {line:?}", n + 1))?;
            patterns.push(Pattern {
                exception,
                depth: cleaned.split('/').count(),
                text: cleaned,
                tokens,
            });
        }
        Ok(Ignore { patterns })
    }

    /// Adds a final exception for `rel`, so that it is sent whatever the patterns say.
    fn always_send(&mut self, rel: &str) {
        let text = rel.to_string();
        let tokens = text.chars().map(Token::Literal).collect();
        self.patterns.push(Pattern {
            exception: true,
            depth: text.split('/').count(),
            text,
            tokens,
        });
    }

    /// Whether `rel` (a `/`-separated path relative to the context) is left out: the last
    /// pattern matching it, or one of its parent directories, decides.
    pub(super) fn excludes(&self, rel: &str) -> bool {
        let parents: Vec<&str> = match rel.rfind('/') {
            Some(i) => rel[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for p in &self.patterns {
            let mut matched = glob_match(&p.tokens, &rel.chars().collect::<Vec<_>>());
            if !matched && !parents.is_empty() && p.depth <= parents.len() {
                let prefix = parents[..p.depth].join("/");
                matched = glob_match(&p.tokens, &prefix.chars().collect::<Vec<_>>());
            }
            if matched {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether some exception could match a path below the excluded directory `dir`, so the
    /// walk must look inside it. Compared component by component; a `**` could match anything.
    pub(super) fn may_include_under(&self, dir: &str) -> bool {
        let dir_parts: Vec<&str> = dir.split('/').collect();
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            let parts: Vec<&str> = p.text.split('/').collect();
            for (i, d) in dir_parts.iter().enumerate() {
                let Some(part) = parts.get(i) else {
                    return false;
                };
                if part.contains("**") {
                    return true;
                }
                let Ok(tokens) = compile(part) else {
                    return false;
                };
                if !glob_match(&tokens, &d.chars().collect::<Vec<_>>()) {
                    return false;
                }
            }
            parts.len() > dir_parts.len()
        })
    }
}

/// Go's `filepath.Clean` on a `/`-separated path: no empty or `.` components, `..` resolved
/// lexically, no trailing `/`; "" becomes ".".
fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Compiles a cleaned pattern the way moby turns it into a regular expression.
fn compile(pattern: &str) -> anyhow::Result<Vec<Token>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i >= chars.len() {
                    Token::Rest
                } else {
                    Token::AnyDirs
                });
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::One),
            '\\' => match chars.get(i) {
                Some(&next) => {
                    i += 1;
                    tokens.push(Token::Literal(next));
                }
                None => tokens.push(Token::Literal('\\')),
            },
            '[' => {
                let negated = chars.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut closed = false;
                let mut first = true;
                while i < chars.len() {
                    let mut lo = chars[i];
                    i += 1;
                    if lo == ']' && !first {
                        closed = true;
                        break;
                    }
                    first = false;
                    if lo == '\\' {
                        let Some(&escaped) = chars.get(i) else { break };
                        lo = escaped;
                        i += 1;
                    }
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                        hi = chars[i + 1];
                        i += 2;
                        if hi == '\\' {
                            let Some(&escaped) = chars.get(i) else { break };
                            hi = escaped;
                            i += 1;
                        }
                        if hi < lo {
                            bail!("invalid character range {lo}-{hi}");
                        }
                    }
                    ranges.push((lo, hi));
                }
                if !closed {
                    bail!("unterminated character class '['");
                }
                tokens.push(Token::Class { negated, ranges });
            }
            other => tokens.push(Token::Literal(other)),
        }
    }
    Ok(tokens)
}

/// Whether the whole of `s` matches `tokens` (backtracking; patterns and paths are short).
fn glob_match(tokens: &[Token], s: &[char]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return s.is_empty();
    };
    match first {
        Token::Literal(c) => s.first() == Some(c) && glob_match(rest, &s[1..]),
        Token::One => s.first().is_some_and(|c| *c != '/') && glob_match(rest, &s[1..]),
        Token::Class { negated, ranges } => {
            s.first()
                .is_some_and(|c| ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&c)) != *negated)
                && glob_match(rest, &s[1..])
        }
        Token::Star => {
            let run = s.iter().take_while(|c| **c != '/').count();
            (0..=run).any(|k| glob_match(rest, &s[k..]))
        }
        Token::AnyDirs => {
            glob_match(rest, s)
                || s.iter()
                    .enumerate()
                    .filter(|(_, c)| **c == '/')
                    .any(|(i, _)| glob_match(rest, &s[i + 1..]))
        }
        Token::Rest => (0..=s.len()).any(|k| glob_match(rest, &s[k..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: `.dockerignore` text, then paths with whether they are sent.
    fn check(ignore: &str, cases: &[(&str, bool)]) {
        let ig = Ignore::parse(ignore).unwrap();
        for (path, sent) in cases {
            assert_eq!(!ig.excludes(path), *sent, "{path} with {ignore:?}");
        }
    }

    #[test]
    fn patterns_are_anchored_at_the_root() {
        check(
            "secret.txt\n",
            &[
                ("secret.txt", false),
                ("a/secret.txt", true),
                ("secret.txt.bak", true),
            ],
        );
        check("/secret.txt\n", &[("secret.txt", false)]);
        check("./a/../secret.txt\n", &[("secret.txt", false)]);
    }

    #[test]
    fn star_stays_in_one_component() {
        check(
            "*.log\n",
            &[("a.log", false), ("logs/a.log", true), ("a.log.txt", true)],
        );
        check("*/*.log\n", &[("logs/a.log", false), ("a/b/c.log", true)]);
        check("?.txt\n", &[("a.txt", false), ("ab.txt", true)]);
    }

    #[test]
    fn double_star_crosses_directories() {
        check(
            "**/*.md\n",
            &[
                ("README.md", false),
                ("docs/a/b.md", false),
                ("docs/a/b.txt", true),
            ],
        );
        check(
            "docs/**/*.md\n",
            &[
                ("docs/x.md", false),
                ("docs/a/b/x.md", false),
                ("x.md", true),
            ],
        );
        check(
            "build/**\n",
            &[("build/a/b", false), ("build", true), ("builder", true)],
        );
    }

    #[test]
    fn a_matching_directory_excludes_everything_below() {
        check(
            "node_modules\n",
            &[
                ("node_modules", false),
                ("node_modules/a/b.js", false),
                ("src/node_modules", true),
            ],
        );
    }

    #[test]
    fn the_last_matching_pattern_wins() {
        check(
            "*.log\n!important.log\n",
            &[("debug.log", false), ("important.log", true)],
        );
        check("*\n!src\n", &[("src/main.rs", true), ("README", false)]);
        check(
            "logs\n!logs/keep\n",
            &[("logs/keep", true), ("logs/other", false)],
        );
        check("!a.txt\na.txt\n", &[("a.txt", false)]);
    }

    #[test]
    fn comments_blank_lines_classes_and_escapes() {
        check(
            "# secret.txt\n\n   \n  spaced.txt  \n[ab].c\n[^x]y\n\\*lit\n",
            &[
                ("# secret.txt", true),
                ("secret.txt", true),
                ("spaced.txt", false),
                ("a.c", false),
                ("c.c", true),
                ("ay", false),
                ("xy", true),
                ("*lit", false),
                ("alit", true),
            ],
        );
        assert!(Ignore::parse("!\n").is_err());
        assert!(Ignore::parse("[abc\n").is_err());
    }

    #[test]
    fn excluded_directories_are_entered_only_for_exceptions_below_them() {
        let ig = Ignore::parse("target\nlogs\n!logs/keep\n!**/x\n").unwrap();
        assert!(ig.may_include_under("logs"));
        assert!(
            ig.may_include_under("target"),
            "!**/x may match below target"
        );
        let ig = Ignore::parse("target\n!README\n").unwrap();
        assert!(!ig.may_include_under("target"));
    }

    /// The cases where globset's glob language parts from moby's (see the module docs).
    #[test]
    fn braces_bangs_inner_double_stars_and_trailing_backslashes_are_mobys() {
        check("{a,b}\n", &[("{a,b}", false), ("a", true)]);
        check("[!a]\n", &[("!", false), ("a", false), ("b", true)]);
        check("a**b\n", &[("ab", false), ("a/x/b", false), ("axb", true)]);
        check("x\\\n", &[("x\\", false)]);
    }
}
