//! The `hoist` command line. Exit status: 0 success, 1 the thing failed, 2 usage or config error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use rand::RngCore;
use sha2::{Digest, Sha256};

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
    init_tracing(cli.log_format);
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Token {
            command: TokenCommand::Create { name },
        } => token_create(&name),
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
