-- Administrative permissions beside `admin` (which holds them all): a JSON array of their
-- written forms, e.g. ["keys:rotate=payments", "partners:read"].
ALTER TABLE clients ADD COLUMN permissions TEXT NOT NULL DEFAULT '[]';
-- Bumped by every change that withdraws a credential or a right (revocation, rotation
-- without grace, a change of profiles or permissions): the ledger refuses a row whose
-- request was authenticated under an older generation.
ALTER TABLE clients ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
-- A client bound to a workload identity: 'ISSUER|SUBJECT', the subject exact or ending
-- in '*' (a prefix), authenticated by a JWT of an [[identity_provider]].
ALTER TABLE clients ADD COLUMN identity TEXT;
