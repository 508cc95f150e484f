//! Encryption at rest: the master key and AES-256-GCM sealing of private key material.
//!
//! A sealed blob is `version (1) || nonce (12) || ciphertext+tag`. The associated data
//! binds the blob to its row (kid, key set, algorithm) and to the master key's id, so a
//! blob copied to another row, or opened under another master key, fails to open.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use zeroize::Zeroizing;

const BLOB_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// Why a master key could not be had or a blob could not be opened. Never holds key bytes.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The master key given is not base64 of 32 bytes.
    #[error(
        "the master key from {origin} is not base64 of exactly 32 bytes (make one with `openssl rand -base64 32`)"
    )]
    BadMasterKey {
        /// Where it came from.
        origin: String,
    },
    /// The master key file could not be read or written.
    #[error("master key file {path}: {action}")]
    MasterKeyFile {
        /// The file.
        path: PathBuf,
        /// What failed.
        action: String,
    },
    /// Authentication failed: wrong master key, tampered blob, or a blob from another row.
    #[error("sealed data failed to open: wrong master key, or the row was altered or moved")]
    Open,
    /// Encryption failed (should not happen with a valid key).
    #[error("sealing failed")]
    Seal,
}

/// Where the master key came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeyOrigin {
    /// `KEYWARD_MASTER_KEY`.
    Environment,
    /// An existing file.
    File(PathBuf),
    /// A file written just now with a random key: development only.
    Generated(PathBuf),
    /// Held outside the process (a PKCS#11 token, Vault Transit).
    Outside,
}

/// The 32-byte key that seals every private key. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).field("key", &"<hidden>").finish()
    }
}

impl MasterKey {
    /// A master key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut hasher = openssl::sha::Sha256::new();
        hasher.update(b"keyward master key id v1\0");
        hasher.update(&bytes);
        let digest = hasher.finish();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        MasterKey { key: Zeroizing::new(bytes), id }
    }

    /// A fresh random master key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self::from_bytes(*bytes)
    }

    /// Parses base64 of 32 bytes (surrounding whitespace ignored).
    pub fn from_base64(text: &str, origin: &str) -> Result<Self, SealError> {
        let bad = || SealError::BadMasterKey { origin: origin.to_owned() };
        let decoded = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| bad())?);
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| bad())?;
        Ok(Self::from_bytes(bytes))
    }

    /// A short public identifier of this key, stored beside every row it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw key, for the keyring that carries it sealed under the master key.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// `KEYWARD_MASTER_KEY` if given, else the file, else (only if `may_generate`) a new
    /// random key written to the file.
    pub fn resolve(
        env_value: Option<&str>,
        file: &Path,
        may_generate: bool,
    ) -> Result<(Self, MasterKeyOrigin), SealError> {
        if let Some(value) = env_value {
            return Ok((Self::from_base64(value, "KEYWARD_MASTER_KEY")?, MasterKeyOrigin::Environment));
        }
        let file_err = |action: String| SealError::MasterKeyFile { path: file.to_owned(), action };
        match std::fs::read_to_string(file) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                let key = Self::from_base64(&text, &file.display().to_string())?;
                Ok((key, MasterKeyOrigin::File(file.to_owned())))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !may_generate => Err(file_err(
                "missing, but the database holds keys sealed with a master key: restore that key to this \
                 file or set KEYWARD_MASTER_KEY (a new key would not open them; nothing was created)"
                    .to_owned(),
            )),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                match write_new_key_file(file, &key) {
                    Ok(()) => Ok((key, MasterKeyOrigin::Generated(file.to_owned()))),
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::resolve(None, file, false),
                    Err(e) => Err(file_err(format!("cannot create: {e}"))),
                }
            }
            Err(err) => Err(file_err(format!("cannot read: {err}"))),
        }
    }

    /// Encrypts `plaintext`, binding it to `context` and to this master key's id.
    pub fn seal(&self, plaintext: &[u8], context: &[&str]) -> Result<Vec<u8>, SealError> {
        let cipher = Aes256Gcm::new_from_slice(self.key.as_ref()).map_err(|_| SealError::Seal)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = self.associated_data(context);
        let ciphertext =
            cipher.encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: &aad }).map_err(|_| SealError::Seal)?;
        let mut blob = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(blob)
    }

    /// Decrypts a blob made by [`MasterKey::seal`] with the same context.
    pub fn open(&self, blob: &[u8], context: &[&str]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if blob.len() < 1 + NONCE_LEN + 16 || blob[0] != BLOB_VERSION {
            return Err(SealError::Open);
        }
        let cipher = Aes256Gcm::new_from_slice(self.key.as_ref()).map_err(|_| SealError::Open)?;
        let (nonce, ciphertext) = blob[1..].split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Open)?;
        let aad = self.associated_data(context);
        cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }

    /// Length-prefixed parts, so that no two different contexts encode alike.
    fn associated_data(&self, context: &[&str]) -> Vec<u8> {
        let mut aad = b"keyward.seal.v1".to_vec();
        for part in context.iter().copied().chain(std::iter::once(self.id.as_str())) {
            aad.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// Writes a new key file with mode 0600, refusing to overwrite anything. The file appears
/// whole (written aside, then linked into place), so a concurrent reader never sees it empty.
fn write_new_key_file(path: &Path, key: &MasterKey) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::private_files::private_dir_builder().create(parent)?;
    }
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".{}-{:08x}.tmp", std::process::id(), rand::random::<u32>()));
    let aside = PathBuf::from(aside);
    let _ = std::fs::remove_file(&aside);
    write_key_file(&aside, key)?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => write_key_file(path, key),
        other => other,
    }
}

/// Creates `path` (which must not exist) with mode 0600 and the key in base64.
fn write_key_file(path: &Path, key: &MasterKey) -> std::io::Result<()> {
    let mut file = crate::private_files::private_file_options().write(true).create_new(true).open(path)?;
    let encoded = Zeroizing::new(STANDARD.encode(key.key.as_ref()));
    file.write_all(encoded.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_reverses_seal_under_the_same_context() {
        let key = MasterKey::generate();
        let blob = key.seal(b"secret bytes", &["kid1", "npm", "RS256"]).unwrap();
        assert_eq!(key.open(&blob, &["kid1", "npm", "RS256"]).unwrap().as_slice(), b"secret bytes");
        assert!(!blob.windows(12).any(|w| w == b"secret bytes"));
    }

    #[test]
    fn another_context_a_flipped_byte_or_another_key_fails() {
        let key = MasterKey::generate();
        let blob = key.seal(b"secret", &["kid1", "npm", "RS256"]).unwrap();
        assert!(key.open(&blob, &["kid2", "npm", "RS256"]).is_err());
        assert!(key.open(&blob, &["kid1", "npm", "PS256"]).is_err());
        assert!(key.open(&blob, &["kid1npm", "", "RS256"]).is_err());
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(key.open(&bad, &["kid1", "npm", "RS256"]).is_err(), "byte {i}");
        }
        assert!(MasterKey::generate().open(&blob, &["kid1", "npm", "RS256"]).is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let key = MasterKey::from_bytes([7u8; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("<hidden>"));
        assert!(!shown.contains(&STANDARD.encode([7u8; 32])));
        assert!(!shown.contains("7, 7"));
    }

    #[test]
    fn resolve_generates_once_with_mode_0600_then_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let (first, origin) = MasterKey::resolve(None, &path, true).unwrap();
        assert_eq!(origin, MasterKeyOrigin::Generated(path.clone()));
        assert_eq!(crate::private_files::shared_mode(&path), None);
        let (second, origin) = MasterKey::resolve(None, &path, true).unwrap();
        assert_eq!(origin, MasterKeyOrigin::File(path.clone()));
        assert_eq!(first.id(), second.id());
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_missing_key_file_is_not_replaced_when_generation_is_not_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let err = MasterKey::resolve(None, &path, false).unwrap_err().to_string();
        assert!(err.contains("restore that key"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| MasterKey::resolve(None, &path, true).map(|(k, _)| k.id().to_owned())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    #[test]
    fn environment_wins_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let b64 = STANDARD.encode([9u8; 32]);
        let (key, origin) = MasterKey::resolve(Some(&b64), &path, true).unwrap();
        assert_eq!(origin, MasterKeyOrigin::Environment);
        assert_eq!(key.id(), MasterKey::from_bytes([9u8; 32]).id());
        assert!(!path.exists(), "the environment key must not create a file");
        let err = MasterKey::resolve(Some("c2hvcnQ="), &path, true).unwrap_err().to_string();
        assert!(err.contains("KEYWARD_MASTER_KEY") && !err.contains("c2hvcnQ"), "{err}");
    }
}
