//! Rows as stored, and their conversion to the records the rest of keyward works with.

use anyhow::Context;

use crate::keys::{Algorithm, KeyRecord};

/// A row of the `keys` table.
#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    kid: String,
    key_set: String,
    algorithm: String,
    public_jwk: String,
    sealed_private: Option<Vec<u8>>,
    master_key_id: Option<String>,
    created_at: i64,
    published_at: Option<i64>,
    activated_at: Option<i64>,
    deactivated_at: Option<i64>,
    retired_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = anyhow::Error;

    fn try_from(row: KeyRow) -> anyhow::Result<KeyRecord> {
        let KeyRow { kid, algorithm, public_jwk, .. } = &row;
        Ok(KeyRecord {
            algorithm: Algorithm::parse(algorithm)
                .with_context(|| format!("key {kid} has unknown algorithm {algorithm:?}"))?,
            public: serde_json::from_str(public_jwk)
                .with_context(|| format!("key {kid} has an unreadable public JWK"))?,
            key_set: row.key_set,
            sealed_private: row.sealed_private,
            master_key_id: row.master_key_id,
            created_at: row.created_at,
            published_at: row.published_at,
            activated_at: row.activated_at,
            deactivated_at: row.deactivated_at,
            retired_at: row.retired_at,
            revoked_at: row.revoked_at,
            kid: row.kid,
        })
    }
}
