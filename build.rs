//! Rebuild when a migration is added: `sqlx::migrate!` embeds the folder at compile time
//! and would otherwise keep a stale list (as sqlx's documentation recommends).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
