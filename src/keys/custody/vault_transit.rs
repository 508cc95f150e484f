//! Vault (or OpenBao) Transit custody: each key a non-exportable Transit key made by
//! keyward, named `keyward-<key set>-<random>`; signatures through `<mount>/sign`, the
//! public half read from the key and checked against the kid, and the key deleted when it
//! is retired or revoked. Calls go through the shared Vault client (reqwest, async).

use std::sync::Arc;

use anyhow::{bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::remote::{Health, InFlight, RemoteBounds, RemoteError};
use crate::keys::{Algorithm, PublicKey};
use crate::vault::{Vault, VaultError, VaultSettings};

const SERVICE: &str = "vault-transit";

/// The Transit engine of `[vault]`, logged in.
pub struct Transit {
    vault: Vault,
    mount: String,
    bounds: RemoteBounds,
    health: Health,
    in_flight: InFlight,
}

/// The Transit key type of an algorithm's keys.
fn key_type(algorithm: Algorithm, bits: u32) -> String {
    match algorithm {
        Algorithm::Rs256 | Algorithm::Ps256 => format!("rsa-{bits}"),
        Algorithm::Es256 => "ecdsa-p256".to_owned(),
        Algorithm::Es384 => "ecdsa-p384".to_owned(),
        Algorithm::EdDsa => "ed25519".to_owned(),
    }
}

/// A `sign` request: the input and the parameters that give a JWS signature.
#[derive(Serialize)]
struct SignRequest<'a> {
    input: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash_algorithm: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature_algorithm: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    salt_length: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    marshaling_algorithm: Option<&'static str>,
}

impl<'a> SignRequest<'a> {
    /// PKCS#1 v1.5 or PSS with a salt as long as the hash (RFC 7518 3.3, 3.5), ECDSA as
    /// `r || s` (`jws` marshaling), Ed25519 over the whole input.
    fn new(algorithm: Algorithm, input: &'a str) -> Self {
        let (hash, signature, salt, marshaling) = match algorithm {
            Algorithm::Rs256 => (Some("sha2-256"), Some("pkcs1v15"), None, None),
            Algorithm::Ps256 => (Some("sha2-256"), Some("pss"), Some("hash"), None),
            Algorithm::Es256 => (Some("sha2-256"), None, None, Some("jws")),
            Algorithm::Es384 => (Some("sha2-384"), None, None, Some("jws")),
            Algorithm::EdDsa => (None, None, None, None),
        };
        SignRequest {
            input,
            hash_algorithm: hash,
            signature_algorithm: signature,
            salt_length: salt,
            marshaling_algorithm: marshaling,
        }
    }
}

/// A `sign` answer: `data.signature`, `vault:v<version>:<signature>`.
#[derive(Deserialize)]
struct SignAnswer {
    data: SignData,
}

#[derive(Deserialize)]
struct SignData {
    signature: String,
}

/// Whether `err` says Vault is down or failing (rather than refusing one request).
fn is_outage(err: &VaultError) -> bool {
    match err {
        VaultError::Unreachable { .. } => true,
        VaultError::Refused { status, .. } => *status >= 500,
        VaultError::Settings(_) => false,
    }
}

impl Transit {
    /// Logs in to Vault: start-up refuses to go on when this fails.
    pub async fn open(settings: VaultSettings, mount: String, bounds: RemoteBounds) -> anyhow::Result<Arc<Self>> {
        let vault = Vault::new(settings).context("[vault]")?;
        vault
            .login()
            .await
            .with_context(|| format!("[vault] ({SERVICE} custody): logging in to {}", vault.address()))?;
        Ok(Arc::new(Transit { vault, mount, bounds, health: Health::default(), in_flight: InFlight::default() }))
    }

    /// Vault's address.
    pub fn address(&self) -> &str {
        self.vault.address()
    }

    pub(super) fn bounds(&self) -> RemoteBounds {
        self.bounds
    }

    pub(super) fn in_flight(&self, key_set: &str) -> Arc<tokio::sync::Semaphore> {
        self.in_flight.of(key_set, self.bounds)
    }

    pub(super) fn timed_out(&self) {
        self.health.answered(SERVICE, false, &"a signing call timed out");
    }

    /// Whether Vault answered its last call.
    pub fn is_available(&self) -> bool {
        self.health.is_up()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value, VaultError> {
        self.call_as(method, path, body).await
    }

    /// [`Transit::call`], with the answer read into `T`.
    async fn call_as<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, VaultError> {
        let result = self.vault.authorized_as(method, path, body).await;
        match &result {
            Err(err) if is_outage(err) => self.health.answered(SERVICE, false, err),
            _ => self.health.answered(SERVICE, true, &"answered"),
        }
        result
    }

    /// Makes a non-exportable key for `key_set`; its kid, public half and Transit name.
    pub async fn generate(
        &self,
        key_set: &str,
        algorithm: Algorithm,
        bits: u32,
    ) -> anyhow::Result<(String, PublicKey, String)> {
        let mut random = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
        let name = format!("keyward-{key_set}-{}", URL_SAFE_NO_PAD.encode(random).replace(['-', '_'], "x"));
        let body = json!({"type": key_type(algorithm, bits), "exportable": false, "allow_plaintext_backup": false});
        self.call(reqwest::Method::POST, &format!("{}/keys/{name}", self.mount), &body)
            .await
            .with_context(|| format!("creating Transit key {name} for key set {key_set}"))?;
        let public = self.public(&name, algorithm).await?;
        Ok((public.thumbprint(), public, name))
    }

    /// The public half of Transit key `name` (its first version: keyward never rotates a
    /// Transit key, it makes a new one).
    pub async fn public(&self, name: &str, algorithm: Algorithm) -> anyhow::Result<PublicKey> {
        let answer = self
            .call(reqwest::Method::GET, &format!("{}/keys/{name}", self.mount), &Value::Null)
            .await
            .with_context(|| format!("reading Transit key {name}"))?;
        let data = &answer["data"];
        if data["latest_version"].as_u64() != Some(1) {
            bail!(
                "Transit key {name} was rotated outside keyward (version {}): its kid no longer names it",
                data["latest_version"]
            );
        }
        let Some(text) = data["keys"]["1"]["public_key"].as_str() else {
            bail!("Transit key {name} has no public key (type {})", data["type"]);
        };
        let public = if algorithm == Algorithm::EdDsa {
            let raw = STANDARD.decode(text).context("Transit's Ed25519 public key is not base64")?;
            PublicKey::Okp { crv: "Ed25519".to_owned(), x: URL_SAFE_NO_PAD.encode(raw) }
        } else {
            let der = openssl::pkey::PKey::public_key_from_pem(text.as_bytes())
                .and_then(|key| key.public_key_to_der())
                .with_context(|| format!("Transit key {name}'s public key is not PEM"))?;
            PublicKey::from_spki_der(algorithm, &der)
                .with_context(|| format!("Transit key {name} is not a {algorithm} key"))?
        };
        Ok(public)
    }

    /// The JWS signature of `input` by Transit key `name`.
    pub(super) async fn sign(&self, name: &str, algorithm: Algorithm, input: &[u8]) -> Result<Vec<u8>, RemoteError> {
        let encoded = STANDARD.encode(input);
        let answer: SignAnswer = self
            .call_as(
                reqwest::Method::POST,
                &format!("{}/sign/{name}", self.mount),
                &SignRequest::new(algorithm, &encoded),
            )
            .await
            .map_err(|err| RemoteError::Failed(err.to_string()))?;
        let Some(encoded) = answer.data.signature.strip_prefix("vault:v1:") else {
            return Err(RemoteError::Failed("Transit's answer holds no version-1 signature".to_owned()));
        };
        // `jws` marshaling is base64url; the others are standard base64.
        let decoded = if matches!(algorithm, Algorithm::Es256 | Algorithm::Es384) {
            URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('='))
        } else {
            STANDARD.decode(encoded)
        };
        decoded.map_err(|_| RemoteError::Failed("Transit's signature is not base64".to_owned()))
    }

    /// Deletes Transit key `name` (allowing its deletion first).
    pub async fn destroy(&self, name: &str) -> Result<(), VaultError> {
        let config = format!("{}/keys/{name}/config", self.mount);
        self.call(reqwest::Method::POST, &config, &json!({"deletion_allowed": true})).await?;
        self.call(reqwest::Method::DELETE, &format!("{}/keys/{name}", self.mount), &Value::Null).await?;
        Ok(())
    }

    /// Renews the token when due and checks that Vault answers (at most once a second).
    pub async fn probe(&self) {
        if !self.health.probe_due() {
            return;
        }
        let checked = match self.vault.keep_alive().await {
            Ok(()) => {
                self.vault.authorized(reqwest::Method::GET, "auth/token/lookup-self", &Value::Null).await.map(drop)
            }
            Err(err) => Err(err),
        };
        match checked {
            Ok(()) => self.health.answered(SERVICE, true, &"answered"),
            Err(err) if is_outage(&err) => self.health.answered(SERVICE, false, &err),
            Err(err) => tracing::warn!(service = SERVICE, error = %err, "Vault refused the probe"),
        }
    }

    /// For `check-config`: that the policy lets keyward make, read, sign with and delete
    /// keys under the mount (asked of `sys/capabilities-self`); names what is missing.
    pub async fn check_permissions(&self) -> anyhow::Result<()> {
        let paths = [
            format!("{}/keys/keyward-check", self.mount),
            format!("{}/keys/keyward-check/config", self.mount),
            format!("{}/sign/keyward-check", self.mount),
        ];
        let answer = self
            .call(reqwest::Method::POST, "sys/capabilities-self", &json!({"paths": paths}))
            .await
            .context("[vault]: asking Vault for the token's capabilities")?;
        let needed: [(&str, &[&str]); 3] =
            [(&paths[0], &["update", "read", "delete"]), (&paths[1], &["update"]), (&paths[2], &["update"])];
        let mut missing = Vec::new();
        for (path, capabilities) in needed {
            let held: Vec<&str> =
                answer[path].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            if held.contains(&"root") {
                continue;
            }
            for capability in capabilities {
                if !held.contains(capability) {
                    missing.push(format!("{capability} on {path}"));
                }
            }
        }
        if !missing.is_empty() {
            bail!("[vault]: the token's policy lacks {} (keys are named keyward-*)", missing.join(", "));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit").field("vault", &self.vault).field("mount", &self.mount).finish_non_exhaustive()
    }
}
