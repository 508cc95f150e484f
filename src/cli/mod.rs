//! The command line: one subcommand per job, all against the same configuration and
//! database, whether or not a server is running. One file per subcommand, each with its
//! arguments and its `run`; [`context`] opens the configuration, database and master key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, EnvSettings, LogFormat};
use context::Context;

mod audit;
mod backup;
mod check_config;
mod clients;
mod context;
mod format;
mod healthcheck;
mod keys;
mod master_key;
mod migrate_store;
mod onboarding;
mod partners;
mod secrets;
mod serve;
mod telemetry;

/// keyward: JWKS issuer and key-management server.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, about)]
pub struct Cli {
    /// Configuration file (default: ./keys.toml if present, else the built-in defaults).
    #[arg(long, global = true, env = "KEYWARD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Start even if the database or the master key file is readable by group or others
    /// (by default keyward refuses, as ssh does for keys: fix with `chmod 600 FILE`).
    #[arg(long, global = true)]
    allow_insecure_permissions: bool,
    /// Let a command other than serve create the database when there is none yet.
    #[arg(long, global = true)]
    init: bool,
    /// Why: recorded with every change this command makes, in the audit trail (`keyward
    /// audit events`). Never required.
    #[arg(long, global = true, value_name = "TEXT")]
    reason: Option<String>,
    /// Log more: -v info, -vv debug (commands other than serve log warnings only; RUST_LOG wins).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// The end of `--help`: where the database is and every environment variable.
fn after_help() -> String {
    let mut text = format!(
        "Database: [server] database_url of the configuration (default {}). A relative \
         path in a configuration file is relative to that file's folder; with no file (built-in defaults) or \
         from KEYWARD_DATABASE_URL, to the working directory. Every command says on standard error which \
         configuration and database it used.\n\nEnvironment variables:\n",
        config::Config::default().server.database_url
    );
    for (name, what) in config::known_env() {
        text.push_str(&format!("  {name:<36} {what}\n"));
    }
    text.push_str(&format!("  {:<36} log filter, e.g. debug or keyward=debug,sqlx=warn\n", "RUST_LOG"));
    text
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the public (JWKS) and internal (signing) listeners.
    Serve,
    /// Validate the configuration and exit.
    CheckConfig,
    /// Inspect and rotate signing keys.
    #[command(subcommand)]
    Keys(keys::Command),
    /// Manage the clients allowed to call the internal API.
    #[command(subcommand)]
    Clients(clients::Command),
    /// Manage the shared secrets of HS256/HS512 profiles.
    #[command(subcommand)]
    Secrets(secrets::Command),
    /// The master key: status, rotation, re-sealing everything under fresh key material.
    #[command(subcommand)]
    MasterKey(master_key::Command),
    /// Which tokens were issued (filter the issuance ledger); who changed what (`audit
    /// events`); whether anything was removed or altered (`audit verify`).
    Audit(audit::Args),
    /// Write a consistent copy of the database to FILE while keyward runs (SQLite: VACUUM
    /// INTO; PostgreSQL: pg_dump --format=custom, which must be installed).
    Backup(backup::Args),
    /// Print what a partner asks for at onboarding, then check the published JWKS over HTTP.
    Onboarding(onboarding::Args),
    /// Exit 0 if the server's public /healthz answers 200 (for container health checks).
    Healthcheck,
    /// Per partner: last fetch, fetches in 24 h, addresses, whether it holds the current and
    /// the next key, gate states; and fetches that matched no partner.
    Partners(partners::Args),
    /// Copy everything into a new, empty database (e.g. SQLite to PostgreSQL) and verify the counts.
    MigrateStore(migrate_store::Args),
}

/// The parser, with the environment variables listed in its help.
pub fn command() -> clap::Command {
    Cli::command().after_help(after_help())
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let serving = matches!(cli.command, Command::Serve);
    if !serving {
        exit_quietly_on_closed_pipe();
    }
    let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("KEYWARD_")).collect();
    let settings = match EnvSettings::from_env(&env) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    // A command run by hand says only what went wrong, unless asked for more.
    let level = match (serving, cli.verbose) {
        (true, 0) | (false, 1) => "info,sqlx=warn",
        (false, 0) => "warn",
        _ => "debug,sqlx=warn",
    };
    if let Err(err) = telemetry::init(settings.log_format == LogFormat::Json, level) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &env, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `head` closing our standard output ends the process quietly, as it does other Unix
/// tools, rather than as a panic of `println!` (Rust ignores SIGPIPE by default). Not for
/// `serve`, whose sockets must not kill it.
fn exit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn run(cli: Cli, env: &HashMap<String, String>, settings: EnvSettings) -> anyhow::Result<()> {
    let ctx = Context::load(cli.config.as_deref(), env, settings, cli.init)?.because(cli.reason);
    for warning in &ctx.loaded.warnings {
        tracing::warn!("{warning}");
    }
    let (source, database) = ctx.describe();
    if matches!(cli.command, Command::Serve) {
        tracing::info!(config = %source, database = %database, "starting keyward {}", env!("CARGO_PKG_VERSION"));
    } else if let Command::MigrateStore(args) = &cli.command {
        // It works on the databases it is given, not on the configuration's.
        if let Some(databases) = args.describe() {
            eprintln!("keyward: migrate-store {databases}");
        }
    } else {
        eprintln!("keyward: configuration {source}; database {database}");
    }
    if !matches!(cli.command, Command::Healthcheck) {
        ctx.check_private_files(cli.allow_insecure_permissions)?;
    }
    match cli.command {
        Command::Serve => serve::run(&ctx).await,
        Command::CheckConfig => check_config::run(&ctx).await,
        Command::Keys(command) => keys::run(&ctx, command).await,
        Command::Clients(command) => clients::run(&ctx, command).await,
        Command::Secrets(command) => secrets::run(&ctx, command).await,
        Command::MasterKey(command) => master_key::run(&ctx, command).await,
        Command::Audit(args) => audit::run(&ctx, args).await,
        Command::Backup(args) => backup::run(&ctx, args).await,
        Command::Onboarding(args) => onboarding::run(&ctx, args).await,
        Command::Healthcheck => healthcheck::run(&ctx).await,
        Command::Partners(args) => partners::run(&ctx, args).await,
        Command::MigrateStore(args) => migrate_store::exec(args).await,
    }
}
