//! The SQLite key store: the host's implementation of `sigma:api-keys/store`.
//!
//! WAL mode with `synchronous=FULL`: a write is on disk when the call returns,
//! so nothing acknowledged is lost to `kill -9` or a power cut. Only the
//! SHA-256 of a key is ever written.
//!
//! Lookups by hash (one per authenticated request) are served from memory
//! while no connection, in this process or another (the CLI), has committed
//! anything since they were read. Any commit empties the cache before the
//! next lookup, so a deactivated or deleted key is refused from the moment
//! its write returns. See [`CommitWatch`] for how commits are noticed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use crate::bindings::sigma::api_keys::store::{Permission, StoreError, StoredKey as KeyRecord};

/// Schema migrations, applied in order; `PRAGMA user_version` counts them.
const MIGRATIONS: &[&str] = &[
    // 1: the keys table. `key_hash` is the SHA-256 of the raw key.
    "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY NOT NULL,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        key_hash BLOB NOT NULL UNIQUE CHECK (length(key_hash) = 32),
        permissions TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        deactivated_at INTEGER
    );
    CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at);",
];

/// Permission names as stored; they never change once written.
const PERMISSION_NAMES: [(Permission, &str); 5] = [
    (Permission::Read, "read"),
    (Permission::UpdateData, "update-data"),
    (Permission::DeleteData, "delete-data"),
    (Permission::UpdateModel, "update-model"),
    (Permission::DeleteModel, "delete-model"),
];

const COLUMNS: &str = "id, tenant, name, permissions, created_at, last_used_at, deactivated_at";

/// Records found by hash, kept at most this many at once.
const MAX_CACHED_KEYS: usize = 100_000;

/// The bytes of SQLite's WAL-index header that every commit rewrites: the two
/// 48-byte copies of `WalIndexHdr` at the start of `<db>-shm`
/// (<https://www.sqlite.org/walformat.html#the_wal_index_file_format>).
const WAL_INDEX_HEADER_WORDS: usize = 24;

/// What the database looked like when a lookup was made; equal stamps mean
/// nothing was committed in between.
type Stamp = [u32; WAL_INDEX_HEADER_WORDS];

/// Notices commits by any connection, in any process.
///
/// In WAL mode every commit (and every WAL restart) rewrites the WAL-index
/// header in the shared-memory file `<db>-shm`; that is how SQLite's own
/// readers learn of new commits. Reading it from a read-only mapping costs a
/// few loads, where `PRAGMA data_version` costs a read transaction (two
/// `fcntl` locks). The file cannot shrink under the mapping while this
/// process keeps a connection open: SQLite truncates it only when it opens a
/// database no process has open. Without the file (another VFS, say), the
/// watch falls back to `PRAGMA data_version`.
enum CommitWatch {
    SharedMemory(memmap2::Mmap),
    DataVersion(Mutex<Connection>),
}

impl CommitWatch {
    /// Call with the writer open: its first read created the WAL index.
    fn open(path: &Path) -> Result<CommitWatch> {
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        let mapped = std::fs::File::open(&shm).ok().and_then(|file| {
            if file.metadata().ok()?.len() < (WAL_INDEX_HEADER_WORDS * 4) as u64 {
                return None;
            }
            // SAFETY: read-only, shared, and never shorter than the mapped
            // length while this process has the database open (see above);
            // it is read only through atomic loads, since other processes write it.
            unsafe {
                memmap2::MmapOptions::new()
                    .len(WAL_INDEX_HEADER_WORDS * 4)
                    .map(&file)
                    .ok()
            }
        });
        if let Some(map) = mapped {
            return Ok(CommitWatch::SharedMemory(map));
        }
        tracing::debug!("no WAL index to map; checking PRAGMA data_version per lookup");
        let conn = connect(path, false)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        Ok(CommitWatch::DataVersion(Mutex::new(conn)))
    }

    fn stamp(&self) -> Result<Stamp, StoreError> {
        let mut stamp = [0u32; WAL_INDEX_HEADER_WORDS];
        match self {
            CommitWatch::SharedMemory(map) => {
                let words = map.as_ptr().cast::<std::sync::atomic::AtomicU32>();
                for (i, word) in stamp.iter_mut().enumerate() {
                    // SAFETY: the mapping is page-aligned and WAL_INDEX_HEADER_WORDS
                    // words long; atomic loads tolerate concurrent writers.
                    *word = unsafe { &*words.add(i) }.load(std::sync::atomic::Ordering::Acquire);
                }
            }
            CommitWatch::DataVersion(conn) => {
                let conn = conn.lock().map_err(|_| {
                    StoreError::Unavailable("the commit watch connection is poisoned".into())
                })?;
                let version: i64 = conn
                    .prepare_cached("PRAGMA data_version")
                    .and_then(|mut st| st.query_row([], |r| r.get(0)))
                    .map_err(store_error)?;
                stamp[0] = version as u32;
                stamp[1] = (version >> 32) as u32;
            }
        }
        Ok(stamp)
    }
}

/// Records found by hash, valid while the database's stamp stays `stamp`.
struct HashCache {
    stamp: Option<Stamp>,
    entries: HashMap<[u8; 32], KeyRecord>,
}

impl HashCache {
    /// Empties the cache if anything was committed since it was filled.
    fn refresh(&mut self, now: Stamp) {
        if self.stamp != Some(now) {
            self.entries.clear();
            self.stamp = Some(now);
        }
    }
}

/// The SQLite database behind the store.
pub struct Db {
    /// First, so it is dropped (and the WAL index unmapped) before the connections close.
    watch: CommitWatch,
    cache: Mutex<HashCache>,
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Db> {
        let writer = connect(path, true)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        migrate(&writer)
            .with_context(|| format!("cannot migrate the database {}", path.display()))?;
        Ok(Db {
            watch: CommitWatch::open(path)?,
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            cache: Mutex::new(HashCache {
                stamp: None,
                entries: HashMap::new(),
            }),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .writer
            .lock()
            .map_err(|_| StoreError::Unavailable("the writer connection is poisoned".into()))?;
        f(&mut conn).map_err(store_error)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().ok().and_then(|mut pool| pool.pop());
        let conn = match pooled {
            Some(c) => c,
            None => {
                connect(&self.path, false).map_err(|e| StoreError::Unavailable(format!("{e:#}")))?
            }
        };
        let result = f(&conn).map_err(store_error);
        if let Ok(mut pool) = self.readers.lock() {
            pool.push(conn);
        }
        result
    }

    pub fn insert(&self, key: &KeyRecord, hash: &[u8]) -> Result<(), StoreError> {
        self.write(|c| {
            c.prepare_cached(
                "INSERT INTO api_keys (id, tenant, name, key_hash, permissions, created_at, last_used_at, deactivated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                key.id,
                key.tenant,
                key.name,
                hash,
                permissions_to_text(&key.permissions),
                to_sql_time(key.created_at),
                key.last_used_at.map(to_sql_time),
                key.deactivated_at.map(to_sql_time),
            ])
            .map(|_| ())
        })
    }

    pub fn find_by_hash(&self, hash: &[u8]) -> Result<Option<KeyRecord>, StoreError> {
        let Ok(key) = <[u8; 32]>::try_from(hash) else {
            return self.find_by_hash_stored(hash);
        };
        let poisoned = || StoreError::Unavailable("the key cache is poisoned".into());
        let stamp = self.watch.stamp()?;
        {
            let mut cache = self.cache.lock().map_err(|_| poisoned())?;
            cache.refresh(stamp);
            if let Some(found) = cache.entries.get(&key) {
                return Ok(Some(found.clone()));
            }
        }
        // Read without holding the cache; keep the result only if nothing was
        // committed since `stamp` was taken (else the next lookup reads again).
        let found = self.find_by_hash_stored(hash)?;
        if let Some(record) = &found
            && let Ok(mut cache) = self.cache.lock()
            && cache.stamp == Some(stamp)
        {
            if cache.entries.len() >= MAX_CACHED_KEYS {
                cache.entries.clear();
            }
            cache.entries.insert(key, record.clone());
        }
        Ok(found)
    }

    fn find_by_hash_stored(&self, hash: &[u8]) -> Result<Option<KeyRecord>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM api_keys WHERE key_hash = ?1"
            ))?
            .query_row([hash], record)
            .optional()
        })
    }

    pub fn list(&self, tenant: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM api_keys WHERE tenant = ?1 ORDER BY created_at, rowid"
            ))?
            .query_map([tenant], record)?
            .collect()
        })
    }

    pub fn deactivate(
        &self,
        tenant: &str,
        id: &str,
        at: u64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.write(|c| {
            let tx = c.transaction()?;
            tx.prepare_cached(
                "UPDATE api_keys SET deactivated_at = ?3
                 WHERE tenant = ?1 AND id = ?2 AND deactivated_at IS NULL",
            )?
            .execute(params![tenant, id, to_sql_time(at)])?;
            let found = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE tenant = ?1 AND id = ?2"
                ))?
                .query_row([tenant, id], record)
                .optional()?;
            tx.commit()?;
            Ok(found)
        })
    }

    pub fn remove(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        self.write(|c| {
            c.prepare_cached("DELETE FROM api_keys WHERE tenant = ?1 AND id = ?2")?
                .execute([tenant, id])
                .map(|n| n > 0)
        })
    }

    pub fn record_use(&self, id: &str, at: u64) -> Result<(), StoreError> {
        // Only ever raises last_used_at: a late write never moves it back, and
        // it touches no other column, so a concurrent deactivation or delete wins.
        self.write(|c| {
            c.prepare_cached(
                "UPDATE api_keys SET last_used_at = ?2
                 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
            )?
            .execute(params![id, to_sql_time(at)])
            .map(|_| ())
        })
    }
}

fn connect(path: &Path, create: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("the database does not support WAL mode (got {mode})");
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > MIGRATIONS.len() {
        bail!(
            "the database was written by a newer sigma-keys (schema {version}, this one knows {})",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

fn store_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn to_sql_time(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn from_sql_time(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn permissions_to_text(permissions: &[Permission]) -> String {
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

fn permissions_from_text(text: &str) -> rusqlite::Result<Vec<Permission>> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|name| {
            PERMISSION_NAMES
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(p, _)| *p)
                .ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(
                        3,
                        format!("permission {name}"),
                        rusqlite::types::Type::Text,
                    )
                })
        })
        .collect()
}

fn record(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyRecord {
        id: row.get(0)?,
        tenant: row.get(1)?,
        name: row.get(2)?,
        permissions: permissions_from_text(&row.get::<_, String>(3)?)?,
        created_at: from_sql_time(row.get(4)?),
        last_used_at: row.get::<_, Option<i64>>(5)?.map(from_sql_time),
        deactivated_at: row.get::<_, Option<i64>>(6)?.map(from_sql_time),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, tenant: &str, at: u64) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            tenant: tenant.into(),
            name: "n".into(),
            permissions: vec![Permission::Read, Permission::DeleteModel],
            created_at: at,
            last_used_at: None,
            deactivated_at: None,
        }
    }

    #[test]
    fn round_trip_ordering_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("k.db")).unwrap();
        db.insert(&key("b", "t", 20), &[2; 32]).unwrap();
        db.insert(&key("a", "t", 10), &[1; 32]).unwrap();
        db.insert(&key("c", "u", 5), &[3; 32]).unwrap();
        assert!(matches!(
            db.insert(&key("a", "t", 1), &[9; 32]),
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            db.insert(&key("z", "t", 1), &[1; 32]),
            Err(StoreError::Conflict)
        ));
        let ids: Vec<String> = db.list("t").unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["a", "b"]);
        let found = db.find_by_hash(&[3; 32]).unwrap().unwrap();
        assert_eq!(
            found.permissions,
            vec![Permission::Read, Permission::DeleteModel]
        );
        assert!(db.find_by_hash(&[7; 32]).unwrap().is_none());
    }

    #[test]
    fn deactivate_keeps_the_first_time_and_use_never_resurrects() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("k.db")).unwrap();
        db.insert(&key("a", "t", 1), &[1; 32]).unwrap();
        assert!(db.deactivate("other", "a", 5).unwrap().is_none());
        assert_eq!(
            db.deactivate("t", "a", 5).unwrap().unwrap().deactivated_at,
            Some(5)
        );
        assert_eq!(
            db.deactivate("t", "a", 9).unwrap().unwrap().deactivated_at,
            Some(5)
        );
        db.record_use("a", 100).unwrap();
        db.record_use("a", 50).unwrap();
        let k = db.find_by_hash(&[1; 32]).unwrap().unwrap();
        assert_eq!((k.last_used_at, k.deactivated_at), (Some(100), Some(5)));
        assert!(!db.remove("other", "a").unwrap());
        assert!(db.remove("t", "a").unwrap());
        db.record_use("a", 200).unwrap();
        assert!(db.find_by_hash(&[1; 32]).unwrap().is_none());
    }

    #[test]
    fn a_cached_key_never_outlives_a_write_from_here_or_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let db = Db::open(&path).unwrap();
        db.insert(&key("a", "t", 1), &[1; 32]).unwrap();
        db.insert(&key("b", "t", 2), &[2; 32]).unwrap();
        assert!(db.find_by_hash(&[1; 32]).unwrap().is_some());

        // Through this store.
        db.deactivate("t", "a", 5).unwrap();
        let k = db.find_by_hash(&[1; 32]).unwrap().unwrap();
        assert_eq!(k.deactivated_at, Some(5));
        db.record_use("a", 7).unwrap();
        assert_eq!(
            db.find_by_hash(&[1; 32]).unwrap().unwrap().last_used_at,
            Some(7)
        );

        // Through another process's connection (the CLI): cached first.
        assert!(
            db.find_by_hash(&[2; 32])
                .unwrap()
                .unwrap()
                .deactivated_at
                .is_none()
        );
        let other = Db::open(&path).unwrap();
        other.deactivate("t", "b", 9).unwrap();
        assert_eq!(
            db.find_by_hash(&[2; 32]).unwrap().unwrap().deactivated_at,
            Some(9)
        );
        assert!(other.remove("t", "b").unwrap());
        assert!(db.find_by_hash(&[2; 32]).unwrap().is_none());
        Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM api_keys WHERE id = 'a'", [])
            .unwrap();
        assert!(db.find_by_hash(&[1; 32]).unwrap().is_none());
    }

    #[test]
    fn both_ways_of_watching_notice_another_connections_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let db = Db::open(&path).unwrap();
        // A database file gets the cheap watch, through the shared memory.
        assert!(matches!(db.watch, CommitWatch::SharedMemory(_)));
        let fallback = CommitWatch::DataVersion(Mutex::new(connect(&path, false).unwrap()));
        let shared = &db.watch;
        let before = (shared.stamp().unwrap(), fallback.stamp().unwrap());
        assert_eq!(
            before,
            (shared.stamp().unwrap(), fallback.stamp().unwrap()),
            "no commit, no change"
        );
        Db::open(&path)
            .unwrap()
            .insert(&key("a", "t", 1), &[1; 32])
            .unwrap();
        assert_ne!(shared.stamp().unwrap(), before.0);
        assert_ne!(fallback.stamp().unwrap(), before.1);
    }

    #[test]
    fn reopening_keeps_data_and_refuses_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        Db::open(&path)
            .unwrap()
            .insert(&key("a", "t", 1), &[1; 32])
            .unwrap();
        assert_eq!(Db::open(&path).unwrap().list("t").unwrap().len(), 1);
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        assert!(Db::open(&path).is_err());
    }
}
