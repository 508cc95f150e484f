//! The audit trail's pure core: who acts ([`Actor`]), what an event says ([`NewEvent`],
//! [`Event`]), and the hash chains that make a removed, altered, reordered or inserted
//! record visible ([`chain`]).
//!
//! Each writer (one process's store handle) chains its own records: record
//! `seq` stores the hash of record `seq - 1` of the same writer and a hash over itself and
//! that. Writers never wait for each other (replicas on PostgreSQL take no global lock).

pub(crate) mod chain;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A command run by hand.
    Cli {
        /// The operating system user.
        user: String,
        /// The host.
        host: String,
        /// The process id.
        pid: u32,
    },
    /// An admin client of the internal API.
    Admin {
        /// The client's name.
        client: String,
        /// SHA-256 fingerprint of its TLS client certificate, when it presented one.
        #[serde(skip_serializing_if = "Option::is_none")]
        cert_sha256: Option<String>,
        /// The address the request came from.
        #[serde(skip_serializing_if = "Option::is_none")]
        remote: Option<String>,
        /// The request id (the `x-request-id` answered).
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// keyward's own scheduler (rotation, retirement, pruning), on one replica.
    Scheduler {
        /// The replica.
        replica: String,
    },
    /// keyward itself starting (`serve`).
    Server {
        /// The replica.
        replica: String,
    },
}

impl Actor {
    /// The actor of a command run by hand in this process.
    pub fn this_cli() -> Actor {
        let user =
            std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| format!("uid {}", uid()));
        Actor::Cli { user, host: hostname(), pid: std::process::id() }
    }

    /// The short name `--actor` filters on: the CLI's `user@host`, the admin client's
    /// name, `scheduler@replica`, `server@replica`.
    pub fn name(&self) -> String {
        match self {
            Actor::Cli { user, host, .. } => format!("{user}@{host}"),
            Actor::Admin { client, .. } => client.clone(),
            Actor::Scheduler { replica } => format!("scheduler@{replica}"),
            Actor::Server { replica } => format!("server@{replica}"),
        }
    }
}

/// The real user id of this process.
fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// This host's name (empty when the system will not say).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let done = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if done != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned()
}

/// Who acts, and why (the operator's `--reason`, an admin body's `reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    /// Who.
    pub actor: Actor,
    /// Why, when given.
    pub reason: Option<String>,
}

impl Attribution {
    /// `actor`, with no reason.
    pub fn of(actor: Actor) -> Attribution {
        Attribution { actor, reason: None }
    }

    /// The same actor, with `reason` (an empty reason is none).
    pub fn because(mut self, reason: Option<String>) -> Attribution {
        self.reason = reason.filter(|r| !r.trim().is_empty());
        self
    }
}

/// What a change records: never a secret, a token, a token's hash or private key bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// What happened, e.g. `key.revoked` (see [`Action`]).
    pub action: Action,
    /// What it happened to, e.g. `key:<kid>`, `client:<name>`, `profile:<name>`.
    pub object: String,
    /// The object's changed fields before.
    pub before: Option<Value>,
    /// And after.
    pub after: Option<Value>,
}

/// Every action an event may record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A key made by keyward.
    #[serde(rename = "key.generated")]
    KeyGenerated,
    /// A key brought in by an operator.
    #[serde(rename = "key.imported")]
    KeyImported,
    /// A next key's planned start moved (a planned hand-over).
    #[serde(rename = "key.handover_planned")]
    KeyHandoverPlanned,
    /// The next key signs now (planned, or forced by an operator).
    #[serde(rename = "key.rotated")]
    KeyRotated,
    /// A key withdrawn at once.
    #[serde(rename = "key.revoked")]
    KeyRevoked,
    /// A key left the JWKS and its private half was destroyed.
    #[serde(rename = "key.retired")]
    KeyRetired,
    /// A gated hand-over held past `gate_max_wait`: a gating partner that says `hold` has
    /// not fetched the next key, and the current key keeps signing (recorded once per next key).
    #[serde(rename = "gate.held")]
    GateHeld,
    /// A gated hand-over went ahead once every gating partner held the key.
    #[serde(rename = "gate.released")]
    GateReleased,
    /// A gated hand-over went ahead when `gate_max_wait` passed.
    #[serde(rename = "gate.timed_out")]
    GateTimedOut,
    /// A client added (or one revoked added again).
    #[serde(rename = "client.added")]
    ClientAdded,
    /// A client's token replaced.
    #[serde(rename = "client.rotated")]
    ClientRotated,
    /// A client revoked.
    #[serde(rename = "client.revoked")]
    ClientRevoked,
    /// A client's profiles, limits, permissions, certificate or identity changed.
    #[serde(rename = "client.changed")]
    ClientChanged,
    /// A profile's shared secret set or replaced.
    #[serde(rename = "secret.set")]
    SecretSet,
    /// The keyring sealed under another master key (`master-key rotate`).
    #[serde(rename = "master_key.rotated")]
    MasterKeyRotated,
    /// Every sealed value re-sealed under a fresh term, the older terms dropped
    /// (`master-key reseal`).
    #[serde(rename = "master_key.resealed")]
    MasterKeyResealed,
    /// Ledger rows chained and then refused by their commit (a revocation raced them).
    #[serde(rename = "ledger.withheld")]
    LedgerWithheld,
    /// Old ledger rows pruned, with each ledger writer's first kept row.
    #[serde(rename = "ledger.pruned")]
    LedgerPruned,
    /// Every chain's head, signed when a key set signs checkpoints.
    #[serde(rename = "audit.checkpoint")]
    Checkpoint,
    /// A `serve` process started.
    #[serde(rename = "server.started")]
    ServerStarted,
}

impl Action {
    /// Its name as stored and shown (`key.revoked`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::KeyGenerated => "key.generated",
            Action::KeyImported => "key.imported",
            Action::KeyHandoverPlanned => "key.handover_planned",
            Action::KeyRotated => "key.rotated",
            Action::KeyRevoked => "key.revoked",
            Action::KeyRetired => "key.retired",
            Action::GateHeld => "gate.held",
            Action::GateReleased => "gate.released",
            Action::GateTimedOut => "gate.timed_out",
            Action::ClientAdded => "client.added",
            Action::ClientRotated => "client.rotated",
            Action::ClientRevoked => "client.revoked",
            Action::ClientChanged => "client.changed",
            Action::SecretSet => "secret.set",
            Action::MasterKeyRotated => "master_key.rotated",
            Action::MasterKeyResealed => "master_key.resealed",
            Action::ServerStarted => "server.started",
            Action::Checkpoint => "audit.checkpoint",
            Action::LedgerWithheld => "ledger.withheld",
            Action::LedgerPruned => "ledger.pruned",
        }
    }
}

/// A stored event, as `audit events` and `GET /v1/events` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub at: i64,
    /// Who.
    pub actor: Actor,
    /// What happened (an [`Action`] name).
    pub action: String,
    /// To what.
    pub object: String,
    /// The changed fields before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// And after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// Why, when the operator said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The writer (process) whose chain holds it.
    pub writer: String,
    /// Its place in that chain, from 1.
    pub seq: i64,
    /// Its hash (hex SHA-256), which the writer's next record holds.
    pub hash: String,
}

/// What `audit events` and `GET /v1/events` filter on; every field optional.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// At or after (Unix seconds).
    pub since: Option<i64>,
    /// Before (Unix seconds).
    pub until: Option<i64>,
    /// The actor's short name ([`Actor::name`]).
    pub actor: Option<String>,
    /// The object, e.g. `key:<kid>` (or its prefix ending in `:`, e.g. `client:`).
    pub object: Option<String>,
    /// The action, e.g. `key.revoked` (or its prefix ending in `.`, e.g. `key.`).
    pub action: Option<String>,
}

/// The event of a `serve` start on replica `replica`: its version and a digest of its
/// effective configuration (the database URL's password left out).
pub fn started(config: &crate::config::Config, replica: &str) -> NewEvent {
    let mut effective = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(url) = effective.pointer_mut("/server/database_url") {
        *url = Value::String(config.database().to_string());
    }
    let text = serde_json::to_string(&effective).unwrap_or_default();
    NewEvent {
        action: Action::ServerStarted,
        object: format!("replica:{replica}"),
        before: None,
        after: Some(serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "replica": replica,
            "config_sha256": chain::hex(&openssl::sha::sha256(text.as_bytes())),
        })),
    }
}

/// A new, random writer id: `host/pid/8 hex digits` (unique per store handle opened).
pub fn new_writer_id() -> String {
    format!("{}/{}/{:08x}", hostname(), std::process::id(), rand::random::<u32>())
}
