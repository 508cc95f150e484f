//! An AES-256 key in the token that seals keyward's keyring (the master key kept in an
//! HSM): generated inside the token, sensitive and never extractable, found by label, and
//! used through the token for AES-GCM.

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use rand::RngCore;
use zeroize::Zeroizing;

use super::{Token, TokenError};

const NONCE_LEN: usize = 12;

fn find(session: &Session, label: &str) -> Result<Option<ObjectHandle>, cryptoki::error::Error> {
    let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.as_bytes().to_vec())];
    Ok(session.find_objects(&template)?.into_iter().next())
}

impl Token {
    /// The id (`CKA_ID`, hex) of the AES key labelled `label`, generating it in the token
    /// first if there is none and `may_generate`. Blocking.
    pub fn aes_key(&self, label: &str, may_generate: bool) -> Result<Option<String>, TokenError> {
        self.with_session("finding the master key", |session| {
            let handle = match find(session, label)? {
                Some(handle) => handle,
                None if may_generate => {
                    let mut id = [0u8; 8];
                    rand::rng().fill_bytes(&mut id);
                    let template = [
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::ValueLen(32.into()),
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::Wrap(false),
                        Attribute::Unwrap(false),
                        Attribute::Sign(false),
                        Attribute::Verify(false),
                        Attribute::Derive(false),
                        Attribute::Label(label.as_bytes().to_vec()),
                        Attribute::Id(id.to_vec()),
                    ];
                    let handle = session.generate_key(&Mechanism::AesKeyGen, &template)?;
                    tracing::warn!(
                        label,
                        token = self.label(),
                        "generated a new AES-256 master key in the PKCS#11 token (sensitive, never extractable)"
                    );
                    handle
                }
                None => return Ok(None),
            };
            let attributes = session.get_attributes(handle, &[AttributeType::Id])?;
            let id = attributes.into_iter().find_map(|a| match a {
                Attribute::Id(id) => Some(id),
                _ => None,
            });
            Ok(Some(id.unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect()))
        })
    }

    /// AES-GCM under the key labelled `label`, in the token: `nonce || ciphertext+tag`.
    /// Blocking.
    pub fn aes_gcm_seal(&self, label: &str, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, TokenError> {
        self.with_session("sealing with the master key", |session| {
            let Some(handle) = find(session, label)? else { return Ok(None) };
            let mut nonce = [0u8; NONCE_LEN];
            rand::rng().fill_bytes(&mut nonce);
            let mut iv = nonce;
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            let sealed = session.encrypt(&Mechanism::AesGcm(params), handle, plaintext)?;
            Ok(Some([nonce.as_slice(), &sealed].concat()))
        })?
        .ok_or_else(|| self.missing(label))
    }

    fn missing(&self, label: &str) -> TokenError {
        TokenError::MasterKeyMissing { label: label.to_owned(), token: self.label().to_owned() }
    }

    /// Opens what [`Token::aes_gcm_seal`] made with the same `aad`. Blocking.
    pub fn aes_gcm_open(&self, label: &str, blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        self.with_session("opening with the master key", |session| {
            let Some(handle) = find(session, label)? else { return Ok(None) };
            let (nonce, sealed) = blob.split_at(NONCE_LEN.min(blob.len()));
            let mut iv = [0u8; NONCE_LEN];
            iv[..nonce.len()].copy_from_slice(nonce);
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            session.decrypt(&Mechanism::AesGcm(params), handle, sealed).map(|p| Some(Zeroizing::new(p)))
        })?
        .ok_or_else(|| self.missing(label))
    }
}
