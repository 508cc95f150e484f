//! Key objects in the token: generation, the public half, signing and destruction. A key's
//! private and public objects both carry the kid as label and id.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use openssl::ecdsa::EcdsaSig;

use super::{Token, TokenError};
use crate::keys::signing::ecdsa_to_jose;
use crate::keys::{Algorithm, PublicKey};

/// DER of the curve OIDs, as `CKA_EC_PARAMS` wants them.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// The bytes of the curve's coordinates; `None` for RSA.
fn ec_width(algorithm: Algorithm) -> Option<usize> {
    match algorithm {
        Algorithm::Es256 => Some(32),
        Algorithm::Es384 => Some(48),
        Algorithm::Rs256 | Algorithm::Ps256 => None,
    }
}

impl Token {
    /// Generates a key pair in the token: the private object sensitive, never extractable
    /// and kept on the token, labelled and identified by the kid. Blocking.
    pub fn generate(&self, algorithm: Algorithm, rsa_bits: u32) -> Result<(String, PublicKey), TokenError> {
        let common = |private: bool| {
            vec![Attribute::Token(true), Attribute::Private(private), Attribute::Label(b"keyward-new".to_vec())]
        };
        // Signing only: no decryption, wrapping or derivation with these keys.
        let mut public_template = common(false);
        public_template.extend([Attribute::Verify(true), Attribute::Encrypt(false), Attribute::Wrap(false)]);
        let mut private_template = common(true);
        private_template.extend([
            Attribute::Sign(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
        ]);
        let mechanism = match ec_width(algorithm) {
            None => {
                public_template.extend([
                    Attribute::ModulusBits(u64::from(rsa_bits).into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                ]);
                Mechanism::RsaPkcsKeyPairGen
            }
            Some(32) => {
                public_template.push(Attribute::EcParams(P256_OID.to_vec()));
                Mechanism::EccKeyPairGen
            }
            Some(_) => {
                public_template.push(Attribute::EcParams(P384_OID.to_vec()));
                Mechanism::EccKeyPairGen
            }
        };
        self.with_session("generating a key pair", |session| {
            let (public, private) = session.generate_key_pair(&mechanism, &public_template, &private_template)?;
            let named = public_key(session, public, algorithm).and_then(|key| {
                let kid = key.thumbprint();
                let name = [Attribute::Label(kid.as_bytes().to_vec()), Attribute::Id(kid.as_bytes().to_vec())];
                session.update_attributes(public, &name)?;
                session.update_attributes(private, &name)?;
                Ok((kid, key))
            });
            if named.is_err() {
                // Leave no unnamed key behind: nothing would ever find or destroy it.
                let _ = session.destroy_object(private);
                let _ = session.destroy_object(public);
            }
            named
        })
    }

    /// Destroys the objects labelled `kid` (private and public); none is not an error.
    /// Blocking.
    pub fn destroy(&self, kid: &str) -> Result<usize, TokenError> {
        self.with_session("destroying a key", |session| {
            let found = session.find_objects(&[Attribute::Id(kid.as_bytes().to_vec())])?;
            for object in &found {
                session.destroy_object(*object)?;
            }
            Ok(found.len())
        })
    }

    /// The signer for the token's key `kid`, checking that the token holds its private
    /// object. Blocking.
    pub(crate) fn key(self: &Arc<Self>, kid: &str, algorithm: Algorithm) -> Result<TokenKey, TokenError> {
        let key = TokenKey { token: Arc::clone(self), kid: kid.to_owned(), algorithm, handle: Mutex::new(None) };
        key.handle()?;
        Ok(key)
    }
}

/// Reads the public half of a key pair from its public object.
fn public_key(session: &Session, object: ObjectHandle, algorithm: Algorithm) -> Result<PublicKey, CkError> {
    let b64 = |bytes: &[u8]| {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
        URL_SAFE_NO_PAD.encode(&bytes[first..])
    };
    let Some(width) = ec_width(algorithm) else {
        let attributes = session.get_attributes(object, &[AttributeType::Modulus, AttributeType::PublicExponent])?;
        let (mut n, mut e) = (None, None);
        for attribute in attributes {
            match attribute {
                Attribute::Modulus(bytes) => n = Some(b64(&bytes)),
                Attribute::PublicExponent(bytes) => e = Some(b64(&bytes)),
                _ => {}
            }
        }
        return match (n, e) {
            (Some(n), Some(e)) => Ok(PublicKey::Rsa { n, e }),
            _ => Err(CkError::Pkcs11(RvError::AttributeTypeInvalid, cryptoki::context::Function::GetAttributeValue)),
        };
    };
    let point = session.get_attributes(object, &[AttributeType::EcPoint])?.into_iter().find_map(|a| match a {
        Attribute::EcPoint(bytes) => Some(bytes),
        _ => None,
    });
    // CKA_EC_POINT is a DER OCTET STRING around the uncompressed point 04 || x || y (some
    // modules give the bare point): accept both, check the length.
    let point = point.unwrap_or_default();
    let bare = match point.as_slice() {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && rest.len() == 1 + 2 * width => rest,
        bare if bare.len() == 1 + 2 * width && bare[0] == 0x04 => bare,
        _ => {
            return Err(CkError::Pkcs11(RvError::AttributeValueInvalid, cryptoki::context::Function::GetAttributeValue))
        }
    };
    let crv = if width == 32 { "P-256" } else { "P-384" };
    Ok(PublicKey::Ec {
        crv: crv.to_owned(),
        x: URL_SAFE_NO_PAD.encode(&bare[1..=width]),
        y: URL_SAFE_NO_PAD.encode(&bare[1 + width..]),
    })
}

/// A private key in the token, ready to sign; its object handle is found once per
/// connection. `Debug` shows the kid only.
pub(crate) struct TokenKey {
    token: Arc<Token>,
    kid: String,
    algorithm: Algorithm,
    /// The private object's handle and the connection it belongs to.
    handle: Mutex<Option<(u64, ObjectHandle)>>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey").field("kid", &self.kid).field("token", &self.token.label()).finish()
    }
}

impl TokenKey {
    /// The private object's handle on the current connection, found by id when needed.
    fn handle(&self) -> Result<ObjectHandle, TokenError> {
        let generation = self.token.current().ok_or(TokenError::Unavailable)?.generation;
        if let Some((seen, handle)) = *self.handle.lock().unwrap_or_else(PoisonError::into_inner) {
            if seen == generation {
                return Ok(handle);
            }
        }
        let template = [Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Id(self.kid.as_bytes().to_vec())];
        let found = self.token.with_connection("finding a key", |connection, session| {
            Ok((connection.generation, session.find_objects(&template)?))
        })?;
        let (generation, Some(handle)) = (found.0, found.1.first().copied()) else {
            return Err(TokenError::Missing { kid: self.kid.clone(), token: self.token.label().to_owned() });
        };
        *self.handle.lock().unwrap_or_else(PoisonError::into_inner) = Some((generation, handle));
        Ok(handle)
    }

    /// The JWS signature over `input` (RFC 7518 section 3). Blocking.
    pub(crate) fn sign(&self, input: &[u8]) -> Result<Vec<u8>, TokenError> {
        let handle = self.handle()?;
        let signature = match self.algorithm {
            Algorithm::Rs256 => {
                self.token.with_session("signing", |session| session.sign(&Mechanism::Sha256RsaPkcs, handle, input))?
            }
            Algorithm::Ps256 => {
                let params = PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32u64.into(),
                };
                let mechanism = Mechanism::Sha256RsaPkcsPss(params);
                self.token.with_session("signing", |session| session.sign(&mechanism, handle, input))?
            }
            Algorithm::Es256 | Algorithm::Es384 => {
                let hash = self.algorithm.hash(input);
                let raw =
                    self.token.with_session("signing", |session| session.sign(&Mechanism::Ecdsa, handle, &hash))?;
                return jose_ecdsa(raw, ec_width(self.algorithm).unwrap_or(32));
            }
        };
        Ok(signature)
    }
}

/// PKCS#11 defines CKM_ECDSA's output as r || s, each as wide as the curve: the JWS form.
/// Checked rather than assumed: a module that returns DER (some do) is converted.
fn jose_ecdsa(raw: Vec<u8>, width: usize) -> Result<Vec<u8>, TokenError> {
    if raw.len() == 2 * width {
        return Ok(raw);
    }
    let invalid = || TokenError::Call {
        operation: "reading the ECDSA signature",
        source: CkError::Pkcs11(RvError::FunctionFailed, cryptoki::context::Function::Sign),
    };
    let der = EcdsaSig::from_der(&raw).map_err(|_| invalid())?;
    ecdsa_to_jose(&der, i32::try_from(width).unwrap_or(48)).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_as_raw_r_s_pass_and_der_ones_are_converted() {
        let raw: Vec<u8> = (1..=64).collect();
        assert_eq!(jose_ecdsa(raw.clone(), 32).unwrap(), raw);
        let (r, s) = (
            openssl::bn::BigNum::from_slice(&raw[..32]).unwrap(),
            openssl::bn::BigNum::from_slice(&raw[32..]).unwrap(),
        );
        let der = EcdsaSig::from_private_components(r, s).unwrap().to_der().unwrap();
        assert_eq!(jose_ecdsa(der, 32).unwrap(), raw);
        assert!(jose_ecdsa(vec![1, 2, 3], 32).is_err());
    }
}
