//! The master key as a keyring (Vault's barrier keyring): private keys and shared secrets
//! are sealed under numbered data keys ("terms"); the terms are one record, sealed under
//! the master key, which comes from a [`RootKey`] source (a variable, a file, a PKCS#11
//! token or a Vault Transit key).
//!
//! Rotating the master key rewrites that one record. A re-seal adds a term, re-encrypts
//! every sealed row under it and drops the older terms, so that material the old master
//! key could open no longer opens anything.

use std::fmt;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::seal::MasterKey;

mod source;

pub use source::{RootKey, Roots};

/// One data key of the keyring.
#[derive(Clone)]
pub struct Term {
    /// 1, 2, ...: a re-seal adds the next.
    pub number: u32,
    /// The data key; its id is what sealed rows name.
    pub key: MasterKey,
    /// Unix seconds.
    pub created_at: i64,
    /// The master key a database made before the keyring sealed its rows with, taken over
    /// as term 1: whoever holds that old key can open what it sealed until a re-seal.
    pub legacy: bool,
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Term {{ {}:{} }}", self.number, self.key.id())
    }
}

/// The data keys: the active one seals new material, older ones only open.
#[derive(Clone, Debug)]
pub struct Keyring {
    older: Vec<Term>,
    active: Term,
}

/// The terms as sealed (plaintext only inside [`Zeroizing`]).
#[derive(Serialize, Deserialize)]
struct StoredTerm {
    number: u32,
    key: String,
    created_at: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    legacy: bool,
}

impl Keyring {
    /// A new keyring with one random term.
    pub fn generate(now: i64) -> Self {
        Keyring {
            older: Vec::new(),
            active: Term { number: 1, key: MasterKey::generate(), created_at: now, legacy: false },
        }
    }

    /// The keyring of a database whose rows were sealed directly under `master`.
    pub fn adopt(master: &MasterKey, now: i64) -> Self {
        Keyring { older: Vec::new(), active: Term { number: 1, key: master.clone(), created_at: now, legacy: true } }
    }

    /// The term that seals new material.
    pub fn active(&self) -> &Term {
        &self.active
    }

    /// Every term, oldest first.
    pub fn terms(&self) -> impl Iterator<Item = &Term> {
        self.older.iter().chain(std::iter::once(&self.active))
    }

    /// The data key with id `id`, if it is a term.
    pub fn key(&self, id: &str) -> Option<&MasterKey> {
        self.terms().map(|t| &t.key).find(|k| k.id() == id)
    }

    /// Seals `plaintext` under the active term; returns the blob and the term key's id.
    pub fn seal(&self, plaintext: &[u8], context: &[&str]) -> anyhow::Result<(Vec<u8>, String)> {
        let key = &self.active().key;
        Ok((key.seal(plaintext, context)?, key.id().to_owned()))
    }

    /// Opens `blob`, sealed under the term key `sealed_by`.
    pub fn open(&self, blob: &[u8], context: &[&str], sealed_by: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let key = self.key(sealed_by).with_context(|| self.unknown(sealed_by))?;
        Ok(key.open(blob, context)?)
    }

    /// Why a row sealed under `id` cannot be opened.
    pub fn unknown(&self, id: &str) -> String {
        format!(
            "it was sealed with master key material {id}, which is not in this database's keyring (terms {}): \
             the row comes from another database, or its keyring was replaced (nothing was changed)",
            self.ids()
        )
    }

    /// Checks that every id in `ids` is a term.
    pub fn check_ids<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> anyhow::Result<()> {
        for id in ids {
            if self.key(id).is_none() {
                bail!("a stored row cannot be opened: {}", self.unknown(id));
            }
        }
        Ok(())
    }

    /// This keyring with a fresh random term added.
    pub fn with_new_term(&self, now: i64) -> Self {
        let number = self.active.number + 1;
        let older = self.terms().cloned().collect();
        Keyring { older, active: Term { number, key: MasterKey::generate(), created_at: now, legacy: false } }
    }

    /// This keyring with only its active term.
    pub fn retire_old(&self) -> Self {
        Keyring { older: Vec::new(), active: self.active.clone() }
    }

    /// `NUMBER:ID,...`, oldest first: public, stored beside the sealed record.
    pub fn ids(&self) -> String {
        self.terms().map(|t| format!("{}:{}", t.number, t.key.id())).collect::<Vec<_>>().join(",")
    }

    /// The ids of the terms older than the active one.
    pub fn old_ids(&self) -> Vec<String> {
        self.older.iter().map(|t| t.key.id().to_owned()).collect()
    }

    pub(crate) fn to_plaintext(&self) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let stored: Vec<StoredTerm> = self
            .terms()
            .map(|t| StoredTerm {
                number: t.number,
                key: STANDARD.encode(t.key.bytes()),
                created_at: t.created_at,
                legacy: t.legacy,
            })
            .collect();
        let text = Zeroizing::new(serde_json::to_vec(&stored).context("encoding the keyring")?);
        // The encoded keys live in `stored`'s strings: wipe them too.
        for term in stored {
            drop(Zeroizing::new(term.key));
        }
        Ok(text)
    }

    pub(crate) fn from_plaintext(bytes: &[u8], ids: &str) -> anyhow::Result<Self> {
        let stored: Vec<StoredTerm> = serde_json::from_slice(bytes).context("the opened keyring is not valid")?;
        let mut terms = Vec::with_capacity(stored.len());
        for term in stored {
            let encoded = Zeroizing::new(term.key);
            let key = MasterKey::from_base64(&encoded, "the keyring")?;
            terms.push(Term { number: term.number, key, created_at: term.created_at, legacy: term.legacy });
        }
        let active = terms.pop().context("the opened keyring holds no term")?;
        let keyring = Keyring { older: terms, active };
        if keyring.ids() != ids {
            bail!("the opened keyring does not hold the terms its record lists ({ids})");
        }
        Ok(keyring)
    }
}

/// What the keyring's associated data binds it to: its record's term list (and, inside
/// the source, the master key's id).
pub(crate) fn context(ids: &str) -> [&str; 2] {
    ["keyring", ids]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_term_seals_and_older_terms_still_open_until_retired() {
        let first = Keyring::generate(10);
        let (blob, by) = first.seal(b"secret", &["kid"]).unwrap();
        let second = first.with_new_term(20);
        assert_eq!(second.active().number, 2);
        assert_eq!(second.open(&blob, &["kid"], &by).unwrap().as_slice(), b"secret");
        let (blob2, by2) = second.seal(b"secret", &["kid"]).unwrap();
        assert_ne!(by, by2);
        let retired = second.retire_old();
        assert!(retired.open(&blob, &["kid"], &by).is_err());
        assert_eq!(retired.open(&blob2, &["kid"], &by2).unwrap().as_slice(), b"secret");
        assert_eq!(retired.old_ids(), Vec::<String>::new());
        assert_eq!(second.old_ids(), vec![by]);
    }

    #[test]
    fn the_plaintext_round_trips_and_must_match_the_listed_ids() {
        let keyring = Keyring::generate(10).with_new_term(20);
        let text = keyring.to_plaintext().unwrap();
        let back = Keyring::from_plaintext(&text, &keyring.ids()).unwrap();
        assert_eq!(back.ids(), keyring.ids());
        assert!(Keyring::from_plaintext(&text, "1:x").is_err());
    }

    #[test]
    fn debug_shows_ids_only() {
        let keyring = Keyring::generate(10);
        let shown = format!("{keyring:?}");
        assert!(shown.contains(keyring.active().key.id()));
        assert!(!shown.contains(&STANDARD.encode(keyring.active().key.bytes())));
    }
}
