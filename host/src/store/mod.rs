//! Where keys live: the host's implementation of `sigma:api-keys/store`.
//!
//! [`KeyStore`] is the capability; each backend is one module: [`sqlite`]
//! (the embedded default, one process or several on one machine) and
//! [`postgres`] (many nodes). Both keep a lookup cache of keys by hash
//! ([`cache::KeyCache`]) that the backend's own change signal empties:
//! SQLite's commit watch, PostgreSQL's `LISTEN`. Both pass one conformance
//! suite (`conformance.rs`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

pub use crate::bindings::sigma::api_keys::store::{
    ActorVia, EventKind, LoggedEvent, Permission, StoreError, StoredEvent as Event,
    StoredKey as KeyRecord,
};

pub mod cache;
pub mod metered;
pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod conformance;

/// How often collected `lastUsedAt` values are written, by every backend.
pub const USE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// The key columns every backend reads, in the order its row reader expects.
pub(crate) const COLUMNS: &str =
    "id, tenant, name, permissions, created_at, last_used_at, deactivated_at, expires_at";
/// The event columns every backend reads, in the order its row reader expects.
pub(crate) const EVENT_COLUMNS: &str = "seq, id, tenant, key_id, at, kind, via, subject, details";

/// Permission names as stored; they never change once written.
const PERMISSION_NAMES: [(Permission, &str); 5] = [
    (Permission::Read, "read"),
    (Permission::UpdateData, "update-data"),
    (Permission::DeleteData, "delete-data"),
    (Permission::UpdateModel, "update-model"),
    (Permission::DeleteModel, "delete-model"),
];

/// Permissions as one stored text, comma-separated.
pub(crate) fn permissions_to_text(permissions: &[Permission]) -> String {
    let names: Vec<&str> = permissions
        .iter()
        .filter_map(|p| {
            PERMISSION_NAMES
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, n)| *n)
        })
        .collect();
    names.join(",")
}

/// Event kinds as stored; they never change once written.
const EVENT_KIND_NAMES: [(EventKind, &str); 5] = [
    (EventKind::Created, "created"),
    (EventKind::Deactivated, "deactivated"),
    (EventKind::Deleted, "deleted"),
    (EventKind::Rolled, "rolled"),
    (EventKind::Leaked, "leaked"),
];

/// Actor kinds as stored; they never change once written.
const VIA_NAMES: [(ActorVia, &str); 3] = [
    (ActorVia::Token, "token"),
    (ActorVia::Cli, "cli"),
    (ActorVia::SecretScanning, "secret-scanning"),
];

pub(crate) fn event_kind_text(kind: EventKind) -> &'static str {
    EVENT_KIND_NAMES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("unknown", |(_, n)| *n)
}

pub(crate) fn event_kind_named(name: &str) -> Option<EventKind> {
    EVENT_KIND_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(k, _)| *k)
}

pub(crate) fn via_text(via: ActorVia) -> &'static str {
    VIA_NAMES
        .iter()
        .find(|(v, _)| *v == via)
        .map_or("unknown", |(_, n)| *n)
}

pub(crate) fn via_named(name: &str) -> Option<ActorVia> {
    VIA_NAMES.iter().find(|(_, n)| *n == name).map(|(v, _)| *v)
}

/// One roll (the WIT `store.roll`): all of it commits, or none of it.
#[derive(Clone, Debug)]
pub struct Roll {
    pub tenant: String,
    /// The key being replaced.
    pub id: String,
    /// The old key must be active at this instant.
    pub at: u64,
    /// The old key's new `expires_at`, unless its own is earlier.
    pub expires_at: u64,
    /// The new key and its hash, stored as by `insert`.
    pub key: KeyRecord,
    pub hash: Vec<u8>,
    pub tenant_limit: u32,
    pub events: Vec<Event>,
}

/// Neither deactivated nor expired at `at`: the rule the WIT `store.roll`
/// states, so every backend checks it inside its transaction.
pub(crate) fn active_at(key: &KeyRecord, at: u64) -> bool {
    key.deactivated_at.is_none() && key.expires_at.is_none_or(|e| e > at)
}

/// Newest first, by `seq`: what `KeyStore::events` asks for.
#[derive(Clone, Debug)]
pub struct EventQuery {
    pub tenant: String,
    pub key_id: Option<String>,
    /// Only events with a smaller `seq`.
    pub before: Option<u64>,
    pub limit: u32,
}

/// The permission stored under `name`.
pub(crate) fn permission_named(name: &str) -> Option<Permission> {
    PERMISSION_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(p, _)| *p)
}

/// The operations of the WIT `store` interface, for any backend.
///
/// Writes return only after their transaction commits, and each writes the
/// event that records it in that same transaction. A key that a write
/// deactivates, expires or deletes is refused by this process from the
/// moment the write returns, and by every other process within the
/// backend's bound.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key and its event unless its tenant already has
    /// `tenant_limit` keys.
    async fn insert(
        &self,
        key: KeyRecord,
        hash: Vec<u8>,
        tenant_limit: u32,
        event: Event,
    ) -> Result<(), StoreError>;
    /// The cached record for `hash` when the cache is known to be current:
    /// no I/O, safe on an async worker. `None` means "ask
    /// [`KeyStore::find_by_hash`]", not "no such key".
    fn cached(&self, hash: &[u8]) -> Option<KeyRecord>;
    /// The key with this SHA-256 hash.
    async fn find_by_hash(&self, hash: Vec<u8>) -> Result<Option<KeyRecord>, StoreError>;
    /// The tenant's keys, oldest first.
    async fn list(&self, tenant: String) -> Result<Vec<KeyRecord>, StoreError>;
    /// Sets `deactivated_at` unless already set (writing `event` only
    /// then); the record after the write.
    async fn deactivate(
        &self,
        tenant: String,
        id: String,
        at: u64,
        event: Event,
    ) -> Result<Option<KeyRecord>, StoreError>;
    /// Deletes the key and writes `event`; whether there was one.
    async fn remove(&self, tenant: String, id: String, event: Event) -> Result<bool, StoreError>;
    /// Replaces an active key (see the WIT `store.roll`); the old key's
    /// record after the change, `None` if the tenant has no such key.
    async fn roll(&self, roll: Roll) -> Result<Option<KeyRecord>, StoreError>;
    /// A tenant's events, newest first.
    async fn events(&self, query: EventQuery) -> Result<Vec<LoggedEvent>, StoreError>;
    /// Notes a use, written with others within [`USE_FLUSH_INTERVAL`];
    /// never waits for the database.
    fn record_use(&self, id: &str, at: u64);
    /// Writes every noted use now; also done every interval and on close.
    async fn flush_uses(&self) -> Result<(), StoreError>;
    /// Stops background work after writing what is pending. Later calls
    /// still work; uses noted after it may be lost.
    async fn close(&self);
    /// Whether the store can serve now: the database answers and, for a
    /// backend with a change feed, the cache was confirmed current within
    /// its staleness bound. The reason when not.
    async fn ready(&self) -> Result<(), String>;
    /// The change feed of a backend that follows one.
    fn feed(&self) -> Option<FeedStatus> {
        None
    }
}

/// How a change feed is doing, for metrics.
#[derive(Clone, Copy, Debug)]
pub struct FeedStatus {
    /// Since the cache was last confirmed to hold every change (`None`:
    /// never yet).
    pub lag: Option<std::time::Duration>,
    /// How often the feed's connection was opened again.
    pub reconnects: u64,
}

/// Where the store is: a SQLite file or a PostgreSQL URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(postgres::Url),
}

impl Location {
    /// How to show the location: a URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(path) => path.display().to_string(),
            Location::Postgres(url) => url.redacted(),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// Never shows a password, so a location can go into any message.
impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Location, String> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return postgres::Url::parse(s).map(Location::Postgres);
        }
        if s.contains("://") {
            return Err(
                "is neither a SQLite path nor a postgres:// or postgresql:// URL".to_owned(),
            );
        }
        if s.is_empty() {
            return Err("is empty".to_owned());
        }
        Ok(Location::Sqlite(PathBuf::from(s)))
    }
}

/// Settings every backend honours where it applies.
#[derive(Clone, Debug)]
pub struct Options {
    /// PostgreSQL: the longest a node may answer from its cache without
    /// having confirmed that the cache is current.
    pub max_staleness: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_staleness: Duration::from_secs(1),
        }
    }
}

/// Opens (creating and migrating) the store at `location`.
pub async fn open(location: &Location, options: &Options) -> Result<Arc<dyn KeyStore>> {
    match location {
        Location::Sqlite(path) => open_sqlite(path),
        Location::Postgres(url) => Ok(Arc::new(postgres::PgStore::open(url, options).await?)),
    }
}

/// Opens the SQLite store at `path`.
pub fn open_sqlite(path: &std::path::Path) -> Result<Arc<dyn KeyStore>> {
    Ok(Arc::new(sqlite::SqliteStore::new(sqlite::Db::open(path)?)))
}
