//! `database_url`: which store keyward keeps its state in.

use std::fmt;
use std::path::PathBuf;

use super::database_file;

/// Connections a PostgreSQL store opens at most, per process, unless the URL says
/// `pool_size=N` (plus one that listens for changes).
pub const DEFAULT_POOL_SIZE: u32 = 10;

/// Where keyward keeps its state, as parsed from `database_url`.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server.
    Postgres(PostgresUrl),
}

impl Database {
    /// `postgres://` or `postgresql://` selects PostgreSQL; anything else is a SQLite file.
    pub fn parse(url: &str) -> Result<Database, String> {
        if is_postgres(url) {
            PostgresUrl::parse(url).map(Database::Postgres)
        } else {
            database_file(url).map(Database::Sqlite)
        }
    }
}

/// Whether `url` names a PostgreSQL server.
pub(super) fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl fmt::Display for Database {
    /// For messages and logs: never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Database({self})")
    }
}

/// A PostgreSQL URL as libpq takes it (`sslmode`, `sslrootcert`, ... included), with
/// keyward's own `pool_size` taken out. Shown without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    pool_size: u32,
}

impl PostgresUrl {
    fn parse(url: &str) -> Result<PostgresUrl, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut pool_size = DEFAULT_POOL_SIZE;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.strip_prefix("pool_size=") {
                Some(n) => {
                    pool_size = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("pool_size={n:?} in the PostgreSQL URL is not a whole number above 0")
                    })?;
                }
                None => kept.push(pair),
            }
        }
        let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        url.parse::<sqlx::postgres::PgConnectOptions>()
            .map_err(|err| format!("{} is not a PostgreSQL URL keyward can use: {err}", redact(&url)))?;
        Ok(PostgresUrl { url, pool_size })
    }

    /// The URL for sqlx and libpq (with its password, if it has one).
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL without its password, and the password (percent-decoded), for tools such as
    /// `pg_dump` that take the password from the environment rather than the command line.
    pub fn split_password(&self) -> (String, Option<String>) {
        match user_info(&self.url) {
            Some((scheme, name, Some(password), rest)) => {
                (format!("{scheme}://{name}@{rest}"), Some(percent_decode(password)))
            }
            _ => (self.url.clone(), None),
        }
    }

    /// Connections the pool opens at most.
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

/// `url` with the password of its user part replaced by `***`.
fn redact(url: &str) -> String {
    match user_info(url) {
        Some((scheme, name, Some(_), rest)) => format!("{scheme}://{name}:***@{rest}"),
        _ => url.to_owned(),
    }
}

/// A URL's scheme, user name, password and what follows the `@`, if it has a user part.
fn user_info(url: &str) -> Option<(&str, &str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (user, _) = rest[..authority_end].rsplit_once('@')?;
    let after = &rest[user.len() + 1..];
    match user.split_once(':') {
        Some((name, password)) => Some((scheme, name, Some(password), after)),
        None => Some((scheme, user, None, after)),
    }
}

/// `%XX` escapes decoded (as URLs carry reserved characters in passwords).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_selects_postgres_and_its_password_is_never_shown() {
        let Database::Postgres(url) =
            Database::parse("postgres://kw:s3cret@db.internal:5432/keyward?sslmode=verify-full&pool_size=4").unwrap()
        else {
            panic!("not PostgreSQL")
        };
        assert_eq!(url.pool_size(), 4);
        assert_eq!(url.expose(), "postgres://kw:s3cret@db.internal:5432/keyward?sslmode=verify-full");
        assert_eq!(url.to_string(), "postgres://kw:***@db.internal:5432/keyward?sslmode=verify-full");
        let (bare, password) = url.split_password();
        assert_eq!(bare, "postgres://kw@db.internal:5432/keyward?sslmode=verify-full");
        assert_eq!(password.as_deref(), Some("s3cret"));
        let database = Database::Postgres(url);
        assert!(!format!("{database} {database:?}").contains("s3cret"));
        let Database::Postgres(url) = Database::parse("postgres://kw:a%40b@h/db").unwrap() else { panic!() };
        assert_eq!(url.split_password().1.as_deref(), Some("a@b"));
    }

    #[test]
    fn other_urls_are_sqlite_files_and_bad_postgres_settings_are_named() {
        assert_eq!(Database::parse("sqlite://x.db").unwrap(), Database::Sqlite(PathBuf::from("x.db")));
        let Database::Postgres(url) = Database::parse("postgresql://h/db").unwrap() else { panic!() };
        assert_eq!(url.pool_size(), DEFAULT_POOL_SIZE);
        let err = Database::parse("postgres://u:pw@h/db?pool_size=0").unwrap_err();
        assert!(err.contains("pool_size"), "{err}");
        let err = Database::parse("postgres://u:pw@h/db?sslmode=sometimes").unwrap_err();
        assert!(err.contains("u:***@h") && !err.contains("pw@"), "{err}");
    }
}
