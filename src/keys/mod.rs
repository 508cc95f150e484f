//! Keys: algorithms, key material and signing, the stored key records and their
//! lifecycle state, the rotation rules and timelines, JWKS documents and public-key export.
//!
//! Key generation, import and HMAC signing go through josekit; the per-token asymmetric
//! signature calls OpenSSL directly on a key parsed once (josekit set up a fresh OpenSSL
//! context for every signature).

mod algorithm;
pub mod custody;
pub mod export;
pub mod gate;
pub mod jwks;
mod material;
pub mod rotation;
pub(crate) mod signing;
mod state;
pub mod timeline;

pub use algorithm::{Algorithm, HmacAlgorithm};
pub use material::{generate, import_pem, GeneratedKey, KeyError, PublicKey};
pub use signing::{SecretKey, SigningKey};
pub use state::{next_change_after, signer_at, KeyRecord, KeyState, Private, Status};
