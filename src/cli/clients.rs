//! `keyward clients`: the clients allowed to call the internal API.

use std::io::Write;

use anyhow::Context as _;

use super::context::Context;
use super::format::{now, time};
use crate::ops::clients::{self, ClientChange, ClientError};
use crate::policy::certificate::CertFingerprint;
use crate::policy::identity::IdentityBinding;
use crate::policy::permission::Permission;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Create a client; its token is printed once, as the only line on standard output
    /// (none for a client bound to --identity alone).
    Add {
        /// Client name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Profiles the client may sign with, comma-separated.
        #[arg(long, value_delimiter = ',')]
        profiles: Vec<String>,
        /// Every administrative permission, on every key set and partner.
        #[arg(long)]
        admin: bool,
        /// An administrative permission, repeatable: keys:read, keys:rotate, keys:revoke
        /// (on every key set, or `=SET[,SET]`) or partners:read (`=PARTNER[,PARTNER]`).
        #[arg(long = "permission", value_name = "PERMISSION")]
        permissions: Vec<Permission>,
        /// Authenticate it by a workload identity's JWT: 'ISSUER|SUBJECT', the subject exact
        /// or ending in '*' (e.g. 'https://kubernetes.default.svc|system:serviceaccount:pay:*').
        #[arg(long, value_name = "ISSUER|SUBJECT")]
        identity: Option<IdentityBinding>,
        /// With --identity: also print a bearer token (without it, only the identity works).
        #[arg(long, requires = "identity")]
        with_token: bool,
        /// Its own rate limit, requests per second (default: [server] rate_limit).
        #[arg(long)]
        rate: Option<u32>,
        /// Its own burst (default: twice --rate, as the server's 100/s with 200; without
        /// --rate, [server] rate_burst).
        #[arg(long, requires = "rate")]
        burst: Option<u32>,
        /// Bind the client to its TLS certificate: the SHA-256 of its DER (`openssl x509
        /// -noout -fingerprint -sha256`); it must then connect with it over mutual TLS.
        #[arg(long, value_name = "FINGERPRINT")]
        cert_sha256: Option<CertFingerprint>,
        /// The certificate alone authenticates the client: no bearer token needed.
        #[arg(long, requires = "cert_sha256")]
        cert_only: bool,
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
    /// Change a client's profiles, permissions, --admin or rate limit; takes effect at once on every
    /// replica (requests authenticated under the old rights are not answered 200).
    Update {
        /// Client name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Replace the profiles it may sign with (comma-separated).
        #[arg(long, value_delimiter = ',')]
        profiles: Option<Vec<String>>,
        /// Replace its permissions with these (repeatable; see `clients add`).
        #[arg(long = "permission", value_name = "PERMISSION", conflicts_with = "no_permissions")]
        permissions: Vec<Permission>,
        /// Withdraw all its permissions.
        #[arg(long)]
        no_permissions: bool,
        /// Give or withdraw every permission (`--admin true` or `--admin false`).
        #[arg(long, value_name = "BOOL")]
        admin: Option<bool>,
        /// Its own rate limit, requests per second.
        #[arg(long, conflicts_with = "default_rate")]
        rate: Option<u32>,
        /// Its own burst (default: twice --rate).
        #[arg(long, requires = "rate")]
        burst: Option<u32>,
        /// Drop its own rate limit: [server] rate_limit and rate_burst apply.
        #[arg(long)]
        default_rate: bool,
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

pub(super) async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Add {
            name,
            profiles,
            admin,
            permissions,
            identity,
            with_token,
            rate,
            burst,
            cert_sha256,
            cert_only,
        } => {
            let store = ctx.store().await?;
            let rate = rate.map(|rate| (rate, burst.unwrap_or(rate.saturating_mul(2))));
            let print_token = identity.is_none() || with_token;
            let options = clients::ClientOptions {
                rate,
                certificate: cert_sha256,
                certificate_only: cert_only,
                permissions,
                identity,
            };
            let (token, reused) =
                clients::create(&store, ctx.config(), &name, &profiles, admin, options, now()).await?;
            if let Some(revoked_at) = reused {
                eprintln!(
                    "the name {name:?} was a client revoked at {}: it now names the new client",
                    time(Some(revoked_at))
                );
            }
            if !print_token {
                // Nobody holds the token: the identity is the only credential.
                drop(token);
                eprintln!("created client {name:?}, authenticated by its workload identity's tokens only");
                return Ok(());
            }
            eprintln!("created client {name:?}; its token follows on standard output and is not shown again");
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", token.as_str()).context("writing the token")?;
            Ok(())
        }
        Command::Update { name, profiles, permissions, no_permissions, admin, rate, burst, default_rate } => {
            let permissions = match (no_permissions, permissions.is_empty()) {
                (true, _) => Some(Vec::new()),
                (false, false) => Some(permissions),
                (false, true) => None,
            };
            let rate = match (rate, default_rate) {
                (Some(rate), _) => Some(Some((rate, burst.unwrap_or(rate.saturating_mul(2))))),
                (None, true) => Some(None),
                (None, false) => None,
            };
            if profiles.is_none() && permissions.is_none() && admin.is_none() && rate.is_none() {
                anyhow::bail!(
                    "nothing to change: give --profiles, --permission, --no-permissions, --admin, --rate or \
                     --default-rate"
                );
            }
            let store = ctx.store().await?;
            let change = ClientChange { profiles, permissions, admin, rate };
            clients::update(&store, ctx.config(), &name, change).await?;
            wait_for_requests_in_flight(ctx);
            eprintln!(
                "changed client {name:?}; from now on no server answers a request under its old rights (each \
                 confirms the change where it records the request)"
            );
            Ok(())
        }
        Command::List { json } => {
            let store = ctx.store().await?;
            let list = clients::list(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<6} {:<20} {:<20} {:<20} {:<24} {:<24} {:<32} IDENTITY",
                "NAME", "ADMIN", "CREATED", "REVOKED", "OLD TOKEN UNTIL", "RATE LIMIT", "PROFILES", "PERMISSIONS"
            );
            for c in list {
                let limit = match c.rate {
                    Some((rate, burst)) => format!("{rate}/s, burst {burst}"),
                    None => format!(
                        "{}/s, burst {} (default)",
                        ctx.config().server.rate_limit,
                        ctx.config().server.rate_burst
                    ),
                };
                let permissions = if c.admin { "all (--admin)".to_owned() } else { c.permissions.join(" ") };
                println!(
                    "{:<24} {:<6} {:<20} {:<20} {:<20} {:<24} {:<24} {:<32} {}",
                    c.name,
                    if c.admin { "yes" } else { "no" },
                    time(Some(c.created_at)),
                    time(c.revoked_at),
                    time(c.previous_token_valid_until.filter(|until| *until > now() && c.revoked_at.is_none())),
                    limit,
                    if c.profiles.is_empty() { "-".to_owned() } else { c.profiles.join(",") },
                    if permissions.is_empty() { "-" } else { &permissions },
                    c.identity.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        Command::Revoke { name } => {
            let store = ctx.store().await?;
            match clients::revoke(&store, &name, now()).await {
                Ok(()) => {
                    wait_for_requests_in_flight(ctx);
                    eprintln!(
                        "revoked client {name:?}; from now on no server answers its token or identity with a \
                         signed token (each confirms the client where it records the request)"
                    );
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
        Command::Rotate { name, grace } => {
            let grace = match grace {
                Some(text) => crate::config::Duration::parse(&text)
                    .map_err(|why| anyhow::anyhow!("--grace {text:?}: {why}"))?
                    .as_secs_i64(),
                None => 0,
            };
            let store = ctx.store().await?;
            let token = clients::rotate(&store, &name, grace, now()).await?;
            if grace > 0 {
                eprintln!(
                    "client {name:?} has a new token (below, shown once); the old one works until {}",
                    time(Some(now() + grace))
                );
            } else {
                wait_for_requests_in_flight(ctx);
                eprintln!(
                    "client {name:?} has a new token (below, shown once); the old one no longer works, on any server"
                );
            }
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{}", token.as_str()).context("writing the token")?;
            Ok(())
        }
    }
}

/// Returns once no server can still hand out a token under the credential or rights a
/// change just withdrew: a request recorded before the change may still be on its way out,
/// but never later than `request_deadline` after it was recorded (its answer is refused
/// past that), plus a margin for the answer's bytes on the wire.
fn wait_for_requests_in_flight(ctx: &Context) {
    let deadline = std::time::Duration::from_secs(ctx.config().server.request_deadline.as_secs());
    std::thread::sleep(deadline + IN_FLIGHT_MARGIN);
}

/// What [`wait_for_requests_in_flight`] adds to the request deadline.
const IN_FLIGHT_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);
