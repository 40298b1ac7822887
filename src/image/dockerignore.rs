//! `.dockerignore`: which paths of a build context are left out, with Docker's semantics
//! (moby's `patternmatcher`, as the docker CLI applies it).
//!
//! Docker's rules differ from `.gitignore`'s: a pattern is anchored at the context root (`foo`
//! is only `./foo`, never `a/foo`), `*` and `?` never cross a `/`, `**` crosses any number of
//! directories, a pattern matching a directory excludes everything below it, and the last
//! matching pattern wins, so `!pattern` re-includes. That is why the `ignore` crate (gitignore
//! rules) is not used here.
//!
//! Nor is `globset`, although it is a dependency (for pipeline triggers): its glob language is
//! not moby's. It reads `{a,b}` as alternatives and `[!a]` as a negated class, both literal
//! characters to Docker; it treats a `**` that is not a whole path component as `*` (`a**b`
//! matches `axb`), where moby's `**` means "any directories" (`ab`, `a/x/b`); and it refuses a
//! trailing `\`, which Docker takes literally.
//!
//! Moby itself turns each pattern into a regular expression and lets Go's RE2 match it. The
//! same is done here with the `regex` crate, which, like RE2, matches in time linear in the
//! path whatever the pattern (a pattern comes from the repository, so from anyone who can push
//! a branch: `*a*a*a*a*a*a*a*a*a*a*a*a*b` against a long name must not hold a worker). The
//! pattern is first parsed into [`Token`]s here (so that a character class is Docker's and not
//! the regex crate's richer syntax, whose `&&` or nested `[` Docker does not have), then each
//! token is written as the regular expression moby writes for it, every literal escaped.
//! Nothing here recurses over the pattern or the path.

use std::io;
use std::path::Path;

use anyhow::{Context, bail};
use regex::Regex;

/// Largest `.dockerignore` read. Real ones are a few hundred bytes; with
/// [`PATTERN_SIZE_LIMIT`] this bounds what one can make the agent allocate.
const MAX_FILE_BYTES: usize = 1 << 20;

/// Largest compiled form of one pattern. A `.dockerignore` line is a few dozen characters;
/// this bounds what a hostile one can make the matcher allocate, with a clear error instead.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// The patterns of one build context's `.dockerignore`, and the paths always sent.
pub struct Ignore {
    /// In file order; the last one that matches a path decides.
    patterns: Vec<Pattern>,
}

/// One line of `.dockerignore`, compiled.
struct Pattern {
    /// `!pattern`: a match re-includes.
    exception: bool,
    /// The whole pattern as an anchored regular expression.
    regex: Regex,
    /// For exceptions, the pattern component by component, for [`Ignore::may_include_under`]:
    /// `None` for a component with `**` (it may match any number of directories), an error for
    /// one that does not compile alone (a class holding a `/`), which then never matches.
    /// Empty for exclusions.
    parts: Vec<Option<Result<Regex, ()>>>,
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
    pub fn load(context: &Path, dockerfile: &str) -> anyhow::Result<Ignore> {
        let ignore_file = context.join(".dockerignore");
        let ignore_text = match std::fs::read_to_string(&ignore_file) {
            Ok(text) if text.len() > MAX_FILE_BYTES => bail!(
                "{} is {} KiB, over the {} KiB hoist reads: it lists patterns, not files; use \
                 `**` and directories to say the same in fewer lines",
                ignore_file.display(),
                text.len() / 1024,
                MAX_FILE_BYTES / 1024
            ),
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
    pub fn parse(text: &str) -> anyhow::Result<Ignore> {
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
            let pattern = Pattern::new(exception, &cleaned)
                .with_context(|| format!("line {}: {:?}", n + 1, shortened(line)))?;
            patterns.push(pattern);
        }
        Ok(Ignore { patterns })
    }

    /// Adds a final exception for `rel`, so that it is sent whatever the patterns say.
    fn always_send(&mut self, rel: &str) {
        let tokens: Vec<Token> = rel.chars().map(Token::Literal).collect();
        // Literal characters always compile: this cannot fail for a path the walk found.
        if let Ok(pattern) = Pattern::from_tokens(true, rel, tokens) {
            self.patterns.push(pattern);
        }
    }

    /// Whether `rel` (a `/`-separated path relative to the context) is left out: the last
    /// pattern matching it, or one of its parent directories, decides.
    pub fn excludes(&self, rel: &str) -> bool {
        let parents: Vec<&str> = match rel.rfind('/') {
            Some(i) => rel[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for p in &self.patterns {
            let mut matched = p.regex.is_match(rel);
            if !matched && !parents.is_empty() && p.depth <= parents.len() {
                let prefix = parents[..p.depth].join("/");
                matched = p.regex.is_match(&prefix);
            }
            if matched {
                excluded = !p.exception;
            }
        }
        excluded
    }

    /// Whether some exception could match a path below the excluded directory `dir`, so the
    /// walk must look inside it. Compared component by component; a `**` could match anything.
    pub fn may_include_under(&self, dir: &str) -> bool {
        let dir_parts: Vec<&str> = dir.split('/').collect();
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            for (i, d) in dir_parts.iter().enumerate() {
                match p.parts.get(i) {
                    None => return false,
                    Some(None) => return true,
                    Some(Some(Ok(part))) if part.is_match(d) => {}
                    Some(Some(_)) => return false,
                }
            }
            p.parts.len() > dir_parts.len()
        })
    }
}

impl Pattern {
    /// Compiles a cleaned pattern (no `!`).
    fn new(exception: bool, cleaned: &str) -> anyhow::Result<Pattern> {
        Pattern::from_tokens(exception, cleaned, tokenize(cleaned)?)
    }

    fn from_tokens(exception: bool, text: &str, tokens: Vec<Token>) -> anyhow::Result<Pattern> {
        let regex = to_regex(&tokens)?;
        let parts = if exception {
            text.split('/')
                .map(|part| {
                    if part.contains("**") {
                        None
                    } else {
                        Some(
                            tokenize(part)
                                .ok()
                                .and_then(|t| to_regex(&t).ok())
                                .ok_or(()),
                        )
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Pattern {
            exception,
            regex,
            parts,
            depth: text.split('/').count(),
        })
    }
}

/// A line as an error quotes it: at most 60 characters, so that a hostile line does not end
/// up whole in a run's reason.
fn shortened(line: &str) -> String {
    match line.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
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

/// Reads a cleaned pattern into tokens, each one piece of moby's regular expression.
fn tokenize(pattern: &str) -> anyhow::Result<Vec<Token>> {
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
                let token = if i >= chars.len() {
                    Token::Rest
                } else {
                    Token::AnyDirs
                };
                // `**/**/x` means what `**/x` does; a line of ten thousand `**/` compiles
                // to one group, not ten thousand.
                if tokens.last() != Some(&Token::AnyDirs) {
                    tokens.push(token);
                } else if token == Token::Rest {
                    *tokens.last_mut().expect("checked above") = Token::Rest;
                }
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

/// The anchored regular expression moby writes for `tokens`, compiled.
fn to_regex(tokens: &[Token]) -> anyhow::Result<Regex> {
    let mut re = String::from("^");
    for t in tokens {
        match t {
            Token::Literal(c) => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            Token::One => re.push_str("[^/]"),
            Token::Star => re.push_str("[^/]*"),
            Token::AnyDirs => re.push_str("(?:.*/)?"),
            Token::Rest => re.push_str(".*"),
            Token::Class { negated, ranges } => {
                re.push('[');
                if *negated {
                    re.push('^');
                }
                for (lo, hi) in ranges {
                    re.push_str(&regex::escape(lo.encode_utf8(&mut [0; 4])));
                    if lo != hi {
                        re.push('-');
                        re.push_str(&regex::escape(hi.encode_utf8(&mut [0; 4])));
                    }
                }
                re.push(']');
            }
        }
    }
    re.push('$');
    regex::RegexBuilder::new(&re)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => anyhow::anyhow!(
                "the pattern is too complex to match (over {} KiB compiled); split it or \
                 use `**`",
                PATTERN_SIZE_LIMIT / 1024
            ),
            other => anyhow::anyhow!("not a valid pattern: {other}"),
        })
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

    /// Runs `f` on a thread and fails the test if it has not returned within 5 s (a matcher
    /// that backtracks would take years; the thread is left behind then, the test fails).
    fn within_5s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            // Small on purpose: a matcher that recurses per pattern token overflows it.
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = tx.send(f());
            })
            .unwrap();
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{what} did not finish within 5 s: {e}"))
    }

    #[test]
    fn matching_takes_linear_time_whatever_the_pattern() {
        let name = "a".repeat(200);
        let started = std::time::Instant::now();
        let excluded = within_5s("*a*a*…*b against 200 a", move || {
            let ig =
                Ignore::parse("*a*a*a*a*a*a*a*a*a*a*a*a*b\n**a**a**a**a**a**a**a**b\n").unwrap();
            (ig.excludes(&name), ig.excludes(&format!("{name}/{name}/x")))
        });
        assert_eq!(excluded, (false, false));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn ten_thousand_double_stars_neither_overflow_nor_crawl() {
        let sent = within_5s("a line of 10 000 `**/`", || {
            let line = format!("{}secret\n", "**/".repeat(10_000));
            let ig = Ignore::parse(&line).unwrap();
            let deep = format!("{}secret", "d/".repeat(500));
            [
                ig.excludes("secret"),
                ig.excludes(&deep),
                ig.excludes("public"),
            ]
        });
        assert_eq!(sent, [true, true, false]);
        // `*?` is not collapsed: five hundred of them compile and match, ten thousand are
        // refused with a clear error (quoting the start of the line only), never a hang.
        let stars = within_5s("500 `*?`", || {
            let ig = Ignore::parse(&format!("{}x\n", "*?".repeat(500))).unwrap();
            (
                ig.excludes(&"y".repeat(300)),
                ig.excludes(&format!("{}x", "y".repeat(600))),
            )
        });
        assert_eq!(stars, (false, true));
        let refused = within_5s("10 000 `*?`", || {
            let e = Ignore::parse(&format!("{}x\n", "*?".repeat(10_000))).err();
            e.map(|e| format!("{e:#}")).unwrap_or_default()
        });
        assert!(refused.contains("line 1: \"*?*?"), "{refused}");
        assert!(
            refused.contains("…\": the pattern is too complex"),
            "{refused}"
        );
        assert!(refused.len() < 300, "{refused}");
    }

    #[test]
    fn classes_are_dockers_not_the_regex_crates() {
        // `&&`, `--`, `~~` and a nested `[` are set operations to the regex crate, literal
        // characters in a Docker (Go RE2) class.
        check("[a&&b]\n", &[("&", false), ("a", false), ("c", true)]);
        check("[a-c--b]\n", &[("b", false), ("-", false), ("d", true)]);
        check("[[:x]\n", &[("[", false), (":", false), ("y", true)]);
        check(
            "a.c\n(x)|y\n",
            &[("a.c", false), ("abc", true), ("(x)|y", false), ("y", true)],
        );
    }
}
