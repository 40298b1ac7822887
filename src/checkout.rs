//! Getting the pushed commit onto disk: a bare mirror per repository, and a workspace per run.
//!
//! A push webhook names a repository and a commit. The repository's URL comes from `hoist.toml`,
//! never from the payload, so a forged or confused payload can at worst name a commit that
//! the configured repository does not have. [`Mirror::fetch`] asks the remote for exactly that
//! commit (falling back to the pushed ref for servers that refuse fetching by SHA), and keeps
//! it in a bare repository under `data_dir` so later runs transfer only what is new.
//! [`Mirror::checkout`] then copies the commit from the mirror into a run's workspace without
//! touching the network, and checks that HEAD really is the commit that was asked for.
//!
//! [`Mirrors`] is the async face the agent uses: it knows where each repository's mirror lives,
//! holds one lock per repository (two fetches into the same mirror at once can collide on ref
//! lock files), and runs the blocking libgit2 calls on the blocking pool. [`Mirror`] and
//! [`Workspaces`] are blocking (libgit2 is).
//!
//! Invariant: a password in a configured URL never reaches a log or an error message: URLs
//! are shown through [`crate::redact::url`], libgit2's error texts are scrubbed of it.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use git2::build::CheckoutBuilder;

use crate::config::RepoConfig;
use git2::{
    AutotagOption, Cred, CredentialType, Direction, ErrorCode, FetchOptions, ObjectType, Oid,
    ProxyOptions, Reference, RemoteCallbacks, Repository,
};

/// Largest file [`Mirror::read_file`] returns: pipeline files are small, and this bounds the
/// memory a hostile repository can make the agent spend.
const MAX_READ_FILE: usize = 1024 * 1024;

/// Private keys tried, in this order, after the ssh agent (those OpenSSH tries by default).
const DEFAULT_SSH_KEYS: &[&str] = &["id_ed25519", "id_ecdsa", "id_rsa"];

/// A 40-hex commit id (lowercase, as git prints it and forges send it), checked before any
/// git call so that a payload can never smuggle a refspec or an option into libgit2.
pub fn is_commit_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_commit(commit: &str) -> anyhow::Result<Oid> {
    if !is_commit_id(commit) {
        bail!("{commit:?} is not a commit id (40 lowercase hex digits)");
    }
    Ok(Oid::from_str(commit)?)
}

/// Pack files a mirror may hold before a fetch consolidates them. Every exact-commit fetch
/// writes a pack of its own and libgit2 has no gc, so without this a busy repository's mirror
/// holds a pack per run and every object lookup walks all their indexes (800 runs: 800
/// packs, and hoist's work before a step grew from 20 ms to 290 ms).
pub const MAX_PACKS: usize = 16;

/// Every configured repository's mirror under `data_dir/repos`, one lock per repository.
pub struct Mirrors {
    /// `data_dir/repos`: one bare repository per configured repository.
    root: PathBuf,
    /// One lock per repository: git operations on one mirror never overlap. A std Mutex: held
    /// only to look a lock up, never across `.await`. One entry per configured repository at
    /// most (callers pass configured names), so the map is bounded by the config.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirrors {
    pub fn new(data_dir: &Path) -> Mirrors {
        Mirrors {
            root: data_dir.join("repos"),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Where a repository's mirror lives.
    pub fn path(&self, repo: &str) -> PathBuf {
        self.root.join(format!("{}.git", repo.replace('/', "__")))
    }

    fn lock(&self, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(repo.to_string())
            .or_default()
            .clone()
    }

    /// Run `f` on the repository's mirror, under its lock, on the blocking pool.
    async fn with_mirror<T: Send + 'static>(
        &self,
        repo: &RepoConfig,
        f: impl FnOnce(Mirror) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let lock = self.lock(&repo.name);
        let _guard = lock.lock().await;
        let (path, url) = (self.path(&repo.name), repo.url.clone());
        tokio::task::spawn_blocking(move || f(Mirror::open(&path, &url)?))
            .await
            .context("a git task panicked")?
    }

    /// Fetch `commit` (pushed to `git_ref`) into the mirror and read its pipeline file (None:
    /// the commit has none). A commit the mirror already holds costs no network.
    /// Returns the commit's id too: an annotated tag's object is peeled to the commit it tags.
    pub async fn fetch_pipeline(
        &self,
        repo: &RepoConfig,
        git_ref: &str,
        commit: &str,
    ) -> anyhow::Result<(String, Option<String>)> {
        let (git_ref, commit) = (git_ref.to_string(), commit.to_string());
        self.with_mirror(repo, move |mirror| {
            let commit = mirror.fetch(&commit, &git_ref)?;
            mirror.compact(MAX_PACKS);
            let text = mirror.read_file(&commit, crate::pipeline::FILE_NAME)?;
            Ok((commit, text))
        })
        .await
    }

    /// Consolidate the mirror's packs when it has more than one (the janitor's scheduled
    /// pass; fetches compact at [`MAX_PACKS`] on their own). Under the repository's lock.
    pub async fn compact(&self, repo: &RepoConfig) -> anyhow::Result<()> {
        if !self.path(&repo.name).exists() {
            return Ok(());
        }
        self.with_mirror(repo, |mirror| {
            mirror.compact(1);
            Ok(())
        })
        .await
    }

    /// The remote's refs and the commits they point at (`git ls-remote`).
    pub async fn heads(&self, repo: &RepoConfig) -> anyhow::Result<Vec<(String, String)>> {
        self.with_mirror(repo, |mirror| mirror.ls_remote()).await
    }

    /// Whether `newer` descends from `older` (`older` is one of its ancestors, and not the same
    /// commit), by the mirror's history; false when the mirror lacks either. No network.
    pub async fn descends_from(
        &self,
        repo: &RepoConfig,
        newer: &str,
        older: &str,
    ) -> anyhow::Result<bool> {
        let (newer, older) = (parse_commit(newer)?, parse_commit(older)?);
        self.with_mirror(repo, move |mirror| {
            let repo = mirror.repo()?;
            if newer == older || !has_commit(&repo, newer) || !has_commit(&repo, older) {
                return Ok(false);
            }
            Ok(repo.graph_descendant_of(newer, older)?)
        })
        .await
    }

    /// Fetch `commit` (pushed to `git_ref`) if the mirror lacks it, and check it out into `dest`,
    /// replacing whatever was there.
    pub async fn checkout(
        &self,
        repo: &RepoConfig,
        git_ref: &str,
        commit: &str,
        dest: PathBuf,
    ) -> anyhow::Result<PathBuf> {
        let (git_ref, commit) = (git_ref.to_string(), commit.to_string());
        self.with_mirror(repo, move |mirror| {
            mirror.fetch(&commit, &git_ref)?;
            remove_if_present(&dest)?;
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            mirror.checkout(&commit, &dest)?;
            Ok(dest)
        })
        .await
    }
}

/// A bare mirror of one configured repository under data_dir, so every run fetches only what is new.
#[derive(Clone)]
pub struct Mirror {
    /// The bare repository on disk; reopened per call because `git2::Repository` is not `Sync`.
    path: PathBuf,
    /// The remote, exactly as configured; may hold credentials, so shown only through [`crate::redact::url`].
    url: String,
}

impl std::fmt::Debug for Mirror {
    /// The URL redacted: it may hold a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("path", &self.path)
            .field("url", &crate::redact::url(&self.url))
            .finish()
    }
}

impl Mirror {
    /// Open or create the bare repository at `path` for remote `url` (the URL from hoist.toml, never from a payload).
    pub fn open(path: &Path, url: &str) -> anyhow::Result<Mirror> {
        if url.trim().is_empty() {
            bail!("the repository URL is empty");
        }
        let mirror = Mirror {
            path: path.to_path_buf(),
            url: url.to_string(),
        };
        if path.exists() {
            // Fail now, not at the first fetch, when the directory is something else.
            mirror.repo()?;
        } else {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            Repository::init_bare(path).with_context(|| {
                format!("cannot create the mirror repository {}", path.display())
            })?;
            tracing::info!(mirror = %path.display(), url = %crate::redact::url(url), "created mirror");
        }
        Ok(mirror)
    }

    /// Make sure `commit` (40 hex) is present: fetch exactly that object from `url` when
    /// missing; fall back to fetching `git_ref` (e.g. refs/heads/main) when the server refuses
    /// fetching by SHA (uploadpack.allowReachableSHA1InWant off), then check the commit arrived.
    ///
    /// Over paths and file:// URLs "exactly" is libgit2's local transport's call, and it sends
    /// everything reachable from the source's refs; over git://, https and ssh it is exact.
    ///
    /// Afterwards the mirror's `git_ref` points at `commit` (or at the fetched ref tip after a
    /// fallback): the mirror's refs are what libgit2 offers the server as "haves", so they
    /// are what keeps the next fetch small, and they keep fetched objects reachable.
    ///
    /// A tag push of an annotated tag names the tag object, not a commit (GitHub's `after`,
    /// GitLab's `after`): it is peeled to the commit it tags. Returns the commit's id.
    pub fn fetch(&self, commit: &str, git_ref: &str) -> anyhow::Result<String> {
        let oid = parse_commit(commit)?;
        check_ref_name(git_ref)?;
        let repo = self.repo()?;
        if let Some(peeled) = peeled_commit(&repo, oid) {
            tracing::debug!(commit, "commit already in the mirror; no fetch");
            return Ok(peeled.to_string());
        }
        let url = crate::redact::url(&self.url);

        // No destination in the refspec: libgit2 would point the ref at whatever object the
        // SHA names, even before we know it is a commit. We set the ref ourselves below.
        match self.fetch_refspecs(&repo, &[commit]) {
            Ok(_) if has_commit(&repo, oid) => {
                repo.reference(git_ref, oid, true, "hoist: fetch by commit id")
                    .with_context(|| format!("cannot update {git_ref} in the mirror"))?;
                return Ok(commit.to_string());
            }
            Ok(_) => tracing::debug!(commit, %url, "fetch by commit id brought nothing"),
            // Servers without allowReachableSHA1InWant answer "not our ref"; an unreachable
            // server fails here too and again just below, where the error is reported.
            Err(e) => tracing::debug!(
                commit, %url, error = %self.scrub(e.message()),
                "fetch by commit id refused; fetching {git_ref} instead"
            ),
        }

        let refspec = format!("+{git_ref}:{git_ref}");
        self.fetch_refspecs(&repo, &[refspec.as_str()])
            .map_err(|e| anyhow!("cannot fetch from {url}: {}", self.explain(&e)))?;
        match peeled_commit(&repo, oid) {
            Some(peeled) => Ok(peeled.to_string()),
            None => bail!("commit {commit} is not in {url} (was the branch force-pushed away?)"),
        }
    }

    /// The content of `path` in `commit`'s tree, None when the file is absent (a repo without
    /// .hoist.yml). Max 1 MiB, else Err.
    pub fn read_file(&self, commit: &str, path: &str) -> anyhow::Result<Option<String>> {
        let oid = parse_commit(commit)?;
        let repo = self.repo()?;
        let tree = find_commit(&repo, oid)?.tree()?;
        let entry = match tree.get_path(Path::new(path)) {
            Ok(entry) => entry,
            Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot look up {path} in {commit}")),
        };
        // A symlink's blob is its target path, and a gitlink names another repository's
        // commit: neither is the file the caller means, so say so instead of guessing.
        match (entry.kind(), entry.filemode()) {
            (Some(ObjectType::Blob), 0o100644 | 0o100755) => {}
            (Some(ObjectType::Blob), 0o120000) => bail!("{path} in {commit} is a symlink"),
            _ => bail!("{path} in {commit} is not a regular file"),
        }
        // Ask the object database for the size first so a huge blob is never loaded.
        let (size, _) = repo.odb()?.read_header(entry.id())?;
        if size > MAX_READ_FILE {
            bail!("{path} in {commit} is {size} bytes; the limit is {MAX_READ_FILE}");
        }
        let blob = repo.find_blob(entry.id())?;
        let text = String::from_utf8(blob.content().to_vec())
            .map_err(|_| anyhow!("{path} in {commit} is not UTF-8 text"))?;
        Ok(Some(text))
    }

    /// Branch and tag heads of the remote, like `git ls-remote --heads --tags URL`, with
    /// annotated tags peeled to the commit they tag: Vec<(full ref, commit sha)>, in the
    /// server's order.
    pub fn ls_remote(&self) -> anyhow::Result<Vec<(String, String)>> {
        let repo = self.repo()?;
        let url = crate::redact::url(&self.url);
        let mut remote = repo.remote_anonymous(&self.url)?;
        let mut proxy = ProxyOptions::new();
        proxy.auto();
        let conn = remote
            .connect_auth(Direction::Fetch, Some(remote_callbacks()), Some(proxy))
            .map_err(|e| anyhow!("cannot list refs of {url}: {}", self.explain(&e)))?;
        let heads = conn
            .list()
            .map_err(|e| anyhow!("cannot list refs of {url}: {}", self.explain(&e)))?;

        // The server advertises an annotated tag twice: `refs/tags/v1` (the tag object) and
        // `refs/tags/v1^{}` (the commit it tags). Callers want the commit under the plain name.
        let peeled: std::collections::HashMap<&str, Oid> = heads
            .iter()
            .filter_map(|h| Some((h.name().strip_suffix("^{}")?, h.oid())))
            .collect();
        let mut refs = Vec::new();
        for head in heads {
            let name = head.name();
            if name.ends_with("^{}")
                || !(name.starts_with("refs/heads/") || name.starts_with("refs/tags/"))
            {
                continue;
            }
            let oid = match peeled.get(name) {
                Some(oid) => *oid,
                // No peeled line (some servers omit it): peel locally if the mirror has the
                // object, otherwise report what the server said.
                None => repo
                    .find_object(head.oid(), None)
                    .and_then(|o| o.peel_to_commit())
                    .map(|c| c.id())
                    .unwrap_or(head.oid()),
            };
            refs.push((name.to_string(), oid.to_string()));
        }
        Ok(refs)
    }

    /// Check out `commit` into the empty or non-existent directory `dest` as a normal worktree
    /// (files plus a self-contained .git, detached HEAD at commit), from the mirror (no
    /// network). Then verify HEAD == commit and fail otherwise.
    ///
    /// The objects are copied into `dest/.git` rather than borrowed through `alternates`:
    /// the workspace is bind-mounted into containers where the mirror's path does not exist,
    /// and git commands run there (`git describe`, `git log`) must still work.
    pub fn checkout(&self, commit: &str, dest: &Path) -> anyhow::Result<()> {
        let oid = parse_commit(commit)?;
        let mirror = self.repo()?;
        find_commit(&mirror, oid)?;
        ensure_empty_dir(dest)?;

        let repo = Repository::init(dest)
            .with_context(|| format!("cannot create a repository in {}", dest.display()))?;
        copy_history(&mirror, &repo, oid).with_context(|| {
            format!(
                "cannot copy {commit} from the mirror into {}",
                dest.display()
            )
        })?;

        let target = repo.find_commit(oid)?;
        // force: the directory was empty, so there is nothing to protect, and every file of
        // the tree must be written whatever the unborn HEAD and empty index say. Modes come
        // from the tree (0644, 0755 for executables) under the process umask, like git.
        repo.checkout_tree(target.as_object(), Some(CheckoutBuilder::new().force()))
            .with_context(|| format!("cannot check out {commit} into {}", dest.display()))?;
        repo.set_head_detached(oid)?;

        let head = repo.head()?.peel_to_commit()?.id();
        if head != oid || !repo.head_detached()? {
            bail!(
                "checkout of {commit} in {} ended at HEAD {head}; refusing to build it",
                dest.display()
            );
        }
        Ok(())
    }

    /// Pack files under objects/pack.
    pub fn packs(&self) -> usize {
        fs::read_dir(self.path.join("objects/pack")).map_or(0, |d| {
            d.flatten()
                .filter(|f| f.path().extension().is_some_and(|x| x == "pack"))
                .count()
        })
    }

    /// When the mirror holds more than `bound` packs, consolidate them with
    /// `git repack -d --geometric=2`: packs are merged until each is at least twice the size
    /// of all smaller ones together, so the pack count stays logarithmic in the repository's
    /// size and a repack's cost is that of the small packs, not a rewrite of the whole history.
    /// Loose objects are packed too. libgit2 cannot repack; the git CLI can, and the agent's
    /// install brings it. Callers hold the repository's lock, so no fetch runs meanwhile.
    /// A failing repack costs speed, never a run: it is logged, and the next fetch tries again.
    pub fn compact(&self, bound: usize) {
        let before = self.packs();
        if before <= bound {
            return;
        }
        let started = std::time::Instant::now();
        let out = std::process::Command::new("git")
            .args(["-c", "gc.auto=0", "repack", "-d", "-q", "--geometric=2"])
            .env("GIT_DIR", &self.path)
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GIT_OBJECT_DIRECTORY")
            .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => tracing::info!(
                mirror = %self.path.display(),
                packs_before = before,
                packs_after = self.packs(),
                ms = started.elapsed().as_millis() as u64,
                "repacked mirror"
            ),
            Ok(o) => tracing::warn!(
                mirror = %self.path.display(),
                "cannot repack the mirror (git repack {}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => tracing::warn!(
                mirror = %self.path.display(),
                "cannot repack the mirror: cannot run git ({e}); install git so that mirrors stay compact"
            ),
        }
    }

    fn repo(&self) -> anyhow::Result<Repository> {
        Repository::open_bare(&self.path)
            .with_context(|| format!("cannot open the mirror {}", self.path.display()))
    }

    /// One fetch from the configured URL with our credentials, proxy and no tag following
    /// (tags would add refs and objects nobody asked for). Returns how many objects came.
    fn fetch_refspecs(&self, repo: &Repository, refspecs: &[&str]) -> Result<usize, git2::Error> {
        let mut remote = repo.remote_anonymous(&self.url)?;
        let mut proxy = ProxyOptions::new();
        proxy.auto();
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(remote_callbacks())
            .proxy_options(proxy)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        remote.fetch(refspecs, Some(&mut opts), Some("hoist: fetch"))?;
        let stats = remote.stats();
        tracing::info!(
            url = %crate::redact::url(&self.url),
            ?refspecs,
            objects = stats.received_objects(),
            bytes = stats.received_bytes(),
            "fetched"
        );
        Ok(stats.received_objects())
    }

    /// libgit2's message (its `Display` appends class and code numbers nobody can act on),
    /// with a hint where the fix is known, scrubbed of credentials.
    fn explain(&self, e: &git2::Error) -> String {
        // libgit2 picks the local transport only for a path that exists; for one that does
        // not it says "unsupported URL protocol", which sends people looking at the URL syntax.
        let path = self.url.strip_prefix("file://").unwrap_or(&self.url);
        if path.starts_with('/') && !Path::new(path).exists() {
            return format!("there is no repository at {path}");
        }
        let hint = match (e.class(), e.code()) {
            (git2::ErrorClass::Ssh, ErrorCode::Certificate) => {
                " (add the server's host key to ~/.ssh/known_hosts, e.g. with ssh-keyscan)"
            }
            (_, ErrorCode::Auth) => {
                " (check the ssh agent, ~/.ssh keys or git credential helper of the hoist user)"
            }
            _ => "",
        };
        self.scrub(&format!("{}{hint}", e.message()))
    }

    /// `text` with the URL's credentials, if any, replaced: libgit2 may echo the URL it was given.
    fn scrub(&self, text: &str) -> String {
        crate::redact::scrub(text, &self.url)
    }
}

/// Commits of history a workspace holds: the run's commit and its nearest ancestors, like
/// Woodpecker's default clone depth. Copying all of it would make every run's checkout cost
/// grow with the repository's age (10 000 commits: tens of thousands of objects per run).
pub const WORKSPACE_DEPTH: usize = 50;

/// Copy `oid` and at most [`WORKSPACE_DEPTH`] commits of its history (nothing else) from
/// `from` into `to` as one pack, and mark `to` shallow where the history was cut, as
/// `git clone --depth` does (`.git/shallow`), so that `git log` there ends cleanly.
///
/// Not a fetch over the local transport: libgit2's local transport ignores the wanted
/// objects and sends everything reachable from every ref of the source, so a workspace
/// would receive all branches of the mirror. The pack is streamed, never held in memory.
fn copy_history(from: &Repository, to: &Repository, oid: Oid) -> anyhow::Result<()> {
    // Unsorted: libgit2 sorts a walk (by time or topologically) only after reading the whole
    // history, so a sorted walk's cost grew with every run (8 → 40 ms a checkout over 4000
    // runs). The unsorted walk is lazy and still yields a commit only after one of its
    // children, so every commit taken is connected to `oid` through commits taken; those whose
    // parents were not taken are the shallow boundary.
    let mut walk = from.revwalk()?;
    walk.set_sorting(git2::Sort::NONE)?;
    walk.push(oid)?;
    let commits = walk
        .take(WORKSPACE_DEPTH)
        .collect::<Result<std::collections::HashSet<Oid>, _>>()?;
    let mut pack = from.packbuilder()?;
    let mut cut = Vec::new();
    for &c in &commits {
        pack.insert_commit(c)?;
        if from
            .find_commit(c)?
            .parent_ids()
            .any(|p| !commits.contains(&p))
        {
            cut.push(c.to_string());
        }
    }
    let odb = to.odb()?;
    let mut writer = odb.packwriter()?;
    let mut written = Ok(());
    pack.foreach(|chunk| {
        written = writer.write_all(chunk);
        written.is_ok()
    })?;
    written?;
    writer.commit()?;
    if !cut.is_empty() {
        cut.sort_unstable();
        let shallow = to.path().join("shallow");
        fs::write(&shallow, cut.join("\n") + "\n")
            .with_context(|| format!("cannot write {}", shallow.display()))?;
    }
    Ok(())
}

fn has_commit(repo: &Repository, oid: Oid) -> bool {
    repo.find_commit(oid).is_ok()
}

/// The commit `oid` names: itself, or the commit an annotated tag object `oid` tags (through
/// tags of tags). None when the mirror has neither.
fn peeled_commit(repo: &Repository, oid: Oid) -> Option<Oid> {
    if has_commit(repo, oid) {
        return Some(oid);
    }
    let tag = repo.find_tag(oid).ok()?;
    tag.as_object().peel_to_commit().ok().map(|c| c.id())
}

fn find_commit(repo: &Repository, oid: Oid) -> anyhow::Result<git2::Commit<'_>> {
    repo.find_commit(oid)
        .map_err(|_| anyhow!("commit {oid} is not in the mirror; fetch it first"))
}

/// `git_ref` ends up in a refspec, so it must be a plain, valid ref name (no `:`, no `+`,
/// no `..`) under refs/.
fn check_ref_name(git_ref: &str) -> anyhow::Result<()> {
    if !git_ref.starts_with("refs/") || !Reference::is_valid_name(git_ref) {
        bail!("{git_ref:?} is not a full ref name like refs/heads/main");
    }
    Ok(())
}

fn ensure_empty_dir(dest: &Path) -> anyhow::Result<()> {
    match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; refusing to check out into it",
                    dest.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dest.display())),
    }
}

/// Credentials for ssh and https remotes. libgit2 calls this again after each rejected
/// credential, and calls it forever if it keeps getting one back, so every source is
/// tried once and then we give up with an error.
fn remote_callbacks<'a>() -> RemoteCallbacks<'a> {
    let mut tried = CredentialsTried::default();
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(move |url, username, allowed| tried.next(url, username, allowed));
    callbacks
}

/// Which credential sources were already offered during one connection.
#[derive(Default)]
struct CredentialsTried {
    /// The ssh agent was offered (it is skipped without `SSH_AUTH_SOCK`).
    agent: bool,
    /// How many of the existing [`DEFAULT_SSH_KEYS`] were offered.
    keys: usize,
    /// The git credential helpers were asked (https).
    helper: bool,
}

impl CredentialsTried {
    fn next(
        &mut self,
        url: &str,
        username: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, git2::Error> {
        // An ssh URL without a user (ssh://host/repo): forges all expect "git".
        let user = username.unwrap_or("git");
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if !self.agent {
                self.agent = true;
                if std::env::var_os("SSH_AUTH_SOCK").is_some() {
                    return Cred::ssh_key_from_agent(user);
                }
            }
            let home = std::env::var_os("HOME").map(PathBuf::from);
            let keys: Vec<PathBuf> = DEFAULT_SSH_KEYS
                .iter()
                .filter_map(|k| Some(home.as_ref()?.join(".ssh").join(k)))
                .filter(|k| k.is_file())
                .collect();
            if let Some(key) = keys.get(self.keys) {
                self.keys += 1;
                // No passphrase: an agent is the way to use a protected key unattended.
                return Cred::ssh_key(user, None, key, None);
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) && !self.helper {
            self.helper = true;
            if let Ok(config) = git2::Config::open_default()
                && let Ok(cred) = Cred::credential_helper(&config, url, username)
            {
                return Ok(cred);
            }
        }
        Err(git2::Error::new(
            ErrorCode::Auth,
            git2::ErrorClass::Callback,
            "no credential was accepted",
        ))
    }
}

/// Workspaces for runs under `root`: one directory per run; successful ones removed, the last
/// `keep_failed` failed ones kept for debugging.
///
/// Layout: `root/run-<id>/` is the workspace; `root/run-<id>.failed` is an empty marker
/// written when the run failed. The marker sits beside the directory, not in it, so the
/// workspace path a run logged stays valid and the build's files are left as they were.
/// Directories without a marker belong to running (or crashed) runs and are never pruned.
#[derive(Debug, Clone)]
pub struct Workspaces {
    /// The directory holding all workspaces; nothing else should live there.
    root: PathBuf,
    /// How many failed workspaces to keep, newest (highest run id) first.
    keep_failed: usize,
}

impl Workspaces {
    pub fn new(root: &Path, keep_failed: usize) -> anyhow::Result<Workspaces> {
        fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        Ok(Workspaces {
            root: root.to_path_buf(),
            keep_failed,
        })
    }

    /// A fresh empty directory for run `run` (removing any leftover of the same run, e.g.
    /// after a crash).
    pub fn create(&self, run: i64) -> anyhow::Result<PathBuf> {
        let dir = self.dir(run);
        remove_if_present(&dir)?;
        remove_file_if_present(&self.marker(run))?;
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Readable by the (possibly other) user a build container runs as, whatever our umask.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        Ok(dir)
    }

    /// Done with run `run`: remove it when `failed` is false; otherwise keep it and prune
    /// older failed ones beyond keep_failed.
    pub fn finish(&self, run: i64, failed: bool) -> anyhow::Result<()> {
        if !failed {
            remove_if_present(&self.dir(run))?;
            return remove_file_if_present(&self.marker(run));
        }
        let marker = self.marker(run);
        fs::write(&marker, b"").with_context(|| format!("cannot write {}", marker.display()))?;
        self.prune(None)
    }

    /// Remove failed workspaces beyond the newest keep_failed, and those that failed longer
    /// than `older_than` ago (the runs' retention age, so that a workspace never outlives its
    /// run's record by much). Workspaces of running runs have no marker and are never touched.
    pub fn prune(&self, older_than: Option<std::time::Duration>) -> anyhow::Result<()> {
        let mut failed_runs = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let name = entry?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_prefix("run-")?.strip_suffix(".failed"))
                .and_then(|id| id.parse::<i64>().ok());
            failed_runs.extend(id);
        }
        failed_runs.sort_unstable_by(|a, b| b.cmp(a));
        let too_old = |run: i64| {
            older_than.is_some_and(|age| {
                fs::metadata(self.marker(run))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age))
            })
        };
        for (i, old) in failed_runs.into_iter().enumerate() {
            if i < self.keep_failed && !too_old(old) {
                continue;
            }
            // Directory first: if it cannot be removed, the marker stays and the next
            // prune tries again.
            remove_if_present(&self.dir(old))?;
            remove_file_if_present(&self.marker(old))?;
            tracing::debug!(run = old, "pruned failed workspace");
        }
        Ok(())
    }

    /// At start, before any run: remove the workspaces of runs an agent stop interrupted
    /// (no `.failed` marker, so no finished run's). A run queued again gets a fresh one; one
    /// cancelled meanwhile would otherwise keep its workspace for ever. Returns how many.
    pub fn remove_interrupted(&self) -> anyhow::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root)? {
            let name = entry?.file_name();
            let Some(run) = name
                .to_str()
                .and_then(|n| n.strip_prefix("run-"))
                .and_then(|id| id.parse::<i64>().ok())
            else {
                continue;
            };
            if !self.marker(run).exists() {
                remove_if_present(&self.dir(run))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn dir(&self, run: i64) -> PathBuf {
        self.root.join(format!("run-{run}"))
    }

    fn marker(&self, run: i64) -> PathBuf {
        self.root.join(format!("run-{run}.failed"))
    }
}

/// Remove a workspace directory tree. Builds leave read-only directories behind (Go's module
/// cache is the classic case), and their entries cannot be unlinked until the directory is
/// writable again, so on failure make every directory writable and try once more.
fn remove_if_present(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    make_dirs_writable(dir);
    fs::remove_dir_all(dir).with_context(|| {
        format!(
            "cannot remove {} (files created by a container as another user?)",
            dir.display()
        )
    })
}

fn make_dirs_writable(dir: &Path) {
    // symlink_metadata: never follow a link out of the workspace and chmod something else.
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_dirs_writable(&entry.path());
        }
    }
}

fn remove_file_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Run the git CLI in `dir`, isolated from the machine's git config; returns stdout.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A bare "remote" repository fed from a work clone, plus a place for the mirror.
    struct Fixture {
        tmp: tempfile::TempDir,
        /// The bare repository hoist fetches from.
        remote: PathBuf,
        /// Where commits are made before being pushed to `remote`.
        work: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let remote = tmp.path().join("remote.git");
            let work = tmp.path().join("work");
            git(
                tmp.path(),
                &["init", "-q", "--bare", "-b", "main", "remote.git"],
            );
            git(tmp.path(), &["init", "-q", "-b", "main", "work"]);
            Fixture { tmp, remote, work }
        }

        /// Write `files`, commit and push `branch`; returns the new commit id.
        fn commit(&self, branch: &str, files: &[(&str, &str)]) -> String {
            for (name, content) in files {
                let path = self.work.join(name);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, content).unwrap();
            }
            git(&self.work, &["add", "-A"]);
            git(
                &self.work,
                &["commit", "-q", "--allow-empty", "-m", "change"],
            );
            let remote = self.remote.to_str().unwrap();
            git(
                &self.work,
                &["push", "-q", remote, &format!("HEAD:refs/heads/{branch}")],
            );
            git(&self.work, &["rev-parse", "HEAD"])
        }

        fn url(&self) -> &str {
            self.remote.to_str().unwrap()
        }

        fn mirror(&self) -> Mirror {
            Mirror::open(&self.tmp.path().join("data/mirrors/app.git"), self.url()).unwrap()
        }
    }

    fn mirror_has(m: &Mirror, commit: &str) -> bool {
        has_commit(&m.repo().unwrap(), Oid::from_str(commit).unwrap())
    }

    #[test]
    fn commit_ids_are_forty_lowercase_hex() {
        assert!(is_commit_id(&"a1".repeat(20)));
        assert!(!is_commit_id(&"A1".repeat(20)));
        assert!(!is_commit_id(&"a1".repeat(19)));
        assert!(!is_commit_id(&format!("{}g", "a".repeat(39))));
        assert!(!is_commit_id("refs/heads/main"));
    }

    #[test]
    fn fetches_a_commit_that_is_not_the_tip_over_paths_and_file_urls() {
        // libgit2's local transport ignores the wants and sends everything reachable from
        // the remote's refs, so over paths only "present and anchored" can be checked; the
        // git:// tests below check that exactly the commit is transferred.
        for file_url in [false, true] {
            let f = Fixture::new();
            let first = f.commit("main", &[("a.txt", "one")]);
            f.commit("main", &[("a.txt", "two")]);
            let url = if file_url {
                format!("file://{}", f.url())
            } else {
                f.url().to_string()
            };
            let m = Mirror::open(&f.tmp.path().join("mirror.git"), &url).unwrap();

            m.fetch(&first, "refs/heads/main").unwrap();
            assert!(mirror_has(&m, &first));
            let repo = m.repo().unwrap();
            let main = repo.refname_to_id("refs/heads/main").unwrap();
            assert_eq!(
                main.to_string(),
                first,
                "the mirror's ref anchors the fetched commit"
            );
        }
    }

    #[test]
    fn second_fetch_of_a_present_commit_does_not_touch_the_network() {
        let f = Fixture::new();
        let c = f.commit("main", &[("a.txt", "one")]);
        f.mirror().fetch(&c, "refs/heads/main").unwrap();
        // Same mirror, but a URL that cannot work: success means no fetch was attempted.
        let path = f.tmp.path().join("data/mirrors/app.git");
        let offline = Mirror::open(&path, "/nonexistent/remote.git").unwrap();
        offline.fetch(&c, "refs/heads/main").unwrap();
    }

    #[test]
    fn fetch_reports_a_commit_the_remote_does_not_have() {
        let f = Fixture::new();
        f.commit("main", &[("a.txt", "one")]);
        let missing = "0123456789abcdef0123456789abcdef01234567";
        let err = f.mirror().fetch(missing, "refs/heads/main").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "commit {missing} is not in {} (was the branch force-pushed away?)",
                f.url()
            )
        );
    }

    #[test]
    fn fetch_reports_an_unreachable_url() {
        let tmp = tempfile::tempdir().unwrap();
        let c = "0123456789abcdef0123456789abcdef01234567";
        for url in [
            "/nonexistent/remote.git",
            "file:///nonexistent/remote.git",
            "http://127.0.0.1:1/remote.git",
        ] {
            let m = Mirror::open(&tmp.path().join("m.git"), url).unwrap();
            let err = m.fetch(c, "refs/heads/main").unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("cannot fetch from {url}: ")),
                "{err}"
            );
            assert!(!err.contains("class="), "libgit2's noise stays out: {err}");
        }
    }

    #[test]
    fn fetch_rejects_bad_input_before_any_git_call() {
        let f = Fixture::new();
        let m = f.mirror();
        assert!(m.fetch("main", "refs/heads/main").is_err());
        let c = "0123456789abcdef0123456789abcdef01234567";
        for bad_ref in [
            "main",
            "refs/heads/a:refs/heads/b",
            "+refs/heads/x",
            "refs/heads/..",
        ] {
            let err = m.fetch(c, bad_ref).unwrap_err().to_string();
            assert!(err.contains("not a full ref name"), "{bad_ref}: {err}");
        }
    }

    /// `git daemon` serving the fixture's repositories over git:// on a free local port.
    struct Daemon {
        child: Child,
        port: u16,
    }

    impl Daemon {
        fn start(base: &Path) -> Daemon {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            // `git daemon` would run git-daemon as a child of its own, which killing `git`
            // leaves behind (holding our inherited descriptors); run git-daemon itself.
            let exec_path = Command::new("git").arg("--exec-path").output().unwrap();
            let exec_path = String::from_utf8(exec_path.stdout).unwrap();
            let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
                .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", base.display()))
                .arg(base)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("git daemon starts");
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "git daemon did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
            Daemon { child, port }
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn fetch_over_the_network_takes_exactly_the_commit_then_only_what_is_new() {
        let f = Fixture::new();
        let first = f.commit("main", &[("a.txt", "one")]);
        let second = f.commit("main", &[("a.txt", "two")]);
        git(
            &f.remote,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        let daemon = Daemon::start(f.tmp.path());
        let url = format!("git://127.0.0.1:{}/remote.git", daemon.port);
        let m = Mirror::open(&f.tmp.path().join("mirror.git"), &url).unwrap();

        m.fetch(&first, "refs/heads/main").unwrap();
        assert!(mirror_has(&m, &first));
        assert!(!mirror_has(&m, &second), "only the named commit's history");

        // The mirror's ref is offered as a "have": the second fetch brings the new commit,
        // its tree and its one changed blob, nothing older.
        let received = m
            .fetch_refspecs(&m.repo().unwrap(), &[second.as_str()])
            .unwrap();
        assert_eq!(received, 3);
    }

    #[test]
    fn fetch_falls_back_to_the_ref_when_the_server_refuses_a_sha() {
        // git daemon speaks protocol v0 to libgit2 and, with allowReachableSHA1InWant off
        // (the default), refuses a want for a commit that is not a ref tip.
        let f = Fixture::new();
        let first = f.commit("main", &[("a.txt", "one")]);
        let second = f.commit("main", &[("a.txt", "two")]);
        let daemon = Daemon::start(f.tmp.path());
        let url = format!("git://127.0.0.1:{}/remote.git", daemon.port);
        let m = Mirror::open(&f.tmp.path().join("mirror.git"), &url).unwrap();
        let refused = m.fetch_refspecs(&m.repo().unwrap(), &[first.as_str()]);
        assert!(refused.is_err(), "the server really refuses: {refused:?}");

        m.fetch(&first, "refs/heads/main").unwrap();
        assert!(mirror_has(&m, &first));
        assert!(mirror_has(&m, &second), "the fallback fetched the branch");

        let gone = "0123456789abcdef0123456789abcdef01234567";
        let err = m.fetch(gone, "refs/heads/main").unwrap_err().to_string();
        assert_eq!(
            err,
            format!("commit {gone} is not in {url} (was the branch force-pushed away?)")
        );
    }

    #[test]
    fn read_file_returns_content_or_none() {
        let f = Fixture::new();
        let c = f.commit("main", &[(".hoist.yml", "steps: []\n"), ("dir/x", "x")]);
        let m = f.mirror();
        m.fetch(&c, "refs/heads/main").unwrap();

        assert_eq!(
            m.read_file(&c, ".hoist.yml").unwrap().as_deref(),
            Some("steps: []\n")
        );
        assert_eq!(m.read_file(&c, "dir/x").unwrap().as_deref(), Some("x"));
        assert_eq!(m.read_file(&c, "absent.yml").unwrap(), None);
        assert_eq!(m.read_file(&c, "dir/absent").unwrap(), None);
        assert!(m.read_file(&c, "dir").is_err(), "a directory is not a file");
        let not_fetched = "0123456789abcdef0123456789abcdef01234567";
        let err = m
            .read_file(not_fetched, ".hoist.yml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fetch it first"), "{err}");
    }

    #[test]
    fn read_file_refuses_files_over_the_limit() {
        let f = Fixture::new();
        let big = "x".repeat(MAX_READ_FILE + 1);
        let fits = "y".repeat(MAX_READ_FILE);
        let c = f.commit("main", &[("big.yml", &big), ("fits.yml", &fits)]);
        let m = f.mirror();
        m.fetch(&c, "refs/heads/main").unwrap();
        let err = m.read_file(&c, "big.yml").unwrap_err().to_string();
        assert!(err.contains("the limit is"), "{err}");
        assert_eq!(
            m.read_file(&c, "fits.yml").unwrap().unwrap().len(),
            MAX_READ_FILE
        );
    }

    #[test]
    fn checkout_writes_the_commit_with_modes_and_a_verified_head() {
        let f = Fixture::new();
        let first = f.commit(
            "main",
            &[("build.sh", "#!/bin/sh\necho one\n"), ("README", "r")],
        );
        let script = f.work.join("build.sh");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let exec = f.commit("main", &[]);
        let later = f.commit("main", &[("build.sh", "#!/bin/sh\necho three\n")]);
        let m = f.mirror();
        m.fetch(&exec, "refs/heads/main").unwrap();

        let dest = f.tmp.path().join("ws/run-1");
        m.checkout(&exec, &dest).unwrap();
        assert_eq!(
            fs::read_to_string(dest.join("build.sh")).unwrap(),
            "#!/bin/sh\necho one\n"
        );
        let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("build.sh"), 0o755, "the executable bit survives");
        assert_eq!(mode("README"), 0o644);
        // The git CLI agrees: detached at the commit, clean, and self-contained.
        assert_eq!(git(&dest, &["rev-parse", "HEAD"]), exec);
        assert_eq!(git(&dest, &["status", "--porcelain"]), "");
        assert_eq!(git(&dest, &["rev-parse", "--abbrev-ref", "HEAD"]), "HEAD");
        assert_eq!(
            git(&dest, &["log", "--format=%H"]).lines().last(),
            Some(first.as_str())
        );
        assert!(!dest.join(".git/objects/info/alternates").exists());
        let ws = Repository::open(&dest).unwrap();
        assert!(
            ws.find_commit(Oid::from_str(&later).unwrap()).is_err(),
            "only the history of the commit"
        );

        // An existing empty directory is fine; one with files in it is not.
        let empty = f.tmp.path().join("ws/run-2");
        fs::create_dir_all(&empty).unwrap();
        m.checkout(&first, &empty).unwrap();
        let err = m.checkout(&first, &dest).unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
    }

    #[test]
    fn ls_remote_lists_branches_and_peeled_tags() {
        let f = Fixture::new();
        let first = f.commit("main", &[("a", "1")]);
        let second = f.commit("feature/x", &[("a", "2")]);
        git(&f.work, &["tag", "light", &first]);
        git(&f.work, &["tag", "-a", "-m", "release", "v1.0", &first]);
        git(&f.work, &["push", "-q", f.url(), "--tags"]);

        let mut refs = f.mirror().ls_remote().unwrap();
        refs.sort();
        let expected: Vec<(String, String)> = [
            ("refs/heads/feature/x", &second),
            ("refs/heads/main", &first),
            ("refs/tags/light", &first),
            ("refs/tags/v1.0", &first),
        ]
        .into_iter()
        .map(|(r, c)| (r.to_string(), c.to_string()))
        .collect();
        assert_eq!(refs, expected);
    }

    #[test]
    fn workspaces_hold_a_bounded_shallow_history() {
        let f = Fixture::new();
        let first = f.commit("main", &[("a", "0")]);
        for _ in 1..WORKSPACE_DEPTH + 10 {
            git(&f.work, &["commit", "-q", "--allow-empty", "-m", "more"]);
        }
        let last = f.commit("main", &[("a", "1")]);
        let m = f.mirror();
        m.fetch(&last, "refs/heads/main").unwrap();

        let dest = f.tmp.path().join("ws/run-1");
        m.checkout(&last, &dest).unwrap();
        let log = git(&dest, &["log", "--format=%H"]);
        assert_eq!(log.lines().count(), WORKSPACE_DEPTH);
        assert_eq!(log.lines().next(), Some(last.as_str()));
        assert!(
            !log.contains(&first),
            "history beyond the depth is not copied"
        );
        assert_eq!(
            git(&dest, &["rev-parse", "--is-shallow-repository"]),
            "true"
        );
        assert_eq!(git(&dest, &["status", "--porcelain"]), "");
        git(&dest, &["fsck", "--no-dangling"]);

        // A short history is copied whole and the workspace is not shallow.
        let g = Fixture::new();
        let only = g.commit("main", &[("a", "0")]);
        let m = g.mirror();
        m.fetch(&only, "refs/heads/main").unwrap();
        let dest = g.tmp.path().join("ws/run-1");
        m.checkout(&only, &dest).unwrap();
        assert_eq!(
            git(&dest, &["rev-parse", "--is-shallow-repository"]),
            "false"
        );
    }

    #[test]
    fn compact_consolidates_the_packs_fetches_leave() {
        let f = Fixture::new();
        let m = f.mirror();
        let mut commits = Vec::new();
        for i in 0..6 {
            let c = f.commit("main", &[("n", &i.to_string())]);
            m.fetch(&c, "refs/heads/main").unwrap();
            commits.push(c);
        }
        let before = m.packs();
        assert!(before >= 6, "a pack per fetch: {before}");
        m.compact(before);
        assert_eq!(m.packs(), before, "at or under the bound nothing happens");
        m.compact(2);
        let after = m.packs();
        assert!(after <= 2, "{before} packs repacked into {after}");
        for c in &commits {
            assert!(mirror_has(&m, c), "{c} survives the repack");
        }
        git(&m.path, &["fsck", "--no-dangling"]);
    }

    #[test]
    fn ls_remote_reports_an_unreachable_url() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Mirror::open(&tmp.path().join("m.git"), "/nonexistent/remote.git").unwrap();
        let err = m.ls_remote().unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot list refs of /nonexistent/remote.git: \
             there is no repository at /nonexistent/remote.git"
        );
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            crate::redact::url("https://bot:s3cret@git.example.com/app.git"),
            "https://bot:***@git.example.com/app.git"
        );
        assert_eq!(
            crate::redact::url("ssh://git@host/app.git"),
            "ssh://git@host/app.git"
        );
        assert_eq!(crate::redact::url("git@host:app.git"), "git@host:app.git");
        let m = Mirror {
            path: PathBuf::new(),
            url: "https://bot:s3cret@host/app.git".into(),
        };
        assert_eq!(
            m.scrub("failed for https://bot:s3cret@host"),
            "failed for https://bot:***@host"
        );
        let m = Mirror {
            path: PathBuf::new(),
            url: "https://ghp_seca_token@host/app.git".into(),
        };
        assert_eq!(
            m.scrub("failed for https://ghp_seca_token@host"),
            "failed for https://***@host"
        );
        assert!(!format!("{m:?}").contains("ghp_seca_token"), "{m:?}");
    }

    #[test]
    fn interrupted_workspaces_are_removed_at_start_and_failed_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspaces::new(&tmp.path().join("work"), 2).unwrap();
        let failed = ws.create(1).unwrap();
        ws.finish(1, true).unwrap();
        // Runs 2 and 3 were running when the agent stopped.
        let interrupted = [ws.create(2).unwrap(), ws.create(3).unwrap()];
        fs::write(interrupted[0].join("file"), "x").unwrap();
        assert_eq!(ws.remove_interrupted().unwrap(), 2);
        assert!(failed.exists());
        assert!(interrupted.iter().all(|d| !d.exists()));
    }

    #[test]
    fn workspaces_keep_only_the_last_failed_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspaces::new(&tmp.path().join("work"), 2).unwrap();
        let dirs: Vec<PathBuf> = (1..=6).map(|run| ws.create(run).unwrap()).collect();
        for d in &dirs {
            fs::write(d.join("file"), "x").unwrap();
        }
        ws.finish(1, true).unwrap();
        ws.finish(2, false).unwrap();
        ws.finish(3, true).unwrap();
        ws.finish(4, true).unwrap();
        ws.finish(5, true).unwrap();
        // Run 6 is still running: not finished, never pruned.

        let exists: Vec<bool> = dirs.iter().map(|d| d.exists()).collect();
        assert_eq!(exists, [false, false, false, true, true, true]);
        let mut names: Vec<String> = fs::read_dir(tmp.path().join("work"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["run-4", "run-4.failed", "run-5", "run-5.failed", "run-6"]
        );

        // By age: failed longer ago than the retention age, even within the count.
        std::thread::sleep(std::time::Duration::from_millis(20));
        ws.prune(Some(std::time::Duration::from_secs(3600)))
            .unwrap();
        assert!(dirs[3].exists() && dirs[4].exists(), "young ones stay");
        ws.prune(Some(std::time::Duration::from_millis(10)))
            .unwrap();
        assert!(!dirs[3].exists() && !dirs[4].exists(), "old ones go");
        assert!(
            dirs[5].exists(),
            "a running run's workspace is never pruned"
        );
    }

    #[test]
    fn workspace_create_starts_empty_and_removal_survives_read_only_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspaces::new(tmp.path(), 0).unwrap();
        let dir = ws.create(7).unwrap();
        let locked = dir.join("pkg/mod");
        fs::create_dir_all(&locked).unwrap();
        fs::write(locked.join("go.mod"), "module x").unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(dir.join("pkg"), fs::Permissions::from_mode(0o555)).unwrap();

        // A leftover of the same run (a crash) is replaced by an empty directory.
        let again = ws.create(7).unwrap();
        assert_eq!(again, dir);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);

        // keep_failed = 0: even a failed run's workspace goes.
        ws.finish(7, true).unwrap();
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
