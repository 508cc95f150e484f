-- Keys held by a PKCS#11 token: the token's label (the private object's label and id are
-- the kid). NULL for sealed keys, and once the key is retired or revoked.
ALTER TABLE keys ADD COLUMN token_label TEXT;
