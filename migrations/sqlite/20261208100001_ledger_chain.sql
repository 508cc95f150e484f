-- The ledger's chains, one per ledger writer (rows written before them have none).
ALTER TABLE issuance ADD COLUMN writer TEXT;
ALTER TABLE issuance ADD COLUMN seq INTEGER;
ALTER TABLE issuance ADD COLUMN prev_hash TEXT;
ALTER TABLE issuance ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX issuance_by_writer ON issuance (writer, seq);
