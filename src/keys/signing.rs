//! Signing JWTs: with a loaded private key (OpenSSL directly, on a key parsed once) or a
//! profile's shared secret (josekit).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use josekit::jws::{JwsHeader, JwsSigner, HS256, HS512};
use josekit::jwt::JwtPayload;
use openssl::ec::EcKey;
use openssl::ecdsa::EcdsaSig;
use openssl::md::Md;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::RsaPssSaltlen;

use super::custody::pkcs11::TokenKey;
use super::custody::RemoteKey;
use super::material::{crypto, openssl_error};
use super::{Algorithm, HmacAlgorithm, KeyError};

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
    /// Ed25519 signs the whole signing input (it hashes inside), through a one-shot
    /// OpenSSL signer on the parsed key.
    Ed25519 { key: PKey<Private> },
    /// A private object in a PKCS#11 token: each signature is a blocking call.
    Token(TokenKey),
    /// A key in a key service (Vault Transit, AWS KMS): each signature is an async call.
    Remote(RemoteKey),
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
            Algorithm::EdDsa if key.id() == Id::ED25519 => Signer::Ed25519 { key },
            _ => return Err(KeyError::WrongKind(algorithm)),
        };
        Ok(Self::with_signer(kid, algorithm, signer))
    }

    /// A key held by a PKCS#11 token.
    pub(crate) fn in_token(kid: &str, algorithm: Algorithm, key: TokenKey) -> Self {
        Self::with_signer(kid, algorithm, Signer::Token(key))
    }

    /// A key held by a key service.
    pub(crate) fn remote(kid: &str, algorithm: Algorithm, key: RemoteKey) -> Self {
        Self::with_signer(kid, algorithm, Signer::Remote(key))
    }

    fn with_signer(kid: &str, algorithm: Algorithm, signer: Signer) -> Self {
        let header = serde_json::json!({"alg": algorithm.as_str(), "kid": kid, "typ": "JWT"});
        SigningKey { kid: kid.to_owned(), algorithm, header: URL_SAFE_NO_PAD.encode(header.to_string()), signer }
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Signs `claims` as a compact JWT with header `alg`, `kid`, `typ: "JWT"`. A key
    /// service's key signs through [`SigningKey::sign_async`] only.
    pub fn sign(&self, claims: serde_json::Map<String, serde_json::Value>) -> Result<String, KeyError> {
        let token = self.signing_input(claims);
        let signature = self.signature(token.as_bytes())?;
        Ok(self.signed(token, &signature))
    }

    /// `header.payload`, with room for the signature.
    fn signing_input(&self, claims: serde_json::Map<String, serde_json::Value>) -> String {
        let payload = serde_json::Value::Object(claims).to_string();
        let mut token = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 700);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        token
    }

    fn signed(&self, mut input: String, signature: &[u8]) -> String {
        input.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut input);
        input
    }

    /// [`SigningKey::sign`], off the async executor when the signature waits on a token or
    /// takes about a millisecond (RSA): meanwhile the executor goes on reading, admitting
    /// and shedding requests, so an overload is refused at once instead of waiting behind
    /// signatures. EC and Ed25519 sign in place (tens of microseconds: a thread hand-off
    /// would cost about as much as the signature).
    ///
    /// A signature whose turn on a thread comes after `deadline` (its request has given up)
    /// is not computed: [`KeyError::TooLate`]. Under overload, that keeps the threads on
    /// requests still waiting.
    ///
    /// A key service's key signs by an async call: no thread waits on it.
    pub async fn sign_async(
        self: &Arc<Self>,
        claims: serde_json::Map<String, serde_json::Value>,
        deadline: std::time::Instant,
    ) -> Result<String, KeyError> {
        if let Signer::Remote(key) = &self.signer {
            let input = self.signing_input(claims);
            // Boxed: a key service's call (the AWS SDK's above all) is a future of many
            // kilobytes, which would otherwise make every signing request's future as large,
            // and be copied with it, whatever its key's custody.
            let signature = Box::pin(key.sign(input.as_bytes().to_vec())).await?;
            return Ok(self.signed(input, &signature));
        }
        if !matches!(self.signer, Signer::Token(_) | Signer::Rsa { .. }) {
            return self.sign(claims);
        }
        let key = Arc::clone(self);
        let sign = move || if std::time::Instant::now() < deadline { key.sign(claims) } else { Err(KeyError::TooLate) };
        tokio::task::spawn_blocking(sign).await.map_err(|_| KeyError::Interrupted)?
    }

    /// Whether its signatures are a PKCS#11 token's (which may stop answering).
    pub fn on_token(&self) -> bool {
        matches!(self.signer, Signer::Token(_))
    }

    /// Whether its signatures are a key service's (which may fail or be slow).
    pub fn on_key_service(&self) -> bool {
        matches!(self.signer, Signer::Remote(_))
    }

    /// The JWS signature (RFC 7518 section 3, RFC 8037 section 3.1) of the signing input.
    fn signature(&self, input: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.signer {
            Signer::Rsa { key, contexts } => {
                let hash = self.algorithm.hash(input);
                let pooled = contexts.lock().unwrap_or_else(PoisonError::into_inner).pop();
                let mut context = match pooled {
                    Some(context) => context,
                    None => rsa_context(key, self.algorithm).map_err(openssl_error("setting up signing"))?,
                };
                let mut signature = Vec::new();
                // A context whose signature failed is dropped rather than trusted again.
                context.sign_to_vec(&hash, &mut signature).map_err(openssl_error("signing"))?;
                contexts.lock().unwrap_or_else(PoisonError::into_inner).push(context);
                Ok(signature)
            }
            Signer::Ec { key, width } => {
                let signature = EcdsaSig::sign(&self.algorithm.hash(input), key).map_err(openssl_error("signing"))?;
                ecdsa_to_jose(&signature, *width)
            }
            Signer::Ed25519 { key } => {
                let mut signer = openssl::sign::Signer::new_without_digest(key).map_err(openssl_error("signing"))?;
                signer.sign_oneshot_to_vec(input).map_err(openssl_error("signing"))
            }
            // The token hashes RSA input itself (CKM_SHA256_RSA_PKCS and _PSS).
            Signer::Token(key) => Ok(key.sign(input)?),
            Signer::Remote(_) => Err(KeyError::Remote(super::custody::RemoteError::Failed(
                "a key service's key signs asynchronously only".to_owned(),
            ))),
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
pub(crate) fn ecdsa_to_jose(signature: &EcdsaSig, width: i32) -> Result<Vec<u8>, KeyError> {
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
    use crate::keys::generate;

    #[test]
    fn debug_of_keys_and_secrets_shows_no_private_material() {
        let generated = generate(Algorithm::Es256, 2048).unwrap();
        let signing = SigningKey::from_der(&generated.kid, Algorithm::Es256, &generated.private_der).unwrap();
        let secret = SecretKey::new(HmacAlgorithm::Hs256, &[0x5a; 32]).unwrap();
        // A PKCS#8 P-256 key is 138 bytes: any dump of it (or of the secret) runs far longer.
        for shown in [format!("{generated:?}"), format!("{signing:?}"), format!("{secret:?}")] {
            assert!(shown.contains("<hidden>") && shown.len() < 200, "{shown}");
            assert!(!shown.contains("90, 90"), "{shown}");
        }
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
            (Algorithm::EdDsa, 0, 64),
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
        assert!(matches!(SigningKey::from_der("k", Algorithm::EdDsa, &ec.private_der), Err(KeyError::WrongKind(_))));
        let ed = generate(Algorithm::EdDsa, 0).unwrap();
        assert!(matches!(SigningKey::from_der("k", Algorithm::Es256, &ed.private_der), Err(KeyError::WrongKind(_))));
    }
}
