//! Key material: generation, public JWKs, RFC 7638 thumbprints and JWT signing.
//!
//! Key generation, import and HMAC signing go through josekit; the per-token asymmetric
//! signature calls OpenSSL directly on a key parsed once (josekit set up a fresh OpenSSL
//! context for every signature).

use std::fmt;
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::{Jwk, KeyPair};
use josekit::jws::{JwsHeader, JwsSigner, HS256, HS512};
use josekit::jwt::JwtPayload;
use openssl::ec::EcKey;
use openssl::ecdsa::EcdsaSig;
use openssl::md::Md;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sha::{Sha256, Sha384};
use openssl::sign::RsaPssSaltlen;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

mod algorithm;
pub mod export;
pub mod jwks;
pub mod rotation;
mod state;
pub mod timeline;

pub use algorithm::HmacAlgorithm;
pub use state::{check_master_key, KeyRecord, KeyState};

/// A signing algorithm keyward can hold keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
    /// RSASSA-PSS with SHA-256.
    #[serde(rename = "PS256")]
    Ps256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// ECDSA on P-384 with SHA-384.
    #[serde(rename = "ES384")]
    Es384,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Ps256 => "PS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
        }
    }

    /// Parses a JOSE name.
    pub fn parse(name: &str) -> Option<Self> {
        [Algorithm::Rs256, Algorithm::Ps256, Algorithm::Es256, Algorithm::Es384]
            .into_iter()
            .find(|a| a.as_str() == name)
    }

    /// Whether keys of this algorithm are RSA keys.
    pub fn is_rsa(self) -> bool {
        matches!(self, Algorithm::Rs256 | Algorithm::Ps256)
    }

    /// The signing input's hash. OpenSSL's one-shot `SHA256()` fetches the algorithm anew
    /// on every call (as much work as hashing a token); the hasher objects do not.
    fn hash(self, input: &[u8]) -> Vec<u8> {
        if self == Algorithm::Es384 {
            let mut hasher = Sha384::new();
            hasher.update(input);
            hasher.finish().to_vec()
        } else {
            let mut hasher = Sha256::new();
            hasher.update(input);
            hasher.finish().to_vec()
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
}

fn crypto(operation: &'static str) -> impl FnOnce(josekit::JoseError) -> KeyError {
    move |source| KeyError::Crypto { operation, source }
}

fn openssl_error(operation: &'static str) -> impl FnOnce(openssl::error::ErrorStack) -> KeyError {
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
        };
        URL_SAFE_NO_PAD.encode(openssl::sha::sha256(canonical.as_bytes()))
    }

    /// The modulus size of an RSA key; `None` for EC keys.
    pub fn rsa_bits(&self) -> Option<u32> {
        let PublicKey::Rsa { n, .. } = self else { return None };
        let bytes = URL_SAFE_NO_PAD.decode(n).ok()?;
        let first = bytes.iter().position(|b| *b != 0)?;
        let bits = (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize;
        u32::try_from(bits).ok()
    }

    fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let member = |name: &'static str| {
            jwk.parameter(name).and_then(|v| v.as_str()).map(str::to_owned).ok_or(KeyError::MissingMember(name))
        };
        match jwk.key_type() {
            "RSA" => Ok(PublicKey::Rsa { n: member("n")?, e: member("e")? }),
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
    };
    let public = PublicKey::from_jwk(&public_jwk)?;
    SigningKey::from_der("", algorithm, &der)?;
    Ok(GeneratedKey { kid: public.thumbprint(), algorithm, public, private_der: der })
}

/// A private key loaded for signing JWTs. `Debug` never shows key material.
pub struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    /// The base64url JOSE header, the same for every token the key signs.
    header: String,
    signer: Signer,
}

/// The parsed private key, ready to sign a hash.
enum Signer {
    /// RSA contexts set up for the key's padding, one per concurrent signer (taken out
    /// while in use): setting one up per signature is an algorithm fetch and key import.
    Rsa { key: PKey<Private>, contexts: Mutex<Vec<PkeyCtx<Private>>> },
    /// ECDSA straight on the key: no context, and no DER encoding to undo.
    Ec { key: EcKey<Private>, width: i32 },
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("private_key", &"<hidden>")
            .finish()
    }
}

impl SigningKey {
    /// Loads a PKCS#8 (or PKCS#1 / SEC1) DER private key for `algorithm`.
    pub fn from_der(kid: &str, algorithm: Algorithm, der: &[u8]) -> Result<Self, KeyError> {
        let key = PKey::private_key_from_der(der).map_err(openssl_error("loading a private key"))?;
        let signer = match algorithm {
            Algorithm::Rs256 | Algorithm::Ps256 if key.id() == Id::RSA => {
                let first = rsa_context(&key, algorithm).map_err(openssl_error("setting up signing"))?;
                Signer::Rsa { key, contexts: Mutex::new(vec![first]) }
            }
            Algorithm::Es256 | Algorithm::Es384 => {
                let (wanted, width) =
                    if algorithm == Algorithm::Es256 { (Nid::X9_62_PRIME256V1, 32) } else { (Nid::SECP384R1, 48) };
                match key.ec_key() {
                    Ok(key) if key.group().curve_name() == Some(wanted) => Signer::Ec { key, width },
                    _ => return Err(KeyError::WrongKind(algorithm)),
                }
            }
            _ => return Err(KeyError::WrongKind(algorithm)),
        };
        let header = serde_json::json!({"alg": algorithm.as_str(), "kid": kid, "typ": "JWT"});
        Ok(SigningKey { kid: kid.to_owned(), algorithm, header: URL_SAFE_NO_PAD.encode(header.to_string()), signer })
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Signs `claims` as a compact JWT with header `alg`, `kid`, `typ: "JWT"`.
    pub fn sign(&self, claims: serde_json::Map<String, serde_json::Value>) -> Result<String, KeyError> {
        let payload = serde_json::Value::Object(claims).to_string();
        let mut token = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 700);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = self.sign_hash(&self.algorithm.hash(token.as_bytes()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    /// The JWS signature (RFC 7518 section 3) over a hash of the signing input.
    fn sign_hash(&self, hash: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.signer {
            Signer::Rsa { key, contexts } => {
                let pooled = contexts.lock().unwrap_or_else(PoisonError::into_inner).pop();
                let mut context = match pooled {
                    Some(context) => context,
                    None => rsa_context(key, self.algorithm).map_err(openssl_error("setting up signing"))?,
                };
                let mut signature = Vec::new();
                // A context whose signature failed is dropped rather than trusted again.
                context.sign_to_vec(hash, &mut signature).map_err(openssl_error("signing"))?;
                contexts.lock().unwrap_or_else(PoisonError::into_inner).push(context);
                Ok(signature)
            }
            Signer::Ec { key, width } => {
                let signature = EcdsaSig::sign(hash, key).map_err(openssl_error("signing"))?;
                ecdsa_to_jose(&signature, *width)
            }
        }
    }
}

/// A context that signs SHA-256 hashes with an RSA key: PKCS#1 v1.5 for RS256, PSS with
/// MGF1-SHA-256 and a salt as long as the hash for PS256.
fn rsa_context(key: &PKey<Private>, algorithm: Algorithm) -> Result<PkeyCtx<Private>, openssl::error::ErrorStack> {
    let mut context = PkeyCtx::new(key)?;
    context.sign_init()?;
    context.set_signature_md(Md::sha256())?;
    if algorithm == Algorithm::Ps256 {
        context.set_rsa_padding(Padding::PKCS1_PSS)?;
        context.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
        context.set_rsa_mgf1_md(Md::sha256())?;
    } else {
        context.set_rsa_padding(Padding::PKCS1)?;
    }
    Ok(context)
}

/// An ECDSA signature as JWS wants it: `r || s`, each big-endian and left-padded with
/// zeros to the curve's size (about one signature in 128 has a shorter `r` or `s`).
fn ecdsa_to_jose(signature: &EcdsaSig, width: i32) -> Result<Vec<u8>, KeyError> {
    let encode = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let mut jose = signature.r().to_vec_padded(width)?;
        jose.extend(signature.s().to_vec_padded(width)?);
        Ok(jose)
    };
    encode().map_err(openssl_error("encoding the ECDSA signature"))
}

/// A profile's shared secret loaded for HS256/HS512 signing. `Debug` never shows it.
pub struct SecretKey {
    algorithm: HmacAlgorithm,
    signer: Box<dyn JwsSigner>,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("algorithm", &self.algorithm).field("secret", &"<hidden>").finish()
    }
}

impl SecretKey {
    /// Loads a secret; RFC 7518 requires at least the hash's size (32 or 64 bytes).
    pub fn new(algorithm: HmacAlgorithm, secret: &[u8]) -> Result<Self, KeyError> {
        let load = crypto("loading an HMAC secret");
        let signer: Box<dyn JwsSigner> = match algorithm {
            HmacAlgorithm::Hs256 => Box::new(HS256.signer_from_bytes(secret).map_err(load)?),
            HmacAlgorithm::Hs512 => Box::new(HS512.signer_from_bytes(secret).map_err(load)?),
        };
        Ok(SecretKey { algorithm, signer })
    }

    /// The HMAC algorithm.
    pub fn algorithm(&self) -> HmacAlgorithm {
        self.algorithm
    }

    /// Signs `claims` as a compact JWT with header `alg`, `typ: "JWT"`.
    pub fn sign(&self, claims: serde_json::Map<String, serde_json::Value>) -> Result<String, KeyError> {
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        let payload = JwtPayload::from_map(claims).map_err(crypto("building the JWT payload"))?;
        josekit::jwt::encode_with_signer(&payload, &header, self.signer.as_ref()).map_err(crypto("signing"))
    }
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
    fn generated_keys_carry_only_public_members_and_their_thumbprint() {
        for alg in [Algorithm::Rs256, Algorithm::Ps256, Algorithm::Es256, Algorithm::Es384] {
            let key = generate(alg, 2048).unwrap();
            assert_eq!(key.kid, key.public.thumbprint());
            let json = serde_json::to_value(&key.public).unwrap();
            let members: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
            if alg.is_rsa() {
                assert_eq!(members.len(), 3, "{members:?}");
                assert!(members.contains(&"n") && members.contains(&"e"));
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

    #[test]
    fn ecdsa_signatures_with_short_r_or_s_are_left_padded_to_the_curve_size() {
        use openssl::bn::BigNum;
        let signature = |r: &[u8], s: &[u8]| {
            let (r, s) = (BigNum::from_slice(r).unwrap(), BigNum::from_slice(s).unwrap());
            EcdsaSig::from_private_components(r, s).unwrap()
        };
        let full = [0xab; 32];
        let jose = ecdsa_to_jose(&signature(&[0x01, 0x02], &full), 32).unwrap();
        assert_eq!(jose.len(), 64);
        assert_eq!(&jose[..30], &[0; 30], "r is padded on the left");
        assert_eq!(&jose[30..32], &[0x01, 0x02]);
        assert_eq!(&jose[32..], &full);

        let jose = ecdsa_to_jose(&signature(&full, &[0x7f]), 32).unwrap();
        assert_eq!((&jose[..32], &jose[32..63], jose[63]), (&full[..], &[0; 31][..], 0x7f), "s too");

        let jose = ecdsa_to_jose(&signature(&[0x80; 48], &[0x05; 47]), 48).unwrap();
        assert_eq!(jose.len(), 96);
        assert_eq!((jose[47], jose[48], jose[49]), (0x80, 0x00, 0x05), "ES384 widths are 48 bytes");

        assert!(ecdsa_to_jose(&signature(&[0xff; 33], &full), 32).is_err(), "a value wider than the curve is refused");
    }

    #[test]
    fn signatures_have_the_jws_form_of_their_algorithm() {
        for (alg, bits, length) in [
            (Algorithm::Rs256, 2048, 256),
            (Algorithm::Ps256, 3072, 384),
            (Algorithm::Es256, 0, 64),
            (Algorithm::Es384, 0, 96),
        ] {
            let generated = generate(alg, bits).unwrap();
            let key = SigningKey::from_der(&generated.kid, alg, &generated.private_der).unwrap();
            let mut claims = serde_json::Map::new();
            claims.insert("sub".into(), "a".into());
            let token = key.sign(claims).unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
            assert_eq!(header, serde_json::json!({"alg": alg.as_str(), "kid": generated.kid, "typ": "JWT"}));
            assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), length, "{alg}");
        }
    }

    #[test]
    fn a_key_of_another_kind_is_refused_for_signing() {
        let ec = generate(Algorithm::Es256, 0).unwrap();
        let p384 = generate(Algorithm::Es384, 0).unwrap();
        assert!(matches!(SigningKey::from_der("k", Algorithm::Rs256, &ec.private_der), Err(KeyError::WrongKind(_))));
        assert!(matches!(SigningKey::from_der("k", Algorithm::Es256, &p384.private_der), Err(KeyError::WrongKind(_))));
    }

    #[test]
    fn algorithm_names_round_trip() {
        for alg in [Algorithm::Rs256, Algorithm::Ps256, Algorithm::Es256, Algorithm::Es384] {
            assert_eq!(Algorithm::parse(alg.as_str()), Some(alg));
        }
        assert_eq!(Algorithm::parse("HS256"), None);
    }
}
