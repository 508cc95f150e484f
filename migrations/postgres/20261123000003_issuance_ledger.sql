-- Every issued token: who asked, for whom, with which key, when, and which request claims
-- (names only, never values). Never the token itself.
CREATE TABLE issuance (
    jti         TEXT PRIMARY KEY NOT NULL,
    profile     TEXT NOT NULL,
    client      TEXT NOT NULL,
    sub         TEXT,
    kid         TEXT,
    alg         TEXT NOT NULL,
    iat         BIGINT NOT NULL,
    exp         BIGINT NOT NULL,
    claim_names TEXT NOT NULL
);

CREATE INDEX issuance_by_iat ON issuance (iat);
CREATE INDEX issuance_by_sub ON issuance (sub, iat);
CREATE INDEX issuance_by_kid ON issuance (kid, iat);
CREATE INDEX issuance_by_client ON issuance (client, iat);
