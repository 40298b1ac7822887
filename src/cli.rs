//! The `hoist` command line. Exit status: 0 success, 1 the thing failed, 2 usage or config error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "hoist",
    version,
    about = "From git push to a verified release on every host"
)]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: webhooks, API, queue, workers.
    Serve {
        /// The agent's config file.
        #[arg(long, env = "HOIST_CONFIG", default_value = "/etc/hoist/hoist.toml")]
        config: PathBuf,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check a pipeline file; problems print as FILE:LINE:COL: message.
    Validate {
        /// The pipeline file (default: .hoist.yml).
        #[arg(default_value = ".hoist.yml")]
        file: PathBuf,
    },
    /// Run a pipeline's test steps on a local checkout, no server needed.
    Run {
        /// The pipeline file (default: DIR/.hoist.yml).
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// The Docker engine for container steps.
        #[arg(
            long,
            env = "DOCKER_HOST",
            default_value = "unix:///var/run/docker.sock"
        )]
        docker: String,
        /// The branch the checkout stands for, for steps' `when` (default: its current branch).
        #[arg(long, conflicts_with = "tag")]
        branch: Option<String>,
        /// The tag the checkout stands for, for steps' `when`.
        #[arg(long)]
        tag: Option<String>,
        /// The checkout to run in.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// List runs (newest first).
    Runs {
        #[command(flatten)]
        client: Client,
        /// Only this repository (owner/name).
        #[arg(long)]
        repo: Option<String>,
        /// Only runs in this status (queued, running, success, failed, …).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Roll an app back (default: the last good release before the current one); waits for the verdict.
    Rollback {
        #[command(flatten)]
        client: Client,
        app: String,
        /// The release to go back to.
        #[arg(long)]
        to: Option<i64>,
        /// Every host at once from its kept container: no batches, no bake.
        #[arg(long)]
        now: bool,
        /// Only this host (repeat for more), e.g. to leave out one that is down.
        #[arg(long = "host", value_name = "H")]
        hosts: Vec<String>,
    },
    /// List deployments (newest first): every app's, or APP's.
    Deployments {
        #[command(flatten)]
        client: Client,
        app: Option<String>,
    },
    /// One deployment: its verdict, and per host a timeline of its steps and what was read back.
    Deployment {
        #[command(flatten)]
        client: Client,
        id: i64,
    },
    /// Stop a deployment in flight and revert every host it touched, verified.
    Abort {
        #[command(flatten)]
        client: Client,
        deployment: i64,
    },
    /// Let a `manual` step that waits for a person go.
    Approve {
        #[command(flatten)]
        client: Client,
        run: i64,
        step: String,
    },
    /// Show each host: reachable, engine version, what runs there (per app with APP).
    Hosts {
        #[command(flatten)]
        client: Client,
        app: Option<String>,
    },
    /// List an app's releases: number, commit, digests.
    Releases {
        #[command(flatten)]
        client: Client,
        app: String,
    },
    /// Print a run's log; --follow streams it until the run ends.
    Logs {
        #[command(flatten)]
        client: Client,
        run: i64,
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random API token once, with the line that goes into hoist.toml.
    Create {
        /// A name for the token, e.g. the person or machine using it.
        name: String,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A stalled git server must not hang a fetch thread (and its mirror's lock) forever.
    // These are process-wide libgit2 settings: set them here, before any other thread exists.
    // `HOIST_GIT_TIMEOUT` (a duration) shortens the stall timeout, for tests.
    let stall = std::env::var("HOIST_GIT_TIMEOUT")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .map_or(120_000, |d| d.as_millis().clamp(1, 120_000) as i32);
    // SAFETY: no other thread is running yet, so nothing reads these options concurrently.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(stall.min(30_000));
        let _ = git2::opts::set_server_timeout_in_milliseconds(stall);
    }
    init_tracing(cli.log_format);
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Token {
            command: TokenCommand::Create { name },
        } => token_create(&name),
        Command::Validate { file } => validate(&file),
        Command::Run {
            pipeline,
            docker,
            branch,
            tag,
            dir,
        } => block_on(crate::local::run(
            pipeline,
            docker,
            dir,
            crate::local::Stands { branch, tag },
        )),
        Command::Runs {
            client,
            repo,
            status,
            limit,
        } => block_on(crate::client::runs(client, repo, status, limit)),
        Command::Logs {
            client,
            run,
            follow,
        } => block_on(crate::client::logs(client, run, follow)),
        Command::Releases { client, app } => block_on(crate::client::releases(client, app)),
        Command::Rollback {
            client,
            app,
            to,
            now,
            hosts,
        } => block_on(crate::client::rollback(client, app, to, now, hosts)),
        Command::Deployments { client, app } => block_on(crate::client::deployments(client, app)),
        Command::Deployment { client, id } => block_on(crate::client::deployment(client, id)),
        Command::Abort { client, deployment } => block_on(crate::client::abort(client, deployment)),
        Command::Hosts { client, app } => block_on(crate::client::hosts(client, app)),
        Command::Approve { client, run, step } => {
            block_on(crate::client::approve(client, run, step))
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(config: PathBuf) -> ExitCode {
    let config = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hoist: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hoist: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(crate::agent::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hoist: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Run a client command: its own exit code, or 2 with the error (a usage or connection problem).
fn block_on(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hoist: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hoist: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hoist: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match crate::pipeline::parse(&text) {
        Ok(p) => {
            let mut apps = vec![p.app.as_str()];
            for s in &p.steps {
                if let crate::pipeline::Action::Build(b) = &s.action
                    && !apps.contains(&b.app.as_str())
                {
                    apps.push(&b.app);
                }
            }
            let (noun, order) = match (apps.len(), p.is_graph()) {
                (1, false) => ("app", "in file order"),
                (1, true) => ("app", "as their needs allow"),
                (_, false) => ("apps", "in file order"),
                (_, true) => ("apps", "as their needs allow"),
            };
            println!(
                "{}: ok ({noun} {}, {} steps {order})",
                file.display(),
                apps.join(", "),
                p.steps.len()
            );
            let on_agent = p.runs_on_agent();
            if !on_agent.is_empty() {
                // Trust is the agent's to grant, per repository: the file alone cannot say.
                println!(
                    "note: {} run on the agent's own machine; the agent runs them only for a \
                     repository whose [[repo]] entry says `trusted = true`",
                    on_agent.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            print!(
                "{}",
                crate::pipeline::format_problems(&file.display().to_string(), &problems)
            );
            ExitCode::from(1)
        }
    }
}

fn token_create(name: &str) -> ExitCode {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("hoist_{}", hex::encode(bytes));
    let sha = hex::encode(Sha256::digest(token.as_bytes()));
    println!("{token}");
    eprintln!(
        "\nThis token is shown once. Add its hash to hoist.toml:\n\n[[token]]\nname   = {name:?}\nsha256 = \"{sha}\""
    );
    ExitCode::SUCCESS
}
