//! Where a project's state lives, as users write it: a SQLite file path or a PostgreSQL URL.

use std::fmt;
use std::path::PathBuf;

use crate::{PgStore, Result, SqliteStore, Store};

/// A state database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded default: a SQLite file (created when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by several processes and hosts: `postgres://...`.
    Postgres(String),
}

impl StoreLocation {
    /// `postgres://...` or `postgresql://...` is PostgreSQL; anything else is a file path.
    pub fn parse(text: &str) -> StoreLocation {
        let lower = text.trim().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            StoreLocation::Postgres(text.trim().to_string())
        } else {
            StoreLocation::Sqlite(PathBuf::from(text))
        }
    }

    /// Opens (creating and migrating as needed) the database.
    pub fn open(&self) -> Result<Box<dyn Store>> {
        Ok(match self {
            StoreLocation::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            StoreLocation::Postgres(url) => Box::new(PgStore::open(url)?),
        })
    }

    /// Whether other hosts may share it (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }
}

impl fmt::Display for StoreLocation {
    /// The path, or the URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "{}", p.display()),
            StoreLocation::Postgres(url) => f.write_str(&crate::postgres::redact(url)),
        }
    }
}
