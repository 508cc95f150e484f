//! Operating keyward: the issuance ledger, limits, health, metrics, logs, shutdown, backups.
