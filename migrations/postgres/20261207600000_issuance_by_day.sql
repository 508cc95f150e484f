-- The ledger partitioned by UTC day of `iat`: inserts land in one small day's table and its
-- indexes (a flat cost however long the ledger grows), and pruning drops whole expired days.
--
-- The old table (unless empty) becomes the partition of everything before tomorrow (the "legacy" partition),
-- read through `issuance` like any day and dropped once it has all expired. Its indexes are
-- kept as they are: the moves below are catalogue changes, plus one read of the old table to
-- check its bound (no row is rewritten, no index rebuilt).
--
-- The parent has no key of its own (PostgreSQL would need `iat` in it, and then a rebuilt
-- index on the old table): every day's table has a unique index on `jti` (the old table keeps
-- its primary key), which the planner uses for lookups by `jti` across days.
ALTER TABLE issuance RENAME TO issuance_legacy;
ALTER INDEX issuance_by_iat RENAME TO issuance_legacy_by_iat;
ALTER INDEX issuance_by_sub RENAME TO issuance_legacy_by_sub;
ALTER INDEX issuance_by_kid RENAME TO issuance_legacy_by_kid;
ALTER INDEX issuance_by_client RENAME TO issuance_legacy_by_client;

CREATE TABLE issuance (
    jti         TEXT NOT NULL,
    profile     TEXT NOT NULL,
    client      TEXT NOT NULL,
    sub         TEXT,
    kid         TEXT,
    alg         TEXT NOT NULL,
    iat         BIGINT NOT NULL,
    exp         BIGINT NOT NULL,
    claim_names TEXT NOT NULL
) PARTITION BY RANGE (iat);

CREATE INDEX issuance_by_iat ON issuance (iat);
CREATE INDEX issuance_by_sub ON issuance (sub, iat);
CREATE INDEX issuance_by_kid ON issuance (kid, iat);
CREATE INDEX issuance_by_client ON issuance (client, iat);

DO $$
DECLARE
    tomorrow BIGINT := (floor(extract(epoch FROM now()) / 86400) + 1)::BIGINT * 86400;
BEGIN
    IF EXISTS (SELECT 1 FROM issuance_legacy) THEN
        EXECUTE format('ALTER TABLE issuance ATTACH PARTITION issuance_legacy FOR VALUES FROM (MINVALUE) TO (%s)', tomorrow);
    ELSE
        DROP TABLE issuance_legacy;
    END IF;
END
$$;

-- Rows issued before `kept_from` may have been pruned; every row from it on is kept. Written
-- before the rows go, so a reader (an audit, a chain check) knows where the kept history starts.
CREATE TABLE issuance_horizon (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    kept_from BIGINT NOT NULL
);
