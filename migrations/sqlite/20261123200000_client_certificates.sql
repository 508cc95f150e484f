-- A client bound to a certificate must present it on the mutual-TLS internal listener:
-- the SHA-256 of its DER encoding, lowercase hex (`keyward clients add --cert-sha256`).
-- A certificate-only client (`--cert-only`) is known by that certificate alone, without a
-- bearer token: one active such client per certificate.
ALTER TABLE clients ADD COLUMN cert_sha256 TEXT;
ALTER TABLE clients ADD COLUMN cert_only INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX one_certificate_only_client_per_certificate ON clients (cert_sha256)
    WHERE cert_only = 1 AND revoked_at IS NULL;
