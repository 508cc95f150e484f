-- SQLite keeps the ledger in one table (appends stay local: time-ordered jti, a page cache
-- for the writer; pruning goes in short batches): only the horizon is new.
-- Rows issued before `kept_from` may have been pruned; every row from it on is kept. Written
-- before the rows go, so a reader (an audit, a chain check) knows where the kept history starts.
CREATE TABLE issuance_horizon (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    kept_from INTEGER NOT NULL
) STRICT;
