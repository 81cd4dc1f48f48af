//! `fleetwire`: the operator CLI of a fleet on Redis.
//!
//! Exit codes: 0 ok, 1 a runtime failure (Redis unreachable, a command
//! refused), 2 bad usage, 3 not found.

mod conn;
mod ctl;
mod dlq;
mod members;
mod output;
mod status;
mod streams;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "fleetwire",
    version,
    about = "Inspect and operate a fleetwire fleet on Redis"
)]
struct Cli {
    #[command(flatten)]
    global: conn::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Overview: Redis, services and their instances, streams and dead letters.
    Status,
    /// Registered instances (SERVICE ID HOST PID STATUS LAST-SEEN TTL).
    Members {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Print the members, then one line per change (joined, left,
        /// expired, status/metadata changed, unavailable, resynced) until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// With --watch: milliseconds between two listings.
        #[arg(long, value_name = "MS", default_value_t = 1000, requires = "watch")]
        interval_ms: u64,
    },
    /// Streams (STREAM LENGTH GROUPS FIRST-ID LAST-ID MAXLEN).
    Streams,
    /// Consumer groups of a stream (GROUP CONSUMERS PENDING LAG OLDEST-PENDING-AGE).
    Groups {
        /// The stream.
        stream: String,
    },
    /// The dead letters of a stream (`{stream}:dlq`).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Send a signed control command (needs SG_CONTROL_KEY) and show each instance's answer.
    Ctl(ctl::Ctl),
    /// Remove one instance from the registry.
    Deregister {
        /// Its service.
        service: String,
        /// Its instance id.
        id: String,
    },
}

/// Why a command failed, which decides the exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Exit 1.
    Runtime(String),
    /// Exit 2, as clap's own usage errors (an invalid name, say).
    Usage(String),
    /// Exit 3.
    NotFound(String),
}

impl From<fleetwire::Error> for Failure {
    fn from(e: fleetwire::Error) -> Self {
        match e.kind() {
            fleetwire::ErrorKind::NotFound => Self::NotFound(e.to_string()),
            fleetwire::ErrorKind::InvalidInput => Self::Usage(e.to_string()),
            _ => Self::Runtime(e.to_string()),
        }
    }
}

pub(crate) type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetwire: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Runtime(msg)) => {
            eprintln!("fleetwire: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("fleetwire: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::NotFound(msg)) => {
            eprintln!("fleetwire: {msg}");
            ExitCode::from(3)
        }
    }
}

async fn run(cli: Cli) -> Outcome {
    let ctx = conn::Ctx::connect(&cli.global).await?;
    match cli.command {
        Command::Status => status::run(&ctx).await,
        Command::Members {
            service,
            watch: true,
            interval_ms,
        } => {
            let every = std::time::Duration::from_millis(interval_ms);
            members::watch(&ctx, service.as_deref(), every).await
        }
        Command::Members { service, .. } => members::list(&ctx, service.as_deref()).await,
        Command::Streams => streams::list(&ctx).await,
        Command::Groups { stream } => streams::groups(&ctx, &stream).await,
        Command::Dlq(cmd) => dlq::run(&ctx, cmd).await,
        Command::Deregister { service, id } => members::deregister(&ctx, &service, &id).await,
        Command::Ctl(c) => ctl::run(&ctx, c).await,
    }
}
