//! `imstore`: the operations of an imstore deployment from the command line (migrate, purge,
//! re-key, the conformance suite and the history checker against your own servers, counts).
//!
//! Every setting comes from a flag or its environment variable (`imstore --help`); the store is
//! named by a URL (`memory://`, `postgres://…`, `mongodb://…`, `scylla://h1,h2/keyspace`, see
//! the facade's `imstore::url`).

mod conformance;
mod ops;
mod settings;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Operations on an imstore deployment: schema migrations, the retention purge, key rotation,
/// the conformance suite and the history checker against your own servers, and counts.
#[derive(Parser, Debug)]
#[command(name = "imstore", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: settings::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates or upgrades the schema, keyspace and indexes the store needs (idempotent).
    Migrate {
        /// Says what would be done, changes nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Removes what retention and the history limit expire (one pass, or every DURATION).
    Purge(ops::PurgeArgs),
    /// Re-seals every stored message under the active key (resumable; progress on stderr).
    Rekey(ops::RekeyArgs),
    /// Runs every conformance case against the server at --url, each in a namespace it creates.
    Conformance(conformance::ConformanceArgs),
    /// Records concurrent histories against the server at --url and checks them (linearizability).
    Check(conformance::CheckArgs),
    /// Counts messages, change events, request records and the purgeable backlog.
    Stats(StatsArgs),
}

#[derive(Args, Debug)]
struct StatsArgs {}

/// How a command failed, as its exit status: 1 a failure (a failing case, a store error),
/// 2 a usage error (a bad flag, URL or setting).
#[derive(Debug)]
pub enum Failure {
    /// The work failed.
    Failed(String),
    /// The command was asked something it cannot do.
    Usage(String),
}

impl From<imstore::Error> for Failure {
    fn from(e: imstore::Error) -> Self {
        match e.kind() {
            imstore::ErrorKind::InvalidInput => Failure::Usage(e.to_string()),
            _ => Failure::Failed(e.to_string()),
        }
    }
}

/// A command's result.
pub type Outcome = std::result::Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("imstore: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed(why)) => {
            eprintln!("imstore: {why}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(why)) => {
            eprintln!("imstore: {why}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Outcome {
    let g = &cli.global;
    match cli.command {
        Command::Migrate { dry_run } => ops::migrate(g, dry_run).await,
        Command::Purge(args) => ops::purge(g, &args).await,
        Command::Rekey(args) => ops::rekey(g, &args).await,
        Command::Conformance(args) => conformance::conformance(g, &args).await,
        Command::Check(args) => conformance::check(g, &args).await,
        Command::Stats(StatsArgs {}) => ops::stats(g).await,
    }
}
