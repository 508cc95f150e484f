-- The keyring: the data keys ("terms") that seal private keys and shared secrets, kept as
-- one record sealed under the master key. The `master_key_id` of a keys or secrets row
-- names the term key that sealed it. Rotating the master key rewrites this record only; a
-- re-seal adds a term, re-encrypts every row under it and drops the older terms.
CREATE TABLE keyring (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    -- Which master key seals the record, and from which kind of source.
    root_key_id  TEXT NOT NULL,
    root_source  TEXT NOT NULL,
    -- The terms, sealed under the master key, bound to root_key_id and term_ids.
    sealed_terms BYTEA NOT NULL,
    -- "NUMBER:ID,..." oldest first; the last one seals new material.
    term_ids     TEXT NOT NULL,
    -- 'compact' while a finished re-seal still has to clear old bytes from the files.
    reseal_state TEXT,
    created_at   BIGINT NOT NULL,
    rotated_at   BIGINT NOT NULL
);
