-- Signing keys. The private half is sealed (AES-256-GCM) under the master key whose id
-- sits beside it; it is NULL once the key is retired. A key's state follows from its
-- timestamps (Unix seconds): see keystore::KeyState.
CREATE TABLE keys (
    kid            TEXT PRIMARY KEY NOT NULL,
    key_set        TEXT NOT NULL,
    algorithm      TEXT NOT NULL,
    public_jwk     TEXT NOT NULL,
    sealed_private BLOB,
    master_key_id  TEXT,
    created_at     INTEGER NOT NULL,
    published_at   INTEGER,
    activated_at   INTEGER,
    deactivated_at INTEGER,
    retired_at     INTEGER,
    revoked_at     INTEGER,
    CHECK ((sealed_private IS NULL) = (master_key_id IS NULL))
) STRICT;

CREATE INDEX keys_by_set ON keys (key_set, created_at);

-- At most one signing key per set, whatever any writer does.
CREATE UNIQUE INDEX one_current_key_per_set ON keys (key_set)
    WHERE activated_at IS NOT NULL AND deactivated_at IS NULL AND revoked_at IS NULL;

-- Internal API clients. Only a SHA-256 hash of each token's secret part is kept.
CREATE TABLE clients (
    name       TEXT PRIMARY KEY NOT NULL,
    token_id   TEXT NOT NULL UNIQUE,
    token_hash BLOB NOT NULL,
    profiles   TEXT NOT NULL,
    admin      INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;

-- Bumped in the same transaction as every change to keys or clients, so that running
-- servers notice changes made by another process (CLI or a second server).
CREATE TABLE state_version (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
) STRICT;
INSERT INTO state_version (id, generation) VALUES (1, 0);
