//! `hoist.toml`: the agent's configuration, parsed strictly.
//!
//! Unknown keys and bad values are errors naming the key and its line. Secrets are never
//! written in the file: they are `env:NAME` or `file:PATH` references, resolved once at start,
//! and a missing one stops the agent with its name.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::forge::Forge;

/// The agent's whole configuration, after validation and secret resolution.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Root of everything hoist writes: the database, workspaces, logs.
    pub data_dir: PathBuf,
    /// The engine that runs steps and builds images.
    pub builder: BuilderConfig,
    /// Limits of the run queue.
    pub runner: RunnerConfig,
    /// Repositories whose webhooks hoist accepts.
    pub repos: Vec<RepoConfig>,
    /// Registries hoist pushes to and verifies against.
    pub registries: Vec<RegistryConfig>,
    /// Docker engines hoist may deploy to, by name.
    pub hosts: BTreeMap<String, HostConfig>,
    /// Values pipelines may ask for by name (already resolved).
    pub secrets: BTreeMap<String, Secret>,
    /// API tokens, by the SHA-256 of the token.
    pub tokens: Vec<TokenConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderConfig {
    /// Docker endpoint of the build engine (`unix://…`, `tcp://…`).
    #[serde(default = "default_docker")]
    pub docker: String,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        BuilderConfig {
            docker: default_docker(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// Runs executed at once (default 2).
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// How often every repo's heads are listed to find pushes whose webhook never came
    /// (default 60s; 0s disables).
    #[serde(default = "default_poll_interval", with = "duration")]
    pub poll_interval: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_parallel: default_max_parallel(),
            poll_interval: default_poll_interval(),
        }
    }
}

/// A repository hoist accepts pushes for.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// `owner/name` as the forge sends it.
    pub name: String,
    /// Where hoist fetches from; never a URL taken from a payload.
    pub url: String,
    /// Which forge's webhook route and signature scheme this repo uses.
    pub forge: Forge,
    /// The webhook secret (resolved).
    pub secret: Secret,
    /// Hosts this repository may deploy to.
    pub hosts: Vec<String>,
    /// A newer push to a branch cancels its older queued or running run.
    pub cancel_superseded: bool,
}

/// Credentials and transport for one registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `registry.example.com` or `127.0.0.1:5000`.
    pub host: String,
    /// Plain HTTP (lab and loopback registries only).
    pub insecure: bool,
    pub username: Option<Secret>,
    pub password: Option<Secret>,
}

/// One Docker engine hoist may deploy to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `unix://…`, `tcp://ADDR:PORT` (with `tls`), or `ssh://user@addr`.
    pub docker: String,
    /// Where health checks reach the host's published ports.
    pub address: String,
    /// Client certificate, key and CA for `tcp://` engines.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An API token, stored only as its hash.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub name: String,
    /// The 32 bytes of SHA-256 of the token.
    pub sha256: [u8; 32],
}

/// A resolved secret value. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The value itself: only for signing, verifying and passing to steps.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The file as written, before validation. Spans are kept where a later check must name a line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: Spanned<String>,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    builder: BuilderConfig,
    #[serde(default)]
    runner: RunnerConfig,
    #[serde(default)]
    repo: Vec<RawRepo>,
    #[serde(default)]
    registry: Vec<RawRegistry>,
    #[serde(default)]
    host: BTreeMap<String, Spanned<HostConfig>>,
    #[serde(default)]
    secrets: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    token: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepo {
    name: Spanned<String>,
    url: Spanned<String>,
    forge: Spanned<String>,
    secret: Spanned<String>,
    #[serde(default = "no_hosts")]
    hosts: Spanned<Vec<String>>,
    #[serde(default = "default_true")]
    cancel_superseded: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    host: Spanned<String>,
    #[serde(default)]
    insecure: bool,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: Spanned<String>,
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:8080".to_string())
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/hoist")
}
fn default_docker() -> String {
    "unix:///var/run/docker.sock".to_string()
}
fn default_max_parallel() -> u32 {
    2
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}
fn no_hosts() -> Spanned<Vec<String>> {
    Spanned::new(0..0, Vec::new())
}
fn default_true() -> bool {
    true
}

/// A config error that names the file, line and column, like a compiler.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Where secrets come from; the agent uses the process environment and the file system.
pub trait SecretSource {
    fn env(&self, name: &str) -> Option<String>;
    fn file(&self, path: &Path) -> std::io::Result<String>;
}

/// The real environment and file system.
pub struct System;

impl SecretSource for System {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

impl Config {
    /// Read, parse, validate and resolve secrets.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!(
                "cannot read the config file: {e}; pass --config FILE or set HOIST_CONFIG"
            ),
        })?;
        Config::parse(&path.display().to_string(), &text, &System)
    }

    /// Parse the text of a config file named `file` (for messages).
    pub fn parse(file: &str, text: &str, source: &dyn SecretSource) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            ConfigError {
                file: file.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at(span, e.message().trim().to_string())
        })?;

        let listen: SocketAddr = raw.listen.get_ref().parse().map_err(|_| {
            at(
                raw.listen.span(),
                format!(
                    "listen = {:?} is not an address; write it as \"127.0.0.1:8080\"",
                    raw.listen.get_ref()
                ),
            )
        })?;

        if raw.runner.max_parallel == 0 {
            return Err(at(0..0, "runner.max_parallel must be at least 1".into()));
        }
        check_docker_url("builder.docker", &raw.builder.docker).map_err(|m| at(0..0, m))?;

        let mut hosts = BTreeMap::new();
        for (name, host) in raw.host {
            let span = host.span();
            let host = host.into_inner();
            check_docker_url(&format!("host.{name}.docker"), &host.docker)
                .map_err(|m| at(span.clone(), m))?;
            if host.docker.starts_with("tcp://") && host.tls.is_none() {
                return Err(at(
                    span,
                    format!(
                        "host.{name}: a tcp:// engine needs tls = {{ ca = …, cert = …, key = … }}; hoist does not talk to an unauthenticated remote engine"
                    ),
                ));
            }
            if host.address.trim().is_empty() {
                return Err(at(
                    span,
                    format!("host.{name}.address is empty; give the address health checks reach"),
                ));
            }
            hosts.insert(name, host);
        }

        let mut repos: Vec<RepoConfig> = Vec::new();
        for r in raw.repo {
            let name = r.name.get_ref().clone();
            if !valid_repo_name(&name) {
                return Err(at(
                    r.name.span(),
                    format!("repo name {name:?} must be owner/name, as the forge sends it"),
                ));
            }
            if repos.iter().any(|x| x.name == name) {
                return Err(at(
                    r.name.span(),
                    format!("repo {name} is configured twice"),
                ));
            }
            let forge = Forge::from_name(r.forge.get_ref()).ok_or_else(|| {
                at(
                    r.forge.span(),
                    format!(
                        "forge = {:?} is not one of github, gitea, forgejo, gitlab, bitbucket",
                        r.forge.get_ref()
                    ),
                )
            })?;
            if r.url.get_ref().trim().is_empty() {
                return Err(at(
                    r.url.span(),
                    format!("repo {name}: url is empty; hoist fetches commits from it"),
                ));
            }
            let secret = resolve(&r.secret, &format!("repo {name} secret"), source)
                .map_err(|m| at(r.secret.span(), m))?;
            if secret.expose().is_empty() {
                return Err(at(
                    r.secret.span(),
                    format!(
                        "repo {name}: the webhook secret is empty; an unsigned webhook would start builds"
                    ),
                ));
            }
            for h in r.hosts.get_ref() {
                if !hosts.contains_key(h) {
                    return Err(at(
                        r.hosts.span(),
                        format!("repo {name}: host {h:?} has no [host.{h}] entry"),
                    ));
                }
            }
            repos.push(RepoConfig {
                name,
                url: r.url.into_inner(),
                forge,
                secret,
                hosts: r.hosts.into_inner(),
                cancel_superseded: r.cancel_superseded,
            });
        }

        let mut registries = Vec::new();
        for g in raw.registry {
            let host = g.host.get_ref().clone();
            let username = match &g.username {
                Some(u) => Some(
                    resolve(u, &format!("registry {host} username"), source)
                        .map_err(|m| at(u.span(), m))?,
                ),
                None => None,
            };
            let password = match &g.password {
                Some(p) => Some(
                    resolve(p, &format!("registry {host} password"), source)
                        .map_err(|m| at(p.span(), m))?,
                ),
                None => None,
            };
            if username.is_some() != password.is_some() {
                return Err(at(
                    g.host.span(),
                    format!("registry {host}: give both username and password, or neither"),
                ));
            }
            registries.push(RegistryConfig {
                host,
                insecure: g.insecure,
                username,
                password,
            });
        }

        let mut secrets = BTreeMap::new();
        for (name, value) in raw.secrets {
            let v = resolve(&value, &format!("secret {name}"), source)
                .map_err(|m| at(value.span(), m))?;
            secrets.insert(name, v);
        }

        let mut tokens = Vec::new();
        for t in raw.token {
            let hash = t.sha256.get_ref();
            let bytes = hex::decode(hash)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            let Some(sha256) = bytes.filter(|_| hash.chars().all(|c| !c.is_ascii_uppercase()))
            else {
                return Err(at(
                    t.sha256.span(),
                    format!(
                        "token {}: sha256 must be 64 lowercase hex digits, as printed by `hoist token create`",
                        t.name
                    ),
                ));
            };
            tokens.push(TokenConfig {
                name: t.name,
                sha256,
            });
        }

        Ok(Config {
            listen,
            data_dir: raw.data_dir,
            builder: raw.builder,
            runner: raw.runner,
            repos,
            registries,
            hosts,
            secrets,
            tokens,
        })
    }

    /// The configured repository of this name, whatever its forge.
    pub fn repo(&self, name: &str) -> Option<&RepoConfig> {
        self.repos.iter().find(|r| r.name == name)
    }
}

/// Resolve `env:NAME` or `file:PATH`. A literal is refused: secrets do not live in config files.
fn resolve(
    value: &Spanned<String>,
    what: &str,
    source: &dyn SecretSource,
) -> Result<Secret, String> {
    let v = value.get_ref();
    if let Some(name) = v.strip_prefix("env:") {
        return source.env(name).map(Secret).ok_or_else(|| {
            format!(
                "{what}: environment variable {name} is not set; export it before starting hoist"
            )
        });
    }
    if let Some(path) = v.strip_prefix("file:") {
        return source
            .file(Path::new(path))
            .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| format!("{what}: cannot read {path}: {e}"));
    }
    Err(format!(
        "{what}: a literal secret is refused; write \"env:NAME\" or \"file:PATH\" so the value stays out of the config file"
    ))
}

fn check_docker_url(key: &str, url: &str) -> Result<(), String> {
    // bollard hands `user@host:port` to ssh without its scheme, and ssh then takes
    // `host:port` for a host name: the port has to come from the ssh config instead.
    if let Some(rest) = url.strip_prefix("ssh://")
        && (rest.contains(':') || rest.contains('/'))
    {
        return Err(format!(
            "{key} = {url:?}: give ssh:// engines as ssh://user@host; put a port in the agent user's ~/.ssh/config (Host alias, HostName, Port) and write ssh://user@alias"
        ));
    }
    if ["unix://", "tcp://", "ssh://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len())
    {
        Ok(())
    } else {
        Err(format!(
            "{key} = {url:?} must start with unix://, tcp:// or ssh://"
        ))
    }
}

fn valid_repo_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    // GitLab allows nested groups (group/sub/project): every segment must be valid.
    ok(parts.next()) && ok(parts.next()) && parts.all(|s| ok(Some(s)))
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// Durations are strings with a unit (`500ms`, `10s`, `5m`).
pub mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim())
            .map_err(|_| format!("{s:?} is not a duration; write a number with a unit, like \"500ms\", \"10s\" or \"5m\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;
    impl SecretSource for Fake {
        fn env(&self, name: &str) -> Option<String> {
            (name != "MISSING").then(|| format!("value-of-{name}"))
        }
        fn file(&self, path: &Path) -> std::io::Result<String> {
            if path == Path::new("/secret/hook") {
                Ok("from-file\n".into())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "No such file",
                ))
            }
        }
    }

    const GOOD: &str = r#"
listen = "127.0.0.1:9000"
data_dir = "/tmp/hoist"

[runner]
poll_interval = "500ms"

[[repo]]
name = "acme/web"
url = "/srv/git/web.git"
forge = "gitea"
secret = "file:/secret/hook"
hosts = ["web1"]

[[registry]]
host = "127.0.0.1:5000"
insecure = true
username = "env:REG_USER"
password = "env:REG_PASS"

[host.web1]
docker = "unix:///run/docker.sock"
address = "10.0.0.11"

[secrets]
DATABASE_URL = "env:DATABASE_URL"

[[token]]
name = "ops"
sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
"#;

    fn check(text: &str, expect: &str) {
        match Config::parse("hoist.toml", text, &Fake) {
            Ok(c) => assert_eq!("ok", expect, "parsed: {c:?}"),
            Err(e) => assert_eq!(e.to_string(), expect),
        }
    }

    #[test]
    fn good_config_resolves_secrets() {
        let c = Config::parse("hoist.toml", GOOD, &Fake).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.runner.poll_interval, Duration::from_millis(500));
        assert_eq!(c.runner.max_parallel, 2);
        assert_eq!(c.repos[0].forge, Forge::Gitea);
        assert_eq!(c.repos[0].secret.expose(), "from-file");
        assert!(c.repos[0].cancel_superseded);
        assert_eq!(
            c.registries[0].username.as_ref().unwrap().expose(),
            "value-of-REG_USER"
        );
        assert_eq!(c.secrets["DATABASE_URL"].expose(), "value-of-DATABASE_URL");
        assert_eq!(c.tokens[0].sha256[0], 0x2c);
        assert!(
            !format!("{c:?}").contains("value-of"),
            "Debug must not show secrets"
        );
    }

    #[test]
    fn errors_name_the_key_and_line() {
        check(
            &GOOD.replace("[runner]", "[runner]\nmax_paralel = 3"),
            "hoist.toml:6:1: unknown field `max_paralel`, expected `max_parallel` or `poll_interval`",
        );
        check(
            &GOOD.replace("\"file:/secret/hook\"", "\"hunter2\""),
            "hoist.toml:12:10: repo acme/web secret: a literal secret is refused; write \"env:NAME\" or \"file:PATH\" so the value stays out of the config file",
        );
        check(
            &GOOD.replace("env:DATABASE_URL", "env:MISSING"),
            "hoist.toml:26:16: secret DATABASE_URL: environment variable MISSING is not set; export it before starting hoist",
        );
        check(
            &GOOD.replace("\"500ms\"", "\"soon\""),
            "hoist.toml:6:17: \"soon\" is not a duration; write a number with a unit, like \"500ms\", \"10s\" or \"5m\"",
        );
        check(
            &GOOD.replace("\"gitea\"", "\"svn\""),
            "hoist.toml:11:9: forge = \"svn\" is not one of github, gitea, forgejo, gitlab, bitbucket",
        );
        check(
            &GOOD.replace("hosts = [\"web1\"]", "hosts = [\"web9\"]"),
            "hoist.toml:13:9: repo acme/web: host \"web9\" has no [host.web9] entry",
        );
        check(
            &GOOD.replace("sha256 = \"2c", "sha256 = \"zz"),
            "hoist.toml:30:10: token ops: sha256 must be 64 lowercase hex digits, as printed by `hoist token create`",
        );
        check(
            &GOOD.replace("file:/secret/hook", "file:/nope"),
            "hoist.toml:12:10: repo acme/web secret: cannot read /nope: No such file",
        );
    }

    #[test]
    fn defaults() {
        let c = Config::parse("hoist.toml", "", &Fake).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.runner.poll_interval, Duration::from_secs(60));
        assert_eq!(c.builder.docker, "unix:///var/run/docker.sock");
    }
}
