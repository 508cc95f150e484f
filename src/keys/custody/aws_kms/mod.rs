//! AWS KMS custody: keys created in KMS (`SIGN_VERIFY`, tagged with the key set and kid),
//! the public half from `GetPublicKey` checked against the kid, signatures by `Sign`
//! (ECDSA's DER converted to JWS `r || s`), revoke disabling the key at once and both
//! revoke and retire scheduling its deletion. Credentials come from the standard AWS chain
//! through the official SDK, over rustls on ring.

use std::sync::Arc;

use anyhow::{bail, Context};
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{DisplayErrorContext, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag};
use aws_sdk_kms::Client;
use openssl::ecdsa::EcdsaSig;

use super::remote::{Health, InFlight, RemoteBounds, RemoteError};
use crate::keys::signing::ecdsa_to_jose;
use crate::keys::{Algorithm, PublicKey};

const SERVICE: &str = "aws-kms";

/// KMS's largest `RAW` message; a longer signing input is hashed here and sent as `DIGEST`.
const RAW_LIMIT: usize = 4096;

/// The shortest waiting period KMS allows before deleting a key (days).
pub const DELETION_WINDOW_DAYS: i32 = 7;

/// Where KMS is, as configured (`[aws_kms]`); credentials come from the AWS chain.
#[derive(Debug, Clone)]
pub struct KmsSettings {
    /// The region, when not the chain's.
    pub region: Option<String>,
    /// Another endpoint than the region's.
    pub endpoint: Option<String>,
}

/// A KMS client with working credentials.
pub struct Kms {
    client: Client,
    bounds: RemoteBounds,
    health: Health,
    in_flight: InFlight,
}

fn key_spec(algorithm: Algorithm, bits: u32) -> anyhow::Result<KeySpec> {
    Ok(match (algorithm, bits) {
        (Algorithm::Rs256, 2048) => KeySpec::Rsa2048,
        (Algorithm::Rs256, 3072) => KeySpec::Rsa3072,
        (Algorithm::Rs256, 4096) => KeySpec::Rsa4096,
        (Algorithm::Es256, _) => KeySpec::EccNistP256,
        (Algorithm::Es384, _) => KeySpec::EccNistP384,
        _ => bail!("{algorithm} keys ({bits} bits) are not kept in AWS KMS"),
    })
}

fn signing_algorithm(algorithm: Algorithm) -> Result<SigningAlgorithmSpec, RemoteError> {
    match algorithm {
        Algorithm::Rs256 => Ok(SigningAlgorithmSpec::RsassaPkcs1V15Sha256),
        Algorithm::Es256 => Ok(SigningAlgorithmSpec::EcdsaSha256),
        Algorithm::Es384 => Ok(SigningAlgorithmSpec::EcdsaSha384),
        other => Err(RemoteError::Failed(format!("{other} keys are not kept in AWS KMS"))),
    }
}

/// Whether `err` says KMS is down or failing (rather than refusing one request).
fn is_outage<E>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => service.raw().status().is_server_error(),
        _ => false,
    }
}

fn tag(key: &str, value: &str) -> anyhow::Result<Tag> {
    Tag::builder().tag_key(key).tag_value(value).build().context("building a KMS tag")
}

impl Kms {
    /// A client for `settings`, its credentials resolved and KMS asked once (`ListKeys`):
    /// start-up refuses to go on when this fails, naming the cause.
    pub async fn open(settings: KmsSettings, bounds: RemoteBounds) -> anyhow::Result<Arc<Self>> {
        use aws_sdk_kms::config::ProvideCredentials;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        // Stalled-stream protection polls a throughput check beside every request and answer
        // body: work on each signature for bodies of a few hundred bytes (a signing call is
        // bounded by `sign_timeout_ms` as a whole).
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .stalled_stream_protection(aws_sdk_kms::config::StalledStreamProtectionConfig::disabled());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let config = loader.load().await;
        if config.region().is_none() {
            bail!("[aws_kms] ({SERVICE} custody): no region: set region, or AWS_REGION");
        }
        let Some(credentials) = config.credentials_provider() else {
            bail!("[aws_kms] ({SERVICE} custody): no AWS credentials provider");
        };
        credentials.provide_credentials().await.map_err(|err| {
            anyhow::anyhow!(
                "[aws_kms] ({SERVICE} custody): no AWS credentials: {}: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web identity (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE) \
                 or run with an instance role",
                DisplayErrorContext(&err)
            )
        })?;
        let kms =
            Kms { client: Client::new(&config), bounds, health: Health::default(), in_flight: InFlight::default() };
        let where_ = settings.endpoint.clone().unwrap_or_else(|| "the region's endpoint".to_owned());
        kms.client.list_keys().limit(1).send().await.map_err(|err| {
            anyhow::anyhow!(
                "[aws_kms] ({SERVICE} custody): KMS at {where_} refused ListKeys: {}",
                DisplayErrorContext(&err)
            )
        })?;
        Ok(Arc::new(kms))
    }

    pub(in crate::keys::custody) fn bounds(&self) -> RemoteBounds {
        self.bounds
    }

    pub(in crate::keys::custody) fn in_flight(&self, key_set: &str) -> Arc<tokio::sync::Semaphore> {
        self.in_flight.of(key_set, self.bounds)
    }

    pub(in crate::keys::custody) fn timed_out(&self) {
        self.health.answered(SERVICE, false, &"a signing call timed out");
    }

    /// Whether KMS answered its last call.
    pub fn is_available(&self) -> bool {
        self.health.is_up()
    }

    fn answered<T, E>(&self, result: &Result<T, SdkError<E, HttpResponse>>)
    where
        E: std::error::Error + 'static,
    {
        match result {
            Err(err) if is_outage(err) => self.health.answered(SERVICE, false, &DisplayErrorContext(err)),
            _ => self.health.answered(SERVICE, true, &"answered"),
        }
    }

    /// Creates a key for `key_set`; its kid, public half and ARN.
    pub async fn generate(
        &self,
        key_set: &str,
        algorithm: Algorithm,
        bits: u32,
    ) -> anyhow::Result<(String, PublicKey, String)> {
        let created = self
            .client
            .create_key()
            .key_spec(key_spec(algorithm, bits)?)
            .key_usage(KeyUsageType::SignVerify)
            .description(format!("keyward key set {key_set}"))
            .tags(tag("keyward:key-set", key_set)?)
            .send()
            .await;
        self.answered(&created);
        let created = created.map_err(|err| anyhow::anyhow!("KMS CreateKey: {}", DisplayErrorContext(&err)))?;
        let Some(arn) = created.key_metadata().and_then(|m| m.arn()).map(str::to_owned) else {
            bail!("KMS CreateKey answered without the key's ARN");
        };
        let made = async {
            let public = self.public(&arn, algorithm).await?;
            let kid = public.thumbprint();
            let tagged = self.client.tag_resource().key_id(&arn).tags(tag("keyward:kid", &kid)?).send().await;
            self.answered(&tagged);
            tagged.map_err(|err| anyhow::anyhow!("KMS TagResource: {}", DisplayErrorContext(&err)))?;
            Ok::<_, anyhow::Error>((kid, public))
        };
        match made.await {
            Ok((kid, public)) => Ok((kid, public, arn)),
            Err(err) => {
                // A key nobody will use: gone after the waiting period.
                self.destroy(&arn, true).await.ok();
                Err(err)
            }
        }
    }

    /// The public half of key `arn`, from `GetPublicKey`.
    pub async fn public(&self, arn: &str, algorithm: Algorithm) -> anyhow::Result<PublicKey> {
        let answer = self.client.get_public_key().key_id(arn).send().await;
        self.answered(&answer);
        let answer =
            answer.map_err(|err| anyhow::anyhow!("KMS GetPublicKey of {arn}: {}", DisplayErrorContext(&err)))?;
        let Some(der) = answer.public_key() else { bail!("KMS GetPublicKey of {arn} answered without the key") };
        PublicKey::from_spki_der(algorithm, der.as_ref())
            .with_context(|| format!("KMS key {arn} is not a {algorithm} key"))
    }

    /// The JWS signature of `input` by key `arn`: the input itself while KMS takes it
    /// (`RAW`), its hash beyond (`DIGEST`).
    pub(in crate::keys::custody) async fn sign(
        &self,
        arn: &str,
        algorithm: Algorithm,
        input: &[u8],
    ) -> Result<Vec<u8>, RemoteError> {
        let (message, kind) = if input.len() <= RAW_LIMIT {
            (input.to_vec(), MessageType::Raw)
        } else {
            (algorithm.hash(input), MessageType::Digest)
        };
        let answer = self
            .client
            .sign()
            .key_id(arn)
            .message(Blob::new(message))
            .message_type(kind)
            .signing_algorithm(signing_algorithm(algorithm)?)
            .send()
            .await;
        self.answered(&answer);
        let answer = answer.map_err(|err| RemoteError::Failed(format!("KMS Sign: {}", DisplayErrorContext(&err))))?;
        let Some(signature) = answer.signature() else {
            return Err(RemoteError::Failed("KMS Sign answered without a signature".to_owned()));
        };
        match algorithm {
            Algorithm::Es256 | Algorithm::Es384 => {
                let width = if algorithm == Algorithm::Es256 { 32 } else { 48 };
                let der = EcdsaSig::from_der(signature.as_ref())
                    .map_err(|_| RemoteError::Failed("KMS's ECDSA signature is not DER".to_owned()))?;
                ecdsa_to_jose(&der, width).map_err(|err| RemoteError::Failed(err.to_string()))
            }
            _ => Ok(signature.as_ref().to_vec()),
        }
    }

    /// Schedules key `arn`'s deletion after KMS's shortest waiting period; a revoked key is
    /// disabled first, so that it stops signing at once.
    pub async fn destroy(&self, arn: &str, revoked: bool) -> anyhow::Result<()> {
        // By key id (the ARN's last part, same account and region): KMS takes either, moto
        // 5.2 fails DisableKey given an ARN.
        let key_id = arn.rsplit('/').next().unwrap_or(arn);
        if revoked {
            let disabled = self.client.disable_key().key_id(key_id).send().await;
            self.answered(&disabled);
            disabled.map_err(|err| anyhow::anyhow!("KMS DisableKey: {}", DisplayErrorContext(&err)))?;
        }
        let scheduled = self
            .client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(DELETION_WINDOW_DAYS)
            .send()
            .await;
        self.answered(&scheduled);
        scheduled.map_err(|err| anyhow::anyhow!("KMS ScheduleKeyDeletion: {}", DisplayErrorContext(&err)))?;
        Ok(())
    }

    /// Checks that KMS answers (at most once a second).
    pub async fn probe(&self) {
        if self.health.probe_due() {
            let answer = self.client.list_keys().limit(1).send().await;
            self.answered(&answer);
        }
    }

    /// For `check-config`: that key `arn` is enabled and can sign.
    pub async fn check_key(&self, arn: &str) -> anyhow::Result<()> {
        let answer = self.client.describe_key().key_id(arn).send().await;
        let answer =
            answer.map_err(|err| anyhow::anyhow!("KMS DescribeKey of {arn}: {}", DisplayErrorContext(&err)))?;
        let state = answer.key_metadata().and_then(|m| m.key_state()).cloned();
        if state != Some(KeyState::Enabled) {
            bail!("KMS key {arn} is {state:?}, not enabled");
        }
        Ok(())
    }
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms").finish_non_exhaustive()
    }
}
