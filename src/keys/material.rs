//! Key material: generation, import, public JWKs and RFC 7638 thumbprints.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::{Jwk, KeyPair};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Algorithm, SigningKey};

/// Failures of key operations. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// OpenSSL (through josekit) refused an operation.
    #[error("{operation} failed: {source}")]
    Crypto {
        /// What was being done.
        operation: &'static str,
        /// The library's error (describes the failure, never the key).
        #[source]
        source: josekit::JoseError,
    },
    /// OpenSSL refused an operation on a loaded key.
    #[error("{operation} failed: {source}")]
    OpenSsl {
        /// What was being done.
        operation: &'static str,
        /// The library's error (describes the failure, never the key).
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// A stored private key is not of the kind its algorithm needs.
    #[error("the private key does not fit {0}")]
    WrongKind(Algorithm),
    /// A JWK lacked a member it must have.
    #[error("the public key lacks the {0} member")]
    MissingMember(&'static str),
    /// An imported key is unusable; the message never quotes the key.
    #[error("cannot import the key: {0}")]
    Import(String),
    /// The PKCS#11 token refused or did not answer.
    #[error(transparent)]
    Token(#[from] super::custody::pkcs11::TokenError),
    /// A key service (Vault Transit, AWS KMS) did not sign, or too many calls are in flight.
    #[error(transparent)]
    Remote(#[from] super::custody::RemoteError),
    /// The signing task was cancelled (the server is shutting down).
    #[error("signing was interrupted")]
    Interrupted,
    /// The request gave up before a thread was free to sign.
    #[error("the request's deadline passed before its signature's turn")]
    TooLate,
}

pub(super) fn crypto(operation: &'static str) -> impl FnOnce(josekit::JoseError) -> KeyError {
    move |source| KeyError::Crypto { operation, source }
}

pub(super) fn openssl_error(operation: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> KeyError {
    move |source| KeyError::OpenSsl { operation, source }
}

/// The public half of a key, with exactly the members a JWKS carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum PublicKey {
    /// An RSA public key.
    #[serde(rename = "RSA")]
    Rsa {
        /// Modulus, base64url.
        n: String,
        /// Exponent, base64url.
        e: String,
    },
    /// An EC public key.
    #[serde(rename = "EC")]
    Ec {
        /// Curve name.
        crv: String,
        /// X coordinate, base64url.
        x: String,
        /// Y coordinate, base64url.
        y: String,
    },
    /// An octet key pair's public half (RFC 8037): Ed25519 for EdDSA.
    #[serde(rename = "OKP")]
    Okp {
        /// Curve name.
        crv: String,
        /// The public key's bytes, base64url.
        x: String,
    },
}

impl PublicKey {
    /// The RFC 7638 SHA-256 thumbprint, base64url: keyward's `kid`.
    pub fn thumbprint(&self) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let canonical = match self {
            PublicKey::Rsa { n, e } => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, q(e), q(n)),
            PublicKey::Ec { crv, x, y } => {
                format!(r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#, q(crv), q(x), q(y))
            }
            // RFC 8037 section 2: the required members of an OKP key are crv, kty and x.
            PublicKey::Okp { crv, x } => format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, q(crv), q(x)),
        };
        URL_SAFE_NO_PAD.encode(openssl::sha::sha256(canonical.as_bytes()))
    }

    /// The modulus size of an RSA key; `None` for other keys.
    pub fn rsa_bits(&self) -> Option<u32> {
        let PublicKey::Rsa { n, .. } = self else { return None };
        let bytes = URL_SAFE_NO_PAD.decode(n).ok()?;
        let first = bytes.iter().position(|b| *b != 0)?;
        let bits = (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize;
        u32::try_from(bits).ok()
    }

    /// The public half of an `algorithm` key from its DER SubjectPublicKeyInfo, as key
    /// services hand it out.
    pub fn from_spki_der(algorithm: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        let key = PKey::public_key_from_der(der).map_err(openssl_error("reading a public key"))?;
        let b64 = |bytes: Vec<u8>| URL_SAFE_NO_PAD.encode(bytes);
        match algorithm {
            Algorithm::Rs256 | Algorithm::Ps256 => {
                let rsa = key.rsa().map_err(|_| KeyError::WrongKind(algorithm))?;
                Ok(PublicKey::Rsa { n: b64(rsa.n().to_vec()), e: b64(rsa.e().to_vec()) })
            }
            Algorithm::Es256 | Algorithm::Es384 => {
                let (crv, nid, width) = if algorithm == Algorithm::Es256 {
                    ("P-256", Nid::X9_62_PRIME256V1, 32)
                } else {
                    ("P-384", Nid::SECP384R1, 48)
                };
                let ec = key.ec_key().map_err(|_| KeyError::WrongKind(algorithm))?;
                if ec.group().curve_name() != Some(nid) {
                    return Err(KeyError::WrongKind(algorithm));
                }
                let coordinates = || -> Result<(Vec<u8>, Vec<u8>), openssl::error::ErrorStack> {
                    let mut context = openssl::bn::BigNumContext::new()?;
                    let (mut x, mut y) = (openssl::bn::BigNum::new()?, openssl::bn::BigNum::new()?);
                    ec.public_key().affine_coordinates(ec.group(), &mut x, &mut y, &mut context)?;
                    Ok((x.to_vec_padded(width)?, y.to_vec_padded(width)?))
                };
                let (x, y) = coordinates().map_err(openssl_error("reading an EC public key"))?;
                Ok(PublicKey::Ec { crv: crv.to_owned(), x: b64(x), y: b64(y) })
            }
            Algorithm::EdDsa => {
                if key.id() != Id::ED25519 {
                    return Err(KeyError::WrongKind(algorithm));
                }
                let raw = key.raw_public_key().map_err(openssl_error("reading an Ed25519 public key"))?;
                Ok(PublicKey::Okp { crv: "Ed25519".to_owned(), x: b64(raw) })
            }
        }
    }

    fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let member = |name: &'static str| {
            jwk.parameter(name).and_then(|v| v.as_str()).map(str::to_owned).ok_or(KeyError::MissingMember(name))
        };
        match jwk.key_type() {
            "RSA" => Ok(PublicKey::Rsa { n: member("n")?, e: member("e")? }),
            "OKP" => Ok(PublicKey::Okp { crv: member("crv")?, x: member("x")? }),
            _ => Ok(PublicKey::Ec { crv: member("crv")?, x: member("x")?, y: member("y")? }),
        }
    }
}

/// A freshly made key pair: public half, kid and the PKCS#8 DER private key (to be sealed).
pub struct GeneratedKey {
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// Algorithm the key is for.
    pub algorithm: Algorithm,
    /// Public half.
    pub public: PublicKey,
    /// PKCS#8 DER private key; zeroed on drop.
    pub private_der: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private_der", &"<hidden>")
            .finish()
    }
}

/// Generates a key pair with OpenSSL. CPU-heavy for RSA: call it off the async executor.
pub fn generate(algorithm: Algorithm, rsa_bits: u32) -> Result<GeneratedKey, KeyError> {
    let (public_jwk, private_der) = match algorithm {
        Algorithm::Rs256 | Algorithm::Ps256 => {
            let pair = RsaKeyPair::generate(rsa_bits).map_err(crypto("RSA key generation"))?;
            (pair.to_jwk_public_key(), pair.to_der_private_key())
        }
        Algorithm::Es256 | Algorithm::Es384 => {
            let curve = if algorithm == Algorithm::Es256 { EcCurve::P256 } else { EcCurve::P384 };
            let pair = EcKeyPair::generate(curve).map_err(crypto("EC key generation"))?;
            (pair.to_jwk_public_key(), pair.to_der_private_key())
        }
        Algorithm::EdDsa => {
            let key = PKey::generate_ed25519().map_err(openssl_error("Ed25519 key generation"))?;
            return ed25519_key(&key);
        }
    };
    let private_der = Zeroizing::new(private_der);
    let public = PublicKey::from_jwk(&public_jwk)?;
    // Prove the pair loads for signing before anyone stores it.
    SigningKey::from_der("", algorithm, &private_der)?;
    Ok(GeneratedKey { kid: public.thumbprint(), algorithm, public, private_der })
}

/// Reads a private key PEM (PKCS#1, PKCS#8 or SEC1) for `algorithm`, checking that it is
/// of the right type, curve and size and that its parts are consistent.
pub fn import_pem(algorithm: Algorithm, pem: &[u8]) -> Result<GeneratedKey, KeyError> {
    let refuse = |why: &str| KeyError::Import(why.to_owned());
    // An empty passphrase: an encrypted PEM is refused, never prompted for on a terminal.
    let pkey = PKey::private_key_from_pem_passphrase(pem, b"").map_err(|_| {
        refuse("not a PEM private key (PKCS#1 \"RSA PRIVATE KEY\", PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\")")
    })?;
    match (algorithm, pkey.id()) {
        (Algorithm::Rs256 | Algorithm::Ps256, Id::RSA) => {
            let rsa = pkey.rsa().map_err(|_| refuse("unreadable RSA key"))?;
            if !rsa.check_key().unwrap_or(false) {
                return Err(refuse("the RSA key's parts are inconsistent"));
            }
            if rsa.size() * 8 < 2048 {
                return Err(KeyError::Import(format!("RSA keys must have at least 2048 bits, not {}", rsa.size() * 8)));
            }
        }
        (Algorithm::Es256 | Algorithm::Es384, Id::EC) => {
            let ec = pkey.ec_key().map_err(|_| refuse("unreadable EC key"))?;
            let wanted = if algorithm == Algorithm::Es256 { Nid::X9_62_PRIME256V1 } else { Nid::SECP384R1 };
            if ec.group().curve_name() != Some(wanted) {
                return Err(KeyError::Import(format!(
                    "{algorithm} needs a key on {}",
                    if wanted == Nid::SECP384R1 { "P-384" } else { "P-256" }
                )));
            }
            if ec.check_key().is_err() {
                return Err(refuse("the EC key's parts are inconsistent"));
            }
        }
        // An Ed25519 key has no parts that could disagree: any 32 bytes are a private key.
        (Algorithm::EdDsa, Id::ED25519) => {}
        _ => return Err(KeyError::Import(format!("the key's type does not fit the key set's algorithm {algorithm}"))),
    }
    let der = Zeroizing::new(pkey.private_key_to_pkcs8().map_err(|_| refuse("cannot convert to PKCS#8"))?);
    let public_jwk = match algorithm {
        Algorithm::Rs256 | Algorithm::Ps256 => {
            RsaKeyPair::from_der(&*der).map_err(crypto("reading the key"))?.to_jwk_public_key()
        }
        Algorithm::Es256 => {
            EcKeyPair::from_der(&*der, Some(EcCurve::P256)).map_err(crypto("reading the key"))?.to_jwk_public_key()
        }
        Algorithm::Es384 => {
            EcKeyPair::from_der(&*der, Some(EcCurve::P384)).map_err(crypto("reading the key"))?.to_jwk_public_key()
        }
        Algorithm::EdDsa => return ed25519_key(&pkey),
    };
    let public = PublicKey::from_jwk(&public_jwk)?;
    SigningKey::from_der("", algorithm, &der)?;
    Ok(GeneratedKey { kid: public.thumbprint(), algorithm, public, private_der: der })
}

/// An Ed25519 key's public JWK (`x` is the raw 32-byte public key) and PKCS#8 DER.
fn ed25519_key(key: &PKey<openssl::pkey::Private>) -> Result<GeneratedKey, KeyError> {
    let raw = key.raw_public_key().map_err(openssl_error("reading the Ed25519 public key"))?;
    let private_der = Zeroizing::new(key.private_key_to_pkcs8().map_err(openssl_error("encoding the key"))?);
    let public = PublicKey::Okp { crv: "Ed25519".to_owned(), x: URL_SAFE_NO_PAD.encode(raw) };
    SigningKey::from_der("", Algorithm::EdDsa, &private_der)?;
    Ok(GeneratedKey { kid: public.thumbprint(), algorithm: Algorithm::EdDsa, public, private_der })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 section 3.1.
        let key = PublicKey::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".to_owned(),
            e: "AQAB".to_owned(),
        };
        assert_eq!(key.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn okp_thumbprint_matches_rfc_8037_example() {
        // RFC 8037 appendix A.3.
        let key =
            PublicKey::Okp { crv: "Ed25519".to_owned(), x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".to_owned() };
        assert_eq!(key.thumbprint(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(serde_json::to_value(&key).unwrap()["kty"], "OKP");
    }

    #[test]
    fn an_ed25519_pem_imports_for_eddsa_only() {
        let key = PKey::generate_ed25519().unwrap();
        let pem = key.private_key_to_pem_pkcs8().unwrap();
        let imported = import_pem(Algorithm::EdDsa, &pem).unwrap();
        let PublicKey::Okp { crv, x } = &imported.public else { panic!("not OKP: {:?}", imported.public) };
        assert_eq!((crv.as_str(), URL_SAFE_NO_PAD.decode(x).unwrap()), ("Ed25519", key.raw_public_key().unwrap()));
        assert!(matches!(import_pem(Algorithm::Es256, &pem), Err(KeyError::Import(_))));
        let ec = EcKeyPair::generate(EcCurve::P256).unwrap().to_pem_private_key();
        assert!(matches!(import_pem(Algorithm::EdDsa, &ec), Err(KeyError::Import(_))));
    }

    #[test]
    fn generated_keys_carry_only_public_members_and_their_thumbprint() {
        for alg in Algorithm::ALL {
            let key = generate(alg, 2048).unwrap();
            assert_eq!(key.kid, key.public.thumbprint());
            let json = serde_json::to_value(&key.public).unwrap();
            let members: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
            if alg.is_rsa() {
                assert_eq!(members.len(), 3, "{members:?}");
                assert!(members.contains(&"n") && members.contains(&"e"));
            } else if alg == Algorithm::EdDsa {
                assert_eq!(members.len(), 3, "{members:?}");
                assert!(members.contains(&"crv") && members.contains(&"x"));
            } else {
                assert_eq!(members.len(), 4, "{members:?}");
                assert!(members.contains(&"crv") && members.contains(&"x") && members.contains(&"y"));
            }
            assert!(!format!("{key:?}").contains("private_der: ["));
        }
    }

    #[test]
    fn rsa_bits_are_honoured() {
        let key = generate(Algorithm::Rs256, 3072).unwrap();
        assert_eq!(key.public.rsa_bits(), Some(3072));
        assert_eq!(generate(Algorithm::Ps256, 2048).unwrap().public.rsa_bits(), Some(2048));
        assert_eq!(generate(Algorithm::Es256, 2048).unwrap().public.rsa_bits(), None);
    }
}
