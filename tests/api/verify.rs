//! An independent JWT verifier built on the pure-Rust `rsa`, `p256`, `p384` and
//! `ed25519-dalek` crates,
//! so that no test trusts the signer (josekit/OpenSSL) to check its own work.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// A verified token's header and claims.
#[derive(Debug)]
pub struct Verified {
    pub header: Value,
    pub claims: Value,
}

fn b64(part: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD.decode(part).map_err(|e| format!("bad base64url: {e}"))
}

fn member(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk[name].as_str().ok_or_else(|| format!("JWK lacks {name}"))?;
    b64(text)
}

/// Verifies a compact JWS against the key in `jwks` that its header's `kid` names.
pub fn verify(token: &str, jwks: &Value) -> Result<Verified, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else { return Err(format!("{} parts, not 3", parts.len())) };
    let header: Value = serde_json::from_slice(&b64(h)?).map_err(|e| e.to_string())?;
    let claims: Value = serde_json::from_slice(&b64(p)?).map_err(|e| e.to_string())?;
    let signature = b64(s)?;
    let kid = header["kid"].as_str().ok_or("header lacks kid")?;
    let alg = header["alg"].as_str().ok_or("header lacks alg")?;
    let jwk = jwks["keys"]
        .as_array()
        .ok_or("JWKS lacks keys")?
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    if jwk["alg"] != alg {
        return Err(format!("header alg {alg} but JWK alg {}", jwk["alg"]));
    }
    let message = format!("{h}.{p}");
    let message = message.as_bytes();
    match alg {
        "RS256" | "PS256" => {
            use rsa::signature::Verifier;
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&member(jwk, "n")?),
                rsa::BigUint::from_bytes_be(&member(jwk, "e")?),
            )
            .map_err(|e| e.to_string())?;
            if alg == "RS256" {
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key);
                let sig = rsa::pkcs1v15::Signature::try_from(signature.as_slice()).map_err(|e| e.to_string())?;
                vk.verify(message, &sig).map_err(|e| format!("RS256 signature invalid: {e}"))?;
            } else {
                let vk = rsa::pss::VerifyingKey::<sha2::Sha256>::new(key);
                let sig = rsa::pss::Signature::try_from(signature.as_slice()).map_err(|e| e.to_string())?;
                vk.verify(message, &sig).map_err(|e| format!("PS256 signature invalid: {e}"))?;
            }
        }
        "ES256" => {
            use p256::ecdsa::signature::Verifier;
            if jwk["crv"] != "P-256" {
                return Err("ES256 key is not on P-256".into());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                member(jwk, "x")?.as_slice().into(),
                member(jwk, "y")?.as_slice().into(),
                false,
            );
            let vk = p256::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|e| e.to_string())?;
            let sig = p256::ecdsa::Signature::from_slice(&signature).map_err(|e| e.to_string())?;
            vk.verify(message, &sig).map_err(|e| format!("ES256 signature invalid: {e}"))?;
        }
        "ES384" => {
            use p384::ecdsa::signature::Verifier;
            let point = p384::EncodedPoint::from_affine_coordinates(
                member(jwk, "x")?.as_slice().into(),
                member(jwk, "y")?.as_slice().into(),
                false,
            );
            let vk = p384::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|e| e.to_string())?;
            let sig = p384::ecdsa::Signature::from_slice(&signature).map_err(|e| e.to_string())?;
            vk.verify(message, &sig).map_err(|e| format!("ES384 signature invalid: {e}"))?;
        }
        "EdDSA" => {
            use ed25519_dalek::Verifier;
            if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
                return Err("EdDSA key is not an Ed25519 OKP key".into());
            }
            let x: [u8; 32] = member(jwk, "x")?.try_into().map_err(|_| "x is not 32 bytes")?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|e| e.to_string())?;
            let sig = ed25519_dalek::Signature::from_slice(&signature).map_err(|e| e.to_string())?;
            vk.verify(message, &sig).map_err(|e| format!("EdDSA signature invalid: {e}"))?;
        }
        other => return Err(format!("unexpected alg {other}")),
    }
    Ok(Verified { header, claims })
}

/// Flips one bit of the token's signature.
pub fn tamper_signature(token: &str) -> String {
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    bytes[0] ^= 1;
    format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes))
}
