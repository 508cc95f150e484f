-- Each key stores the instants it signs between: activates_at is written when the key is
-- published as the next key (planned), deactivates_at when its successor is planned. The
-- state at any instant follows from them, so a hand-over needs no write when it happens.
-- Keys stored before keep their past instants; a next key without a planned start is
-- planned by the scheduler. The PostgreSQL twin of the SQLite migration of this version.
DROP INDEX one_current_key_per_set;
ALTER TABLE keys RENAME COLUMN activated_at TO activates_at;
ALTER TABLE keys RENAME COLUMN deactivated_at TO deactivates_at;

-- At most one signing key per set at any instant, whatever any writer does: the signing
-- periods [activates_at, deactivates_at) of a set's keys never overlap (an empty period,
-- a key replaced within the second it started, overlaps nothing).
CREATE FUNCTION keys_signing_periods_never_overlap() RETURNS trigger AS $$
BEGIN
    IF NEW.activates_at IS NOT NULL
        AND (NEW.deactivates_at IS NULL OR NEW.deactivates_at > NEW.activates_at)
        AND EXISTS (
            SELECT 1 FROM keys k
            WHERE k.key_set = NEW.key_set AND k.kid <> NEW.kid AND k.activates_at IS NOT NULL
                AND (k.deactivates_at IS NULL OR k.deactivates_at > k.activates_at)
                AND k.activates_at < COALESCE(NEW.deactivates_at, 9223372036854775807)
                AND NEW.activates_at < COALESCE(k.deactivates_at, 9223372036854775807)
        )
    THEN
        RAISE EXCEPTION 'two keys of a set would sign at the same instant';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER keys_signing_periods_never_overlap
BEFORE INSERT OR UPDATE OF key_set, activates_at, deactivates_at ON keys
FOR EACH ROW EXECUTE FUNCTION keys_signing_periods_never_overlap();
