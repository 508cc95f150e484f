-- Signing keys. The private half is sealed (AES-256-GCM) under the master key whose id
-- sits beside it; it is NULL once the key is retired. A key's state follows from its
-- timestamps (Unix seconds). The PostgreSQL twin of the SQLite migration of this version.
CREATE TABLE keys (
    kid            TEXT PRIMARY KEY NOT NULL,
    key_set        TEXT NOT NULL,
    algorithm      TEXT NOT NULL,
    public_jwk     TEXT NOT NULL,
    sealed_private BYTEA,
    master_key_id  TEXT,
    created_at     BIGINT NOT NULL,
    published_at   BIGINT,
    activated_at   BIGINT,
    deactivated_at BIGINT,
    retired_at     BIGINT,
    revoked_at     BIGINT,
    CHECK ((sealed_private IS NULL) = (master_key_id IS NULL))
);

CREATE INDEX keys_by_set ON keys (key_set, created_at);

-- At most one signing key per set, whatever any writer does.
CREATE UNIQUE INDEX one_current_key_per_set ON keys (key_set)
    WHERE activated_at IS NOT NULL AND deactivated_at IS NULL AND revoked_at IS NULL;

-- Internal API clients. Only a SHA-256 hash of each token's secret part is kept.
CREATE TABLE clients (
    name       TEXT PRIMARY KEY NOT NULL,
    token_id   TEXT NOT NULL UNIQUE,
    token_hash BYTEA NOT NULL,
    profiles   TEXT NOT NULL,
    admin      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- Bumped in the same transaction as every change to keys, clients or secrets (which
-- also notifies the channel keyward_changes), so that every replica notices.
CREATE TABLE state_version (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO state_version (id, generation) VALUES (1, 0);
