-- Who changed what: one row per administrative change, written in the change's own
-- transaction. Each writer (one process's store) chains its rows: `hash` covers the row
-- and the `prev_hash` of the writer's row before it (see the README's "Audit").
CREATE TABLE events (
    writer     TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    action     TEXT NOT NULL,
    object     TEXT NOT NULL,
    before     TEXT,
    after      TEXT,
    reason     TEXT,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    PRIMARY KEY (writer, seq)
);

CREATE INDEX events_by_at ON events (at);
