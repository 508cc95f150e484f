-- A client bound to a certificate must present it on the mutual-TLS internal listener:
-- the SHA-256 of its DER encoding, lowercase hex (`keyward clients add --cert-sha256`).
ALTER TABLE clients ADD COLUMN cert_sha256 TEXT;
