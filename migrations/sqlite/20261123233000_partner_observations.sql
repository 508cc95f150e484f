-- JWKS fetches by configured partners, recorded in batches by every server, so that each
-- replica sees what the others observed.

-- Fetches, aggregated per flush: who, from where, which document (ETag), how many, when.
CREATE TABLE partner_fetches (
    partner  TEXT NOT NULL,
    key_set  TEXT NOT NULL,
    address  TEXT NOT NULL,
    etag     TEXT NOT NULL,
    count    INTEGER NOT NULL,
    first_at INTEGER NOT NULL,
    last_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX partner_fetches_by_time ON partner_fetches (partner, last_at);

-- The keys each partner holds: it fetched (or confirmed with a 304) a JWKS holding them.
-- first_seen never moves once written: a gated hand-over computed from it is the same in
-- every process and at every later instant.
CREATE TABLE partner_holdings (
    partner    TEXT NOT NULL,
    key_set    TEXT NOT NULL,
    kid        TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (partner, key_set, kid)
) STRICT;

-- Fetches that matched no partner, per user agent, so that an operator can find partners.
CREATE TABLE unmatched_fetches (
    user_agent TEXT PRIMARY KEY NOT NULL,
    count      INTEGER NOT NULL,
    last_at    INTEGER NOT NULL
) STRICT;

-- Gated hand-overs as they happened: confirmed (every gating partner held the key) or not
-- (the wait ran out and the gate proceeded), with the partners that had not fetched it.
CREATE TABLE gated_handovers (
    kid       TEXT PRIMARY KEY NOT NULL,
    key_set   TEXT NOT NULL,
    at        INTEGER NOT NULL,
    confirmed INTEGER NOT NULL,
    missing   TEXT NOT NULL
) STRICT;
