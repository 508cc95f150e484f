//! The command line: one subcommand per job, all against the same configuration and
//! database, whether or not a server is running.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{self, Database, EnvSettings, LoadedConfig, LogFormat};
use crate::keys::export::{self, Format};
use crate::keys::rotation::{Exposure, ImportAs, Refused, Step};
use crate::keys::timeline::Moment;
use crate::keys::{KeyRecord, KeyState};
use crate::ops::clients::ClientError;
use crate::ops::{self, ActionError};
use crate::ops::{clients, secrets};
use crate::seal::{MasterKey, MasterKeyOrigin};
use crate::startup::Application;
use crate::store::rows::Filter;
use crate::store::sqlite;
use crate::store::Store;
use crate::{keys, private_files};

mod migrate_store;
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
    Keys(KeysCommand),
    /// Manage the clients allowed to call the internal API.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Manage the shared secrets of HS256/HS512 profiles.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Which tokens were issued: filter the issuance ledger.
    Audit {
        /// Only this subject.
        #[arg(long, allow_hyphen_values = true)]
        sub: Option<String>,
        /// Only tokens signed by this key (kids may start with '-').
        #[arg(long, allow_hyphen_values = true)]
        kid: Option<String>,
        /// Only tokens this client asked for.
        #[arg(long, allow_hyphen_values = true)]
        client: Option<String>,
        /// Only this profile.
        #[arg(long, allow_hyphen_values = true)]
        profile: Option<String>,
        /// Issued at or after: RFC 3339 (2026-11-17T00:00:00Z), a date (2026-11-17: its start,
        /// UTC) or an age (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Issued before: RFC 3339, a date (its start, UTC: --until 2026-11-18 ends with the
        /// 17th) or an age.
        #[arg(long)]
        until: Option<String>,
        /// At most this many rows, newest first.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the database to FILE while keyward runs (SQLite: VACUUM
    /// INTO; PostgreSQL: pg_dump --format=custom, which must be installed).
    Backup {
        /// The copy; must not exist.
        file: PathBuf,
    },
    /// Print what a partner asks for at onboarding, then check the published JWKS over HTTP.
    Onboarding {
        /// Profile name.
        #[arg(allow_hyphen_values = true)]
        profile: String,
        /// Check the JWKS served by this configuration's own public listener instead of iss.
        #[arg(long)]
        local: bool,
    },
    /// Exit 0 if the server's public /healthz answers 200 (for container health checks).
    Healthcheck,
    /// Copy everything into a new, empty database (e.g. SQLite to PostgreSQL) and verify the counts.
    MigrateStore(migrate_store::Args),
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Store PROFILE's secret, read from standard input (never from the command line).
    Set {
        /// Profile name.
        #[arg(allow_hyphen_values = true)]
        profile: String,
    },
    /// List the profiles that have a secret, with dates (never the secrets).
    List,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List every key: set, kid, algorithm, state and timestamps.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Planned rotation now: the next key signs, if it has been published for publish_ahead.
    Rotate {
        /// Key set name.
        #[arg(allow_hyphen_values = true)]
        set: String,
        /// Rotate even if the next key was published too recently (verifiers may not have it).
        #[arg(long)]
        force: bool,
    },
    /// Emergency: the key leaves the JWKS at once; if it was signing, the next key takes over.
    Revoke {
        /// The key's kid.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
    /// Print a key's public half: jwk (default, as the JWKS publishes it), pem or pem-base64
    /// (what PaymentsGate calls public_key); the same as GET /v1/keys/{kid}/public.
    Export {
        /// The key's kid.
        #[arg(allow_hyphen_values = true)]
        kid: String,
        /// Output format.
        #[arg(long, default_value = "jwk", value_parser = export::Format::NAMES)]
        format: String,
    },
    /// Add an existing private key (PKCS#1, PKCS#8 or SEC1 PEM) to SET as its next key.
    Import {
        /// Key set name.
        #[arg(allow_hyphen_values = true)]
        set: String,
        /// The PEM file.
        #[arg(long, value_name = "FILE")]
        pem: PathBuf,
        /// Make it the signing key at once (the current key becomes previous).
        #[arg(long)]
        activate: bool,
        /// With --activate: sign with it although no verifier has it yet.
        #[arg(long, requires = "activate")]
        force: bool,
        /// Without --activate: retire the set's current next key to make room for it.
        #[arg(long, conflicts_with = "activate")]
        replace_next: bool,
    },
    /// Every key's publication and signing window, past and planned.
    Schedule {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Create a client; its token is printed once, as the only line on standard output.
    Add {
        /// Client name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Profiles the client may sign with, comma-separated.
        #[arg(long, value_delimiter = ',')]
        profiles: Vec<String>,
        /// Allow the admin routes too.
        #[arg(long)]
        admin: bool,
        /// Its own rate limit, requests per second (default: [server] rate_limit).
        #[arg(long)]
        rate: Option<u32>,
        /// Its own burst (default: twice --rate, as the server's 100/s with 200; without
        /// --rate, [server] rate_burst).
        #[arg(long, requires = "rate")]
        burst: Option<u32>,
    },
    /// Give a client a new token (printed once, on standard output); the old one stops
    /// working at once, or after --grace.
    Rotate {
        /// Client name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Keep the old token working this long (e.g. 10m, 1h, 1d), to roll the new one out.
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
    /// List clients (never their tokens).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a client's token (a revoked client's name may be given to a new client).
    Revoke {
        /// Client name.
        #[arg(allow_hyphen_values = true)]
        name: String,
    },
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

fn load_config(explicit: Option<&PathBuf>, env: &HashMap<String, String>) -> anyhow::Result<LoadedConfig> {
    let source = config::choose_source(explicit.map(PathBuf::as_path), Path::new("keys.toml").is_file());
    let loaded = config::load(source, env)?;
    // Profiles are checked as they are parsed: every command refuses a bad one, as serve does.
    crate::policy::profile::parse_profiles(&loaded.config, &loaded.source.to_string())?;
    Ok(loaded)
}

/// The configuration's origin and database, as every command reports them.
fn describe(loaded: &LoadedConfig) -> (String, Database) {
    let source = match &loaded.source {
        config::ConfigSource::Defaults => "built-in defaults (no --config, KEYWARD_CONFIG or ./keys.toml)".to_owned(),
        config::ConfigSource::File(path) => {
            std::path::absolute(path).unwrap_or_else(|_| path.clone()).display().to_string()
        }
    };
    match loaded.config.database() {
        Database::Sqlite(path) => (source, Database::Sqlite(std::path::absolute(&path).unwrap_or(path))),
        postgres => (source, postgres),
    }
}

/// Opens the database; only with `--init` may a command other than `serve` create it, so
/// that running one in the wrong folder cannot quietly start a second, empty database.
async fn open_database(loaded: &LoadedConfig, init: bool) -> anyhow::Result<Store> {
    let (source, database) = describe(loaded);
    let path = match &database {
        Database::Sqlite(path) => path,
        // A PostgreSQL database is made by its administrator, never by a mistyped folder.
        Database::Postgres(_) => return Store::connect(&database).await,
    };
    if !init && !path.exists() {
        let why = match &loaded.source {
            config::ConfigSource::Defaults => format!(
                "no configuration file was found, so the default database path is taken relative to the \
                 working directory {}",
                std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default()
            ),
            config::ConfigSource::File(_) => format!("that is the database_url of {source}"),
        };
        bail!(
            "no database at {} ({why}). Run the command where keys.toml is, name it with --config, or add --init \
             to create a new database there",
            path.display()
        );
    }
    Store::open(&path).await
}

/// The master key; a development key is generated only for a database with no sealed keys,
/// and only where generating is allowed (not in the Docker image unless KEYWARD_DEV=1).
async fn master_key(loaded: &LoadedConfig, store: &Store, settings: EnvSettings) -> anyhow::Result<MasterKey> {
    let env = std::env::var("KEYWARD_MASTER_KEY").ok();
    let file = &loaded.config.server.master_key_file;
    let empty = !store.holds_sealed_material().await?;
    if empty && env.is_none() && !file.exists() && !settings.may_generate_master_key {
        bail!(
            "no master key: KEYWARD_MASTER_KEY is not set and {} does not exist, and KEYWARD_DEV=0 forbids \
             generating one. Make one with `openssl rand -base64 32 > master.key`, keep a copy in your secrets \
             manager, and give it as KEYWARD_MASTER_KEY or mount it at {} (readable by the user keyward runs \
             as: uid 10001 in the image, mode 0400). For a throwaway development key set KEYWARD_DEV=1",
            file.display(),
            file.display()
        );
    }
    let (key, origin) = MasterKey::resolve(env.as_deref(), file, empty)?;
    match origin {
        MasterKeyOrigin::Environment => tracing::info!(master_key_id = key.id(), "master key from KEYWARD_MASTER_KEY"),
        MasterKeyOrigin::File(path) => {
            tracing::info!(master_key_id = key.id(), file = %path.display(), "master key from file");
        }
        MasterKeyOrigin::Generated(path) => tracing::warn!(
            master_key_id = key.id(),
            file = %path.display(),
            "NO MASTER KEY CONFIGURED: generated a random one for DEVELOPMENT ONLY. In production set \
             KEYWARD_MASTER_KEY (base64 of 32 bytes) from your secrets manager, and back this key up: \
             without it the stored private keys cannot be opened"
        ),
    }
    Ok(key)
}

/// The database and the master key file hold secrets (sealed keys, client-token hashes,
/// who got which token): refuse to use them while group or others may read them, as ssh
/// does for keys, unless the operator says otherwise.
fn check_private_files(loaded: &LoadedConfig, allow_insecure: bool) -> anyhow::Result<()> {
    let mut files = match loaded.config.database() {
        Database::Sqlite(path) => sqlite::database_files(&path),
        Database::Postgres(_) => Vec::new(),
    };
    if std::env::var_os("KEYWARD_MASTER_KEY").is_none() {
        files.push(loaded.config.server.master_key_file.clone());
    }
    for file in files {
        let Some(mode) = private_files::shared_mode(&file) else { continue };
        if allow_insecure {
            tracing::warn!(file = %file.display(), mode = format!("{mode:04o}"), "readable by group or others (allowed by --allow-insecure-permissions)");
        } else {
            bail!(
                "{} has mode {mode:04o}: group or others may read it, and it holds secrets. Fix: chmod 600 {} \
                 (or start with --allow-insecure-permissions)",
                file.display(),
                file.display()
            );
        }
    }
    Ok(())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn run(cli: Cli, env: &HashMap<String, String>, settings: EnvSettings) -> anyhow::Result<()> {
    let loaded = load_config(cli.config.as_ref(), env)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let config = &loaded.config;
    let (source, database) = describe(&loaded);
    if matches!(cli.command, Command::Serve) {
        tracing::info!(config = %source, database = %database, "starting keyward {}", env!("CARGO_PKG_VERSION"));
    } else {
        eprintln!("keyward: configuration {source}; database {database}");
    }
    if !matches!(cli.command, Command::Healthcheck) {
        check_private_files(&loaded, cli.allow_insecure_permissions)?;
    }
    let init = cli.init;
    match cli.command {
        Command::CheckConfig => check_config(&loaded, settings).await,
        Command::Serve => {
            let master = master_key(&loaded, &Store::connect(&database).await?, settings).await?;
            let workers = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
            let app = Application::build(config.clone(), master, workers).await?;
            tracing::info!(public = %app.public_addr(), internal = %app.internal_addr(), workers, "listening");
            app.run_until_stopped().await
        }
        Command::Healthcheck => healthcheck(config.server.public_addr),
        Command::MigrateStore(args) => migrate_store::exec(args).await,
        Command::Keys(KeysCommand::List { json }) => {
            let store = open_database(&loaded, init).await?;
            let records = store.keys().await?;
            let now = now();
            if json {
                let listed: Vec<ListedKey> =
                    records.iter().map(|record| ListedKey { state: record.state_at(now), record }).collect();
                println!("{}", serde_json::to_string_pretty(&listed)?);
                return Ok(());
            }
            println!(
                "{:<12} {:<44} {:<6} {:<9} {:<20} {:<20} {:<20}",
                "SET", "KID", "ALG", "STATE", "CREATED", "ACTIVATED", "DEACTIVATED"
            );
            for r in records {
                println!(
                    "{:<12} {:<44} {:<6} {:<9} {:<20} {:<20} {:<20}",
                    r.key_set,
                    r.kid,
                    r.algorithm.as_str(),
                    r.state_at(now).to_string(),
                    time(Some(r.created_at)),
                    time(r.activates_at.filter(|at| *at <= now)),
                    time(r.deactivates_at.filter(|at| *at <= now).or(r.revoked_at)),
                );
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate { set, force }) => {
            let store = open_database(&loaded, init).await?;
            let master = master_key(&loaded, &store, settings).await?;
            keys::check_master_key(&store.keys().await?, &master)?;
            let steps = ops::rotate(&store, &master, config, &set, now(), force).await.map_err(|err| match err {
                ActionError::Refused(Refused::TooEarly { kid, not_before }) => anyhow::anyhow!(
                    "refusing to rotate {set}: the next key {kid} has not been published for publish_ahead yet; \
                     it may sign from {} (in {}). Use --force to rotate now anyway (verifiers that cached \
                     the JWKS before it appeared will reject its tokens until they refetch)",
                    time(Some(not_before)),
                    span(not_before - now())
                ),
                ActionError::Refused(Refused::NoNextKey) => anyhow::anyhow!(
                    "refusing to rotate {set}: it has no published next key of its configured algorithm yet \
                     (the scheduler publishes one; rotate after publish_ahead). Use --force to switch to a \
                     brand-new key now (verifiers will reject its tokens until they refetch the JWKS)"
                ),
                other => other.into(),
            })?;
            report(&steps);
            if let Some(signer) = ops::Outcome::of(&store, config, &set, steps, now()).await?.new_signer {
                report_signer(&signer);
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Revoke { kid }) => {
            let store = open_database(&loaded, init).await?;
            let master = master_key(&loaded, &store, settings).await?;
            keys::check_master_key(&store.keys().await?, &master)?;
            let outcome = ops::revoke(&store, &master, config, &kid, now()).await?;
            report(&outcome.steps);
            if let Some(signer) = &outcome.new_signer {
                report_signer(signer);
            }
            eprintln!("running servers drop {kid} from the JWKS within seconds");
            Ok(())
        }
        Command::Keys(KeysCommand::Export { kid, format }) => {
            let store = open_database(&loaded, init).await?;
            let record =
                store.keys().await?.into_iter().find(|r| r.kid == kid).with_context(|| format!("no key {kid}"))?;
            let format = Format::parse(&format)
                .with_context(|| format!("--format must be one of {}", Format::NAMES.join(", ")))?;
            let text = export::render(&record.kid, record.algorithm, &record.public, format)?;
            println!("{}", text.trim_end());
            Ok(())
        }
        Command::Keys(KeysCommand::Import { set, pem, activate, force, replace_next }) => {
            let pem =
                zeroize::Zeroizing::new(std::fs::read(&pem).with_context(|| format!("reading {}", pem.display()))?);
            let store = open_database(&loaded, init).await?;
            let master = master_key(&loaded, &store, settings).await?;
            keys::check_master_key(&store.keys().await?, &master)?;
            let how = ImportAs { activate, force, replace_next };
            let (kid, outcome) =
                ops::import(&store, &master, config, &set, &pem, how, now()).await.map_err(|err| match err {
                    ActionError::Refused(Refused::NeverPublished { kid }) => anyhow::anyhow!(
                        "refusing to make {kid} sign in {set}: it has never been published, so verifiers that \
                         cached the JWKS would reject its tokens until they refetch it. Import it without \
                         --activate (it is published as the next key and signs after publish_ahead), or add \
                         --force to sign with it now anyway"
                    ),
                    ActionError::Refused(Refused::NextKeyExists { kid }) => anyhow::anyhow!(
                        "refusing to import into {set}: its next key {kid} is published and would be retired \
                         (unpublished, private half deleted) to make room. Add --replace-next to retire it, or \
                         --activate to sign with the imported key instead"
                    ),
                    other => other.into(),
                })?;
            // The imported key is the one a creating step places: said once, below.
            let others: Vec<Step> = outcome
                .steps
                .iter()
                .filter(|s| !matches!(s, Step::CreateCurrent | Step::CreateNext { .. }))
                .cloned()
                .collect();
            report(&others);
            let role = if activate { "the signing key" } else { "the next key" };
            eprintln!("imported {kid} into {set} as {role}");
            if let Some(signer) = &outcome.new_signer {
                report_signer(signer);
            }
            Ok(())
        }
        Command::Secrets(SecretsCommand::Set { profile }) => {
            if std::io::stdin().is_terminal() {
                eprintln!("type the secret, then press Ctrl-D (it is not echoed back anywhere else)");
            }
            let mut secret = zeroize::Zeroizing::new(Vec::new());
            std::io::stdin().read_to_end(&mut secret).context("reading the secret from standard input")?;
            // One trailing newline is the shell's, not the secret's.
            if secret.ends_with(b"\n") {
                secret.pop();
                if secret.ends_with(b"\r") {
                    secret.pop();
                }
            }
            anyhow::ensure!(!secret.is_empty(), "no secret on standard input");
            let store = open_database(&loaded, init).await?;
            let master = master_key(&loaded, &store, settings).await?;
            keys::check_master_key(&store.keys().await?, &master)?;
            secrets::set(&store, &master, config, &profile, &secret, now()).await?;
            eprintln!("stored the secret of profile {profile}; running servers use it within seconds");
            Ok(())
        }
        Command::Secrets(SecretsCommand::List) => {
            let store = open_database(&loaded, init).await?;
            println!("{:<24} {:<20} UPDATED", "PROFILE", "CREATED");
            for info in secrets::list(&store).await? {
                println!("{:<24} {:<20} {}", info.profile, time(Some(info.created_at)), time(Some(info.updated_at)));
            }
            Ok(())
        }
        Command::Onboarding { profile, local } => onboarding(&loaded, init, &profile, local).await,
        Command::Audit { sub, kid, client, profile, since, until, limit, json } => {
            let instant = |flag: &str, text: Option<String>| -> anyhow::Result<Option<i64>> {
                text.map(|text| {
                    audit_instant(&text, now()).with_context(|| {
                        format!(
                            "{flag} {text:?} is neither an RFC 3339 time (2026-11-17T09:00:00Z), a date (2026-11-17) \
                             nor an age (24h, 7d)"
                        )
                    })
                })
                .transpose()
            };
            anyhow::ensure!(limit >= 1, "--limit must be at least 1");
            let filter = Filter {
                sub,
                kid,
                client,
                profile,
                since: instant("--since", since)?,
                until: instant("--until", until)?,
            };
            let store = open_database(&loaded, init).await?;
            let rows = store.issuance(&filter, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<22} {:<16} {:<16} {:<24} {:<6} {:<44} CLAIMS",
                "ISSUED", "JTI", "PROFILE", "CLIENT", "SUB", "ALG", "KID"
            );
            for r in &rows {
                println!(
                    "{:<20} {:<22} {:<16} {:<16} {:<24} {:<6} {:<44} {}",
                    time(Some(r.iat)),
                    r.jti,
                    r.profile,
                    r.client,
                    r.sub.as_deref().unwrap_or("-"),
                    r.alg,
                    r.kid.as_deref().unwrap_or("-"),
                    r.claim_names.join(",")
                );
            }
            eprintln!("{} row(s)", rows.len());
            Ok(())
        }
        Command::Backup { file } => {
            anyhow::ensure!(!file.exists(), "{} exists already; choose a new file", file.display());
            let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            anyhow::ensure!(
                folder.is_dir(),
                "cannot write {}: the folder {} does not exist (keyward backup does not create folders)",
                file.display(),
                folder.display()
            );
            let store = open_database(&loaded, init).await?;
            store.backup(&file).await?;
            eprintln!(
                "wrote {}: a consistent copy of the database. It holds sealed keys: keep it with the same care as \
                 the master key, and never in the same place",
                file.display()
            );
            Ok(())
        }
        Command::Keys(KeysCommand::Schedule { json }) => {
            let store = open_database(&loaded, init).await?;
            let sets = ops::schedule(&store, config, now()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sets)?);
                return Ok(());
            }
            let moment = |m: Option<Moment>| match m {
                Some(Moment { at, planned: true }) => format!("~{}", time(Some(at))),
                Some(Moment { at, planned: false }) => time(Some(at)),
                None => "-".to_owned(),
            };
            for set in sets {
                println!(
                    "key set {}: each key signs for {}, is published {} before it signs and {} after (~ = planned)",
                    set.name,
                    span(set.rotate_every),
                    span(set.publish_ahead),
                    span(set.retain_for)
                );
                println!(
                    "  {:<44} {:<9} {:<21} {:<21} {:<21} {:<21}",
                    "KID", "STATE", "PUBLISHED FROM", "PUBLISHED UNTIL", "SIGNING FROM", "SIGNING UNTIL"
                );
                for k in set.keys {
                    println!(
                        "  {:<44} {:<9} {:<21} {:<21} {:<21} {:<21}",
                        k.kid,
                        k.state.to_string(),
                        moment(k.published_from),
                        moment(k.published_until),
                        moment(k.signing_from),
                        moment(k.signing_until)
                    );
                }
            }
            Ok(())
        }
        Command::Clients(ClientsCommand::Add { name, profiles, admin, rate, burst }) => {
            let store = open_database(&loaded, init).await?;
            let rate = rate.map(|rate| (rate, burst.unwrap_or(rate.saturating_mul(2))));
            let (token, reused) = clients::create(&store, config, &name, &profiles, admin, rate, now()).await?;
            if let Some(revoked_at) = reused {
                eprintln!(
                    "the name {name:?} was a client revoked at {}: it now names the new client",
                    time(Some(revoked_at))
                );
            }
            eprintln!("created client {name:?}; its token follows on standard output and is not shown again");
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", token.as_str()).context("writing the token")?;
            Ok(())
        }
        Command::Clients(ClientsCommand::List { json }) => {
            let store = open_database(&loaded, init).await?;
            let list = clients::list(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<6} {:<20} {:<20} {:<20} {:<24} PROFILES",
                "NAME", "ADMIN", "CREATED", "REVOKED", "OLD TOKEN UNTIL", "RATE LIMIT"
            );
            for c in list {
                let limit = match c.rate {
                    Some((rate, burst)) => format!("{rate}/s, burst {burst}"),
                    None => format!("{}/s, burst {} (default)", config.server.rate_limit, config.server.rate_burst),
                };
                println!(
                    "{:<24} {:<6} {:<20} {:<20} {:<20} {:<24} {}",
                    c.name,
                    if c.admin { "yes" } else { "no" },
                    time(Some(c.created_at)),
                    time(c.revoked_at),
                    time(c.previous_token_valid_until.filter(|until| *until > now() && c.revoked_at.is_none())),
                    limit,
                    c.profiles.join(",")
                );
            }
            Ok(())
        }
        Command::Clients(ClientsCommand::Revoke { name }) => {
            let store = open_database(&loaded, init).await?;
            match clients::revoke(&store, &name, now()).await {
                Ok(()) => {
                    eprintln!("revoked client {name:?}; running servers refuse its token within a tenth of a second");
                    Ok(())
                }
                // Already in the state asked for: say so, and succeed (a retried script is fine).
                Err(ClientError::Revoked(_, at)) => {
                    eprintln!("client {name:?} was already revoked at {}; nothing changed", time(Some(at)));
                    Ok(())
                }
                Err(err) => Err(err.into()),
            }
        }
        Command::Clients(ClientsCommand::Rotate { name, grace }) => {
            let grace = match grace {
                Some(text) => crate::config::Duration::parse(&text)
                    .map_err(|why| anyhow::anyhow!("--grace {text:?}: {why}"))?
                    .as_secs_i64(),
                None => 0,
            };
            let store = open_database(&loaded, init).await?;
            let token = clients::rotate(&store, &name, grace, now()).await?;
            if grace > 0 {
                eprintln!(
                    "client {name:?} has a new token (below, shown once); the old one works until {}",
                    time(Some(now() + grace))
                );
            } else {
                eprintln!("client {name:?} has a new token (below, shown once); the old one no longer works");
            }
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", token.as_str()).context("writing the token")?;
            Ok(())
        }
    }
}

/// A row of `keys list --json`: the stored record and the state derived from it.
#[derive(serde::Serialize)]
struct ListedKey<'a> {
    state: KeyState,
    #[serde(flatten)]
    record: &'a KeyRecord,
}

/// Checks what `serve` checks before binding: the configuration (done by loading it), the
/// master key, and, when the database exists, that the key opens every sealed row.
async fn check_config(loaded: &LoadedConfig, settings: EnvSettings) -> anyhow::Result<()> {
    let config = &loaded.config;
    let (source, database) = describe(loaded);
    let env_key = std::env::var("KEYWARD_MASTER_KEY").ok();
    let file = &config.server.master_key_file;
    let master = match (&env_key, file.exists()) {
        (Some(_), _) | (None, true) => Some(MasterKey::resolve(env_key.as_deref(), file, false)?.0),
        (None, false) => None,
    };
    if let Some(master) = &master {
        eprintln!("master key {} is well formed", master.id());
    }
    let exists = match &database {
        Database::Sqlite(path) => path.exists(),
        Database::Postgres(_) => true,
    };
    if exists {
        let store = Store::connect(&database).await?;
        let sealed = store.holds_sealed_material().await?;
        match &master {
            Some(master) => {
                let records = store.keys().await?;
                keys::check_master_key(&records, master)?;
                for record in records.iter().filter(|r| r.sealed_private.is_some()) {
                    record.open_signing_key(master)?;
                }
                secrets::load(&store, master, config).await?;
                eprintln!("master key {} opens every sealed key and secret in {database}", master.id());
            }
            None if sealed => bail!(
                "no master key: KEYWARD_MASTER_KEY is not set and {} does not exist, but {} holds sealed keys: \
                 restore the key they were sealed with",
                file.display(),
                database
            ),
            None => {}
        }
    }
    match (&master, settings.may_generate_master_key) {
        (Some(_), _) => {}
        (None, true) => eprintln!(
            "no master key yet: serve will generate a DEVELOPMENT key into {} (for production, see KEYWARD_MASTER_KEY)",
            file.display()
        ),
        (None, false) => bail!(
            "no master key: KEYWARD_MASTER_KEY is not set, {} does not exist, and KEYWARD_DEV=0 forbids generating \
             one. Make one with `openssl rand -base64 32 > master.key` and give it as KEYWARD_MASTER_KEY or at that \
             path (readable by uid 10001 in the image)",
            file.display()
        ),
    }
    eprintln!(
        "{source}: configuration is valid ({} key sets, {} profiles)",
        config.key_sets.len(),
        config.profiles.len()
    );
    Ok(())
}

/// An audit bound: RFC 3339, a date (its midnight, UTC) or an age before `now`.
fn audit_instant(text: &str, now: i64) -> Option<i64> {
    if let Some(at) = config::parse_instant(text) {
        return Some(at);
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
    }
    crate::config::Duration::parse(text).ok().map(|age| now - age.as_secs_i64())
}

/// Prints the onboarding values on standard output, then checks that the set's current and
/// next keys are served at `iss + jwks_uri`, or with `local` at this configuration's own
/// public listener (report on standard error; failure is a non-zero exit).
async fn onboarding(loaded: &LoadedConfig, init: bool, name: &str, local: bool) -> anyhow::Result<()> {
    let config = &loaded.config;
    let profile =
        config.profiles.iter().find(|p| p.name == name).with_context(|| format!("no profile is named {name:?}"))?;
    let (Some(set_name), Some(issuer)) = (&profile.key_set, &profile.issuer) else {
        bail!("profile {name} is a shared-secret profile: partners verify it with the shared secret, not a JWKS");
    };
    let set = config.key_set(set_name).with_context(|| format!("no key set {set_name}"))?;
    let jwks_uri = match profile.static_claims.get("jwks_uri").and_then(|v| v.as_str()) {
        Some(uri) => uri.to_owned(),
        None => {
            set.jwks_paths.first().cloned().with_context(|| format!("key set {set_name} publishes no JWKS path"))?
        }
    };
    // NPM asks for partner_name, iss and jwks_uri; the audience names the partner too.
    let from_audience = profile
        .audience
        .as_deref()
        .and_then(|aud| aud.split("/partners/").nth(1))
        .and_then(|rest| rest.split('/').next())
        .filter(|name| !name.is_empty());
    match (&profile.partner_name, from_audience) {
        (Some(partner_name), _) => println!("partner_name: {partner_name}"),
        (None, Some(partner_name)) => println!("partner_name: {partner_name}"),
        (None, None) => println!("partner_name: (not set: add partner_name to [[profile]] {name:?})"),
    }
    if profile.partner_name.is_none() {
        eprintln!(
            "note: partner_name {}; set partner_name in [[profile]] {name:?} to state it",
            if from_audience.is_some() { "is taken from the audience" } else { "is not configured" }
        );
    }
    println!("iss: {issuer}");
    println!("jwks_uri: {jwks_uri}");

    let store = open_database(loaded, init).await?;
    let keys = store.keys_of_set(set_name).await?;
    let now = now();
    let wanted: Vec<(&str, String)> = [KeyState::Current, KeyState::Next]
        .into_iter()
        .filter_map(|state| {
            keys.iter()
                .find(|k| k.state_at(now) == state)
                .map(|k| (if state == KeyState::Current { "current" } else { "next" }, k.kid.clone()))
        })
        .collect();
    let url = if local {
        let path = if set.jwks_paths.contains(&jwks_uri) { jwks_uri.clone() } else { set.jwks_paths[0].clone() };
        format!("http://{}{path}", local_target(config.server.public_addr))
    } else {
        format!("{}{jwks_uri}", issuer.trim_end_matches('/'))
    };
    eprintln!("checking {url} ...");
    let response =
        reqwest::Client::new().get(&url).timeout(Duration::from_secs(10)).send().await.with_context(|| {
            if local {
                format!("{url} could not be fetched: is `keyward serve` running with this configuration?")
            } else {
                format!("{url} could not be fetched: route it to keyward's public listener")
            }
        })?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{url} answered HTTP {status}");
    let jwks: serde_json::Value = response.json().await.with_context(|| format!("{url} did not answer JSON"))?;
    let published: Vec<&str> =
        jwks["keys"].as_array().map(|keys| keys.iter().filter_map(|k| k["kid"].as_str()).collect()).unwrap_or_default();
    eprintln!("{url} answered {status} with {} key(s)", published.len());
    let mut missing = 0;
    for (role, kid) in &wanted {
        let found = published.contains(&kid.as_str());
        eprintln!("  {role} key {kid}: {}", if found { "published" } else { "MISSING" });
        missing += usize::from(!found);
    }
    anyhow::ensure!(wanted.len() == 2, "key set {set_name} lacks a current or next key: start `keyward serve` once");
    anyhow::ensure!(missing == 0, "{missing} key(s) missing from {url}: is it served by this keyward's database?");
    if local {
        eprintln!("ok: this server publishes our keys; check {issuer}{jwks_uri} too once it is routed here");
    } else {
        eprintln!("ok: the partner will find our keys");
    }
    Ok(())
}

/// Says on standard error what a key action did.
fn report(steps: &[Step]) {
    for step in steps {
        match step {
            Step::Promote { kid } => eprintln!("{kid} is now the signing key"),
            Step::Revoke { kid } => eprintln!("{kid} is revoked: unpublished, private half deleted"),
            Step::Retire { kid } => eprintln!("{kid} is retired"),
            Step::CreateCurrent => eprintln!("created a new signing key"),
            Step::CreateNext { activates_at } => {
                eprintln!("published a new next key; it signs from {}", time(Some(*activates_at)))
            }
            Step::Schedule { kid, activates_at } => eprintln!("{kid} signs from {}", time(Some(*activates_at))),
        }
    }
}

/// Says how long a new signing key has been published, and what that means for verifiers
/// holding a cached JWKS.
fn report_signer(signer: &Exposure) {
    let kid = &signer.kid;
    match signer.may_be_rejected_until {
        Some(until) => eprintln!(
            "WARNING: the new signing key {kid} has been published for only {}, less than jwks_max_age + \
             clock_skew ({}): verifiers that cached the JWKS before it appeared may reject its tokens until {} \
             (in {}). Ask partners to refetch our JWKS (purge their cache) if they can, or expect rejections \
             until then",
            span(signer.published_for),
            span(signer.cache_window),
            time(Some(until)),
            span((until - now()).max(0))
        ),
        None => eprintln!(
            "the new signing key {kid} has been published for {}, at least jwks_max_age + clock_skew ({}): \
             verifiers with a cached JWKS have it",
            span(signer.published_for),
            span(signer.cache_window)
        ),
    }
}

/// Seconds as "1d 55m": only the units that are not zero.
fn span(secs: i64) -> String {
    let parts = [(secs / 86_400, "d"), (secs % 86_400 / 3_600, "h"), (secs % 3_600 / 60, "m"), (secs % 60, "s")];
    let shown: Vec<String> = parts.iter().filter(|(n, _)| *n != 0).map(|(n, unit)| format!("{n}{unit}")).collect();
    if shown.is_empty() {
        "0s".to_owned()
    } else {
        shown.join(" ")
    }
}

fn time(ts: Option<i64>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// Where to reach a listener bound to `addr` from this machine (loopback for 0.0.0.0).
fn local_target(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(
            if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() },
            addr.port(),
        )
    } else {
        addr
    }
}

/// A plain HTTP/1.0 GET of /healthz on the public listener, without an HTTP client library.
fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
    let target = local_target(addr);
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&target, timeout).with_context(|| format!("connecting to {target}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    if status_line.starts_with("HTTP/1.1 200") || status_line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        bail!("{target}/healthz did not answer 200")
    }
}
