//! Public keys in the forms partners ask for: PEM, Base64 of the PEM, and JWK.

use anyhow::{bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

use crate::keys::{Algorithm, PublicKey};

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "kebab-case")]
pub enum Format {
    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    Pem,
    /// Base64 of that PEM, as PaymentsGate's `public_key`.
    PemBase64,
    /// A JWK with `kid`, `use` and `alg`.
    Jwk,
}

impl Format {
    /// What `keyward keys export` and `GET /v1/keys/{kid}/public` give unless asked.
    pub const DEFAULT: Format = Format::Jwk;

    /// The names [`Format::parse`] takes.
    pub const NAMES: [&'static str; 3] = ["jwk", "pem", "pem-base64"];

    /// Parses `pem`, `pem-base64` or `jwk`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pem" => Some(Format::Pem),
            "pem-base64" => Some(Format::PemBase64),
            "jwk" => Some(Format::Jwk),
            _ => None,
        }
    }
}

fn bignum(b64: &str) -> anyhow::Result<BigNum> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).context("a JWK member is not base64url")?;
    BigNum::from_slice(&bytes).context("a JWK member is not a number")
}

/// The SubjectPublicKeyInfo PEM of a public key.
pub fn pem(public: &PublicKey) -> anyhow::Result<String> {
    let pkey = match public {
        PublicKey::Rsa { n, e } => PKey::from_rsa(Rsa::from_public_components(bignum(n)?, bignum(e)?)?)?,
        PublicKey::Ec { crv, x, y } => {
            let nid = match crv.as_str() {
                "P-256" => Nid::X9_62_PRIME256V1,
                "P-384" => Nid::SECP384R1,
                other => bail!("unsupported curve {other}"),
            };
            let group = EcGroup::from_curve_name(nid)?;
            let (x, y) = (bignum(x)?, bignum(y)?);
            let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y)?;
            key.check_key().context("the point is not on the curve")?;
            PKey::from_ec_key(key)?
        }
        PublicKey::Okp { crv, x } => {
            if crv != "Ed25519" {
                bail!("unsupported curve {crv}");
            }
            let raw = URL_SAFE_NO_PAD.decode(x).context("a JWK member is not base64url")?;
            PKey::public_key_from_raw_bytes(&raw, openssl::pkey::Id::ED25519)?
        }
    };
    String::from_utf8(pkey.public_key_to_pem()?).context("PEM is ASCII")
}

/// The public key of `kid` in `format`.
pub fn render(kid: &str, algorithm: Algorithm, public: &PublicKey, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Pem => pem(public)?,
        Format::PemBase64 => STANDARD.encode(pem(public)?),
        Format::Jwk => {
            let mut jwk = serde_json::to_value(public)?;
            if let Some(members) = jwk.as_object_mut() {
                members.insert("kid".into(), kid.into());
                members.insert("use".into(), "sig".into());
                members.insert("alg".into(), algorithm.as_str().into());
            }
            serde_json::to_string_pretty(&jwk)?
        }
    })
}
