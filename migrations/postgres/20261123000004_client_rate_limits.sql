-- Per-client rate limits; NULL means the server default ([server] rate_limit, rate_burst).
ALTER TABLE clients ADD COLUMN rate_limit BIGINT;
ALTER TABLE clients ADD COLUMN rate_burst BIGINT;
