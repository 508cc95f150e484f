-- The ledger's chains, one per ledger writer (rows written before them have none).
ALTER TABLE issuance ADD COLUMN writer TEXT;
ALTER TABLE issuance ADD COLUMN seq BIGINT;
ALTER TABLE issuance ADD COLUMN prev_hash TEXT;
ALTER TABLE issuance ADD COLUMN hash TEXT;
-- Not UNIQUE: the ledger is partitioned by day, and a unique index on it would have to
-- include the day. `audit verify` finds a seq written twice.
CREATE INDEX issuance_by_writer ON issuance (writer, seq);
