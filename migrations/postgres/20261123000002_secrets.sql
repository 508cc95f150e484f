-- Shared secrets of HS256/HS512 profiles, sealed like private keys (AES-256-GCM under the
-- master key whose id sits beside each row). Set with `keyward secrets set PROFILE`.
CREATE TABLE secrets (
    profile        TEXT PRIMARY KEY NOT NULL,
    sealed_secret  BYTEA NOT NULL,
    master_key_id  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
