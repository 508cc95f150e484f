-- `keyward clients rotate --grace`: the token replaced last stays valid until
-- previous_token_until (Unix seconds); both parts are kept as for the current token.
ALTER TABLE clients ADD COLUMN previous_token_id TEXT;
ALTER TABLE clients ADD COLUMN previous_token_hash BLOB;
ALTER TABLE clients ADD COLUMN previous_token_until INTEGER;
CREATE UNIQUE INDEX clients_previous_token_id ON clients (previous_token_id);
