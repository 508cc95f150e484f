//! The store: what keyward keeps (keys, clients, secrets, the issuance ledger) and the
//! transactions that change it. SQLite is the one implementation; each table's SQL is in
//! `sqlite/<table>.rs`, rows map to records through `rows`.

pub mod rows;
pub mod sqlite;
