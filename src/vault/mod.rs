//! A small client of HashiCorp Vault / OpenBao: the address, an optional namespace and CA
//! file, a token (from a file or a variable, renewed before it expires) or an AppRole
//! login, and the Transit engine's encrypt and decrypt. Tokens never reach a log line,
//! `Debug` or an error.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// How long one call to Vault may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How keyward proves itself to Vault.
pub enum VaultAuth {
    /// A token read from this file (re-read when it is renewed: an agent may replace it).
    TokenFile(PathBuf),
    /// A token given in a variable, read once.
    Token(Zeroizing<String>),
    /// An AppRole login (`auth/<mount>/login`).
    AppRole {
        /// The mount of the AppRole method (default `approle`).
        mount: String,
        /// The role id (not a secret on its own).
        role_id: String,
        /// The file holding the secret id.
        secret_id_file: PathBuf,
    },
}

/// Where Vault is and how to log in.
pub struct VaultSettings {
    /// `https://vault.example:8200`.
    pub address: String,
    /// Vault Enterprise / OpenBao namespace, if any.
    pub namespace: Option<String>,
    /// A CA file (PEM) to trust for Vault's certificate, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// The login.
    pub auth: VaultAuth,
}

/// Why a call to Vault failed. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No answer (down, unreachable, TLS refused).
    #[error("Vault at {address} does not answer: {reason}")]
    Unreachable {
        /// The configured address.
        address: String,
        /// What the connection said.
        reason: String,
    },
    /// Vault answered with an error.
    #[error("Vault refused {what} ({status}): {errors}")]
    Refused {
        /// What was asked.
        what: String,
        /// The HTTP status.
        status: u16,
        /// Vault's `errors`.
        errors: String,
    },
    /// A setting could not be used.
    #[error("Vault settings: {0}")]
    Settings(String),
}

/// A token and when to renew it.
struct Lease {
    token: Zeroizing<String>,
    /// `None`: it does not expire (or cannot be renewed: used until refused).
    renew_at: Option<Instant>,
    renewable: bool,
}

/// A logged-in Vault client; cheap to share behind an `Arc`.
pub struct Vault {
    settings: VaultSettings,
    /// The CA file's certificate, read once.
    ca: Option<reqwest::Certificate>,
    /// Which Vault client this is, for [`CLIENTS`].
    id: u64,
    lease: tokio::sync::Mutex<Option<Lease>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Each thread's HTTP client of each [`Vault`]. A pooled connection is driven by a task
    /// on the runtime that opened it, so one pool shared by the actix workers (each its own
    /// runtime) hands a call on another worker's connection to that worker's thread and back:
    /// two thread wake-ups per call. A pool per thread keeps each call on its caller's thread.
    static CLIENTS: RefCell<Vec<(u64, reqwest::Client)>> = const { RefCell::new(Vec::new()) };
}

impl Vault {
    /// A client for `settings` (not yet logged in: see [`Vault::login`]).
    pub fn new(settings: VaultSettings) -> Result<Self, VaultError> {
        let ca = match &settings.ca_file {
            Some(file) => {
                let pem = std::fs::read(file)
                    .map_err(|e| VaultError::Settings(format!("cannot read the CA file {}: {e}", file.display())))?;
                let ca = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| VaultError::Settings(format!("the CA file {} is not PEM: {e}", file.display())))?;
                Some(ca)
            }
            None => None,
        };
        let vault =
            Vault { settings, ca, id: NEXT_ID.fetch_add(1, Ordering::Relaxed), lease: tokio::sync::Mutex::new(None) };
        // A client that cannot be built is a settings error, found now rather than at a call.
        vault.http()?;
        Ok(vault)
    }

    /// This thread's HTTP client (see [`CLIENTS`]), made on the thread's first call.
    fn http(&self) -> Result<reqwest::Client, VaultError> {
        CLIENTS.with_borrow_mut(|clients| {
            if let Some((_, client)) = clients.iter().find(|(id, _)| *id == self.id) {
                return Ok(client.clone());
            }
            let mut builder = reqwest::Client::builder().timeout(CALL_TIMEOUT);
            if let Some(ca) = &self.ca {
                builder = builder.add_root_certificate(ca.clone());
            }
            let client = builder.build().map_err(|e| VaultError::Settings(e.to_string()))?;
            clients.push((self.id, client.clone()));
            Ok(client)
        })
    }

    /// The configured address.
    pub fn address(&self) -> &str {
        &self.settings.address
    }

    /// Logs in (or checks the token) now: start-up refuses to go on when this fails.
    pub async fn login(&self) -> Result<(), VaultError> {
        let lease = self.fresh_lease().await?;
        *self.lease.lock().await = Some(lease);
        Ok(())
    }

    /// Renews the token when two thirds of its time are gone (or logs in again). Call it
    /// often; it asks Vault only when due.
    pub async fn keep_alive(&self) -> Result<(), VaultError> {
        self.token().await.map(drop)
    }

    /// A token valid now, renewed or replaced when due.
    async fn token(&self) -> Result<Zeroizing<String>, VaultError> {
        let mut lease = self.lease.lock().await;
        let due = lease.as_ref().is_none_or(|l| l.renew_at.is_some_and(|at| Instant::now() >= at));
        if due {
            let next = match (lease.as_ref(), &self.settings.auth) {
                (Some(current), VaultAuth::Token(_) | VaultAuth::TokenFile(_)) if current.renewable => {
                    match self.renew(&current.token).await {
                        Ok(renewed) => renewed,
                        // A file may hold a newer token (an agent renews or replaces it).
                        Err(err) if matches!(self.settings.auth, VaultAuth::TokenFile(_)) => {
                            tracing::debug!(error = %err, "renewing the Vault token failed; reading the token file");
                            self.fresh_lease().await?
                        }
                        Err(err) => return Err(err),
                    }
                }
                _ => self.fresh_lease().await?,
            };
            *lease = Some(next);
        }
        lease.as_ref().map(|l| l.token.clone()).ok_or_else(|| VaultError::Settings("no Vault token".to_owned()))
    }

    /// A token from the configured login, with its time to live looked up.
    async fn fresh_lease(&self) -> Result<Lease, VaultError> {
        let token = match &self.settings.auth {
            VaultAuth::Token(token) => token.clone(),
            VaultAuth::TokenFile(file) => {
                let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
                    VaultError::Settings(format!("cannot read the Vault token file {}: {e}", file.display()))
                })?);
                Zeroizing::new(text.trim().to_owned())
            }
            VaultAuth::AppRole { mount, role_id, secret_id_file } => {
                let secret = Zeroizing::new(std::fs::read_to_string(secret_id_file).map_err(|e| {
                    VaultError::Settings(format!(
                        "cannot read the AppRole secret id file {}: {e}",
                        secret_id_file.display()
                    ))
                })?);
                let body = json!({"role_id": role_id, "secret_id": secret.trim()});
                let answer: Value =
                    self.call(reqwest::Method::POST, &format!("auth/{mount}/login"), None, Some(&body)).await?;
                return lease_of(&answer["auth"], "client_token", "lease_duration");
            }
        };
        let answer: Value =
            self.call(reqwest::Method::GET, "auth/token/lookup-self", Some(&token), None::<&Value>).await?;
        let data = &answer["data"];
        let ttl = data["ttl"].as_u64().unwrap_or(0);
        Ok(Lease { token, renew_at: renew_at(ttl), renewable: data["renewable"].as_bool().unwrap_or(false) })
    }

    async fn renew(&self, token: &Zeroizing<String>) -> Result<Lease, VaultError> {
        let answer: Value =
            self.call(reqwest::Method::POST, "auth/token/renew-self", Some(token), Some(&json!({}))).await?;
        let mut lease = lease_of(&answer["auth"], "client_token", "lease_duration")?;
        lease.token = token.clone();
        tracing::debug!("renewed the Vault token");
        Ok(lease)
    }

    /// `POST /v1/<mount>/encrypt/<key>`: Transit's ciphertext (`vault:v1:...`) of `plaintext`.
    pub async fn transit_encrypt(&self, mount: &str, key: &str, plaintext: &[u8]) -> Result<String, VaultError> {
        let encoded = Zeroizing::new(STANDARD.encode(plaintext));
        let body = json!({"plaintext": encoded.as_str()});
        let answer = self.authorized(reqwest::Method::POST, &format!("{mount}/encrypt/{key}"), &body).await?;
        answer["data"]["ciphertext"].as_str().map(str::to_owned).ok_or_else(|| bad(&format!("{mount}/encrypt/{key}")))
    }

    /// `POST /v1/<mount>/decrypt/<key>`: the plaintext of a Transit ciphertext.
    pub async fn transit_decrypt(
        &self,
        mount: &str,
        key: &str,
        ciphertext: &str,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let what = format!("{mount}/decrypt/{key}");
        let answer = self.authorized(reqwest::Method::POST, &what, &json!({"ciphertext": ciphertext})).await?;
        let encoded = Zeroizing::new(answer["data"]["plaintext"].as_str().ok_or_else(|| bad(&what))?.to_owned());
        STANDARD.decode(encoded.as_bytes()).map(Zeroizing::new).map_err(|_| bad(&what))
    }

    /// A call with the current token; one retry with a fresh login if Vault refuses the token.
    pub async fn authorized(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value, VaultError> {
        self.authorized_as(method, path, body).await
    }

    /// [`Vault::authorized`], with the answer read into `T`.
    pub async fn authorized_as<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, VaultError> {
        let token = self.token().await?;
        match self.call(method.clone(), path, Some(&token), Some(body)).await {
            Err(VaultError::Refused { status: 403, .. }) => {
                *self.lease.lock().await = None;
                let token = self.token().await?;
                self.call(method, path, Some(&token), Some(body)).await
            }
            other => other,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&Zeroizing<String>>,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, VaultError> {
        let url = format!("{}/v1/{path}", self.settings.address.trim_end_matches('/'));
        let mut request = self.http()?.request(method, &url);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token.as_str());
        }
        if let Some(namespace) = &self.settings.namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| VaultError::Unreachable { address: self.settings.address.clone(), reason: without_url(&e) })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let errors = answer["errors"].as_array().map_or_else(
                || "no detail".to_owned(),
                |e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "),
            );
            return Err(VaultError::Refused { what: path.to_owned(), status, errors });
        }
        // An empty answer (204) reads as JSON null.
        let text: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(text).map_err(|_| bad(path))
    }
}

fn bad(what: &str) -> VaultError {
    VaultError::Refused { what: what.to_owned(), status: 200, errors: "the answer lacks the expected data".to_owned() }
}

/// A lease from an `auth` block.
fn lease_of(auth: &Value, token_field: &str, ttl_field: &str) -> Result<Lease, VaultError> {
    let token = auth[token_field].as_str().ok_or_else(|| bad("a login"))?;
    let ttl = auth[ttl_field].as_u64().unwrap_or(0);
    Ok(Lease {
        token: Zeroizing::new(token.to_owned()),
        renew_at: renew_at(ttl),
        renewable: auth["renewable"].as_bool().unwrap_or(false),
    })
}

/// When two thirds of `ttl` seconds are gone; never for a token that does not expire.
fn renew_at(ttl: u64) -> Option<Instant> {
    (ttl > 0).then(|| Instant::now() + Duration::from_millis(ttl * 1000 * 2 / 3))
}

/// reqwest's error and its causes (the URL holds the address only, never the token).
fn without_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("address", &self.settings.address).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_time_and_never_for_tokens_that_do_not_expire() {
        assert!(renew_at(0).is_none());
        let at = renew_at(30).unwrap();
        let left = at.duration_since(Instant::now());
        assert!(left > Duration::from_secs(19) && left <= Duration::from_secs(20), "{left:?}");
    }
}
