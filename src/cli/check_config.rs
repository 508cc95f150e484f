//! `keyward check-config`: what `serve` checks before binding, without binding.

use anyhow::bail;

use super::context::Context;
use crate::config::Database;
use crate::keys::custody::{self, sealed};
use crate::master_key::Roots;
use crate::ops::secrets;
use crate::store::Store;

/// Checks what `serve` checks before binding: the configuration (done by loading it), the
/// TLS certificate files, the identity providers' CA files, the master key, when the database exists, that the key opens every
/// sealed row, the PKCS#11 token when one is configured (it logs in and holds the keys
/// kept there), and Vault Transit and AWS KMS when key sets keep keys there (credentials,
/// permissions, and the keys kept there).
pub(super) async fn run(ctx: &Context) -> anyhow::Result<()> {
    let config = ctx.config();
    let (source, database) = ctx.describe();
    for (name, tls) in [("public", &config.server.public_tls), ("internal", &config.server.internal_tls)] {
        if let Some(tls) = tls {
            crate::http::tls::check(name, tls)?;
            eprintln!("[server] {name}_tls: the certificate and its key are usable");
        }
    }
    if !config.identity_providers.is_empty() {
        // Reads every provider's CA file, as start-up does.
        crate::app::identity::IdentityProviders::new(&config.identity_providers, Default::default())?;
        eprintln!("[[identity_provider]]: {} configured, CA files readable", config.identity_providers.len());
    }
    let env_key = std::env::var("KEYWARD_MASTER_KEY").ok();
    let file = &config.server.master_key_file;
    let master = match (config.master_key.is_some(), &env_key, file.exists()) {
        (true, _, _) | (false, Some(_), _) | (false, None, true) => {
            Some(Roots::from_config(config, |name| std::env::var(name).ok(), false, false).await?.0)
        }
        (false, None, false) => None,
    };
    if let Some(roots) = &master {
        eprintln!("master key {} ({}) is well formed", roots.current.id(), roots.current.origin());
        if let Some(previous) = &roots.previous {
            eprintln!("previous master key {} ({}) is well formed", previous.id(), previous.origin());
        }
    }
    let exists = match &database {
        Database::Sqlite(path) => path.exists(),
        Database::Postgres(_) => true,
    };
    if exists {
        let store = Store::connect(&database).await?;
        let sealed = store.holds_sealed_material().await?;
        match &master {
            Some(roots) => {
                let keyring = crate::ops::master_key::check(&store, roots).await?;
                for record in store.keys().await?.iter().filter(|r| r.sealed().is_some()) {
                    sealed::open(record, &keyring)?;
                }
                secrets::load(&store, &keyring, config).await?;
                eprintln!("master key {} opens every sealed key and secret in {database}", roots.current.id());
                match store.keyring().await? {
                    Some(row) if row.root_key_id != roots.current.id() => eprintln!(
                        "the keyring is still sealed with the previous master key {}: run `keyward master-key rotate`",
                        row.root_key_id
                    ),
                    _ => {}
                }
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
    match (&master, ctx.settings.may_generate_master_key) {
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
    if let Some(settings) = config.token_settings(std::env::var(crate::config::PIN_ENV).ok().as_deref())? {
        let label = settings.token_label.clone();
        let records = if exists { Store::connect(&database).await?.keys().await? } else { Vec::new() };
        let held = custody::check_token(settings, records).await?;
        eprintln!("PKCS#11 token {label:?}: logged in; it holds every one of the {held} live keys kept there");
    }
    let mut services = config.custody_settings(&|name| std::env::var(name).ok())?;
    services.token = None;
    if services.transit.is_some() || services.kms.is_some() {
        let records = if exists { Store::connect(&database).await?.keys().await? } else { Vec::new() };
        let custody = custody::Custody::open(crate::master_key::Keyring::generate(0), services).await?;
        let held = custody::check_key_services(&custody, &records).await?;
        if let Some(transit) = custody.transit() {
            eprintln!(
                "Vault Transit at {}: logged in; the policy allows making, reading, signing with and deleting \
                 keyward-* keys; it holds every one of the {} live keys kept there",
                transit.address(),
                held.0
            );
        }
        if custody.kms().is_some() {
            eprintln!("AWS KMS: credentials accepted; every one of the {} live keys kept there is enabled", held.1);
        }
    }
    eprintln!(
        "{source}: configuration is valid ({} key sets, {} profiles)",
        config.key_sets.len(),
        config.profiles.len()
    );
    Ok(())
}
