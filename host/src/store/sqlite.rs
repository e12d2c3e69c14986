//! The SQLite key store: the host's implementation of `sigma:api-keys/store`.
//!
//! WAL mode with `synchronous=FULL`: a write is on disk when the call returns,
//! so nothing acknowledged is lost to `kill -9` or a power cut. Only the
//! SHA-256 of a key is ever written. The database and its `-wal` and `-shm`
//! files are created readable by their owner only.
//!
//! Every call may wait for SQLite's lock, so callers on an async runtime run
//! them on a blocking thread; each waits at most [`BUSY_TIMEOUT`] for the
//! lock, then fails with `unavailable`.
//!
//! Lookups by hash (one per authenticated request) are served from memory
//! ([`Db::cached`], no I/O) while no connection, in this process or another
//! (the CLI), has committed since. A commit is noticed through [`CommitWatch`];
//! the keys it changed are then read from `key_changes`, which triggers fill
//! in the same transaction as every change to a key, so a commit evicts only
//! those keys, and a deactivated or deleted key is refused from the moment
//! its write returns.
//!
//! `lastUsedAt` is not written on the request path: uses are collected in
//! memory and written in one transaction per [`USE_FLUSH_INTERVAL`] by a
//! thread of their own (a `kill -9` may lose the last interval's uses).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};

use super::cache::{KeyCache, PendingUses};
use super::{
    COLUMNS, EVENT_COLUMNS, Event, EventQuery, KeyRecord, KeyStore, LoggedEvent, Permission, Roll,
    StoreError, USE_FLUSH_INTERVAL, active_at, event_kind_named, event_kind_text, permission_named,
    permissions_to_text, via_named, via_text,
};

/// The longest any call waits for another connection's lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// Entries kept in `key_changes`; a reader that falls further behind than
/// this empties its whole cache.
const KEPT_CHANGES: i64 = 10_000;

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
    // 2: the change feed that cache eviction reads, and keys per tenant for
    // the limit. Triggers write both, so no writer (an older binary, a
    // hand-run SQL statement) can skip them. Only `last_used_at` changes
    // nothing a lookup decides on.
    "CREATE TABLE key_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key_hash BLOB NOT NULL
    );
    CREATE TRIGGER api_keys_updated
        AFTER UPDATE OF id, tenant, name, key_hash, permissions, created_at, deactivated_at
        ON api_keys
    BEGIN
        INSERT INTO key_changes (key_hash) VALUES (OLD.key_hash);
    END;
    CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys
    BEGIN
        INSERT INTO key_changes (key_hash) VALUES (OLD.key_hash);
    END;
    -- Keys per tenant, kept by triggers, so the limit costs one lookup per
    -- create instead of counting the tenant's keys.
    CREATE TABLE tenant_key_counts (
        tenant TEXT PRIMARY KEY NOT NULL,
        keys INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO tenant_key_counts (tenant, keys)
        SELECT tenant, count(*) FROM api_keys GROUP BY tenant;
    CREATE TRIGGER api_keys_counted AFTER INSERT ON api_keys
    BEGIN
        INSERT INTO tenant_key_counts (tenant, keys) VALUES (NEW.tenant, 1)
            ON CONFLICT (tenant) DO UPDATE SET keys = keys + 1;
    END;
    CREATE TRIGGER api_keys_uncounted AFTER DELETE ON api_keys
    BEGIN
        UPDATE tenant_key_counts SET keys = keys - 1 WHERE tenant = OLD.tenant;
    END;
    CREATE TRIGGER api_keys_recounted AFTER UPDATE OF tenant ON api_keys
    BEGIN
        UPDATE tenant_key_counts SET keys = keys - 1 WHERE tenant = OLD.tenant;
        INSERT INTO tenant_key_counts (tenant, keys) VALUES (NEW.tenant, 1)
            ON CONFLICT (tenant) DO UPDATE SET keys = keys + 1;
    END;",
    // 3: expiry, which decides lookups too (so its changes evict), and the
    // audit trail, written in the same transaction as each change.
    "ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
    DROP TRIGGER api_keys_updated;
    CREATE TRIGGER api_keys_updated
        AFTER UPDATE OF id, tenant, name, key_hash, permissions, created_at, deactivated_at, expires_at
        ON api_keys
    BEGIN
        INSERT INTO key_changes (key_hash) VALUES (OLD.key_hash);
    END;
    CREATE TABLE key_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        via TEXT NOT NULL,
        subject TEXT,
        details TEXT NOT NULL
    );
    CREATE INDEX key_events_by_tenant ON key_events (tenant, seq);
    CREATE INDEX key_events_by_key ON key_events (tenant, key_id, seq);",
];

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

/// The cache and the database stamp it is valid for (after applying every
/// change up to `keys.seen`).
struct SqliteCache {
    stamp: Option<Stamp>,
    keys: KeyCache,
}

/// The thread that writes collected uses; stopped (after a last write) on drop.
struct UseWriter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for UseWriter {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The SQLite database behind the store.
pub struct Db {
    /// First, so it is dropped (and the WAL index unmapped) before the connections close.
    watch: CommitWatch,
    /// Before the connections too: its last write needs the database open.
    _use_writer: UseWriter,
    pending: PendingUses,
    cache: Mutex<SqliteCache>,
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Db> {
        create_private(path)?;
        let writer = connect(path, true)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        migrate(&writer)
            .with_context(|| format!("cannot migrate the database {}", path.display()))?;
        let seen: i64 = writer
            .query_row("SELECT coalesce(max(seq), 0) FROM key_changes", [], |r| {
                r.get(0)
            })
            .context("cannot read the change feed")?;
        let pending = PendingUses::default();
        Ok(Db {
            watch: CommitWatch::open(path)?,
            _use_writer: UseWriter::start(path, pending.clone())?,
            pending,
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            cache: Mutex::new(SqliteCache {
                stamp: None,
                keys: KeyCache::new(seen),
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

    /// Stores a new key and its event unless its tenant already has
    /// `tenant_limit` keys.
    pub fn insert(
        &self,
        key: &KeyRecord,
        hash: &[u8],
        tenant_limit: u32,
        event: &Event,
    ) -> Result<(), StoreError> {
        let inserted = self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = insert_counted(&tx, key, hash, tenant_limit)?;
            if n > 0 {
                insert_events(&tx, std::slice::from_ref(event))?;
                tx.commit()?;
            }
            Ok(n)
        })?;
        if inserted == 0 {
            return Err(StoreError::LimitReached);
        }
        Ok(())
    }

    /// Replaces an active key by a new one, in one transaction.
    pub fn roll(&self, roll: &Roll) -> Result<Option<KeyRecord>, StoreError> {
        let outcome = self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let old = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE tenant = ?1 AND id = ?2"
                ))?
                .query_row([&roll.tenant, &roll.id], record)
                .optional()?;
            let Some(old) = old else {
                return Ok(Rolled::NotFound);
            };
            if !active_at(&old, roll.at) {
                return Ok(Rolled::Inactive);
            }
            if insert_counted(&tx, &roll.key, &roll.hash, roll.tenant_limit)? == 0 {
                return Ok(Rolled::LimitReached);
            }
            tx.prepare_cached(
                "UPDATE api_keys SET expires_at = min(coalesce(expires_at, ?3), ?3)
                 WHERE tenant = ?1 AND id = ?2",
            )?
            .execute(params![roll.tenant, roll.id, to_sql_time(roll.expires_at)])?;
            insert_events(&tx, &roll.events)?;
            let after = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE tenant = ?1 AND id = ?2"
                ))?
                .query_row([&roll.tenant, &roll.id], record)?;
            prune_changes(&tx)?;
            tx.commit()?;
            Ok(Rolled::Done(after))
        })?;
        match outcome {
            Rolled::Done(mut after) => {
                self.with_pending_use(&mut after);
                Ok(Some(after))
            }
            Rolled::NotFound => Ok(None),
            Rolled::Inactive => Err(StoreError::Inactive),
            Rolled::LimitReached => Err(StoreError::LimitReached),
        }
    }

    /// A tenant's events, newest first.
    pub fn events(&self, query: &EventQuery) -> Result<Vec<LoggedEvent>, StoreError> {
        let before = query.before.map_or(i64::MAX, to_sql_seq);
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM key_events
                 WHERE tenant = ?1 AND (?2 IS NULL OR key_id = ?2) AND seq < ?3
                 ORDER BY seq DESC LIMIT ?4"
            ))?
            .query_map(
                params![query.tenant, query.key_id, before, query.limit],
                logged_event,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
    }

    /// The cached record for `hash`, if nothing was committed since it was
    /// read: no I/O, safe to call on an async worker. `None` means "ask
    /// [`Db::find_by_hash`]", not "no such key".
    pub fn cached(&self, hash: &[u8]) -> Option<KeyRecord> {
        let key = <[u8; 32]>::try_from(hash).ok()?;
        let stamp = match &self.watch {
            CommitWatch::SharedMemory(_) => self.watch.stamp().ok()?,
            // Checking costs a query: leave it to the blocking path.
            CommitWatch::DataVersion(_) => return None,
        };
        let cache = self.cache.lock().ok()?;
        if cache.stamp != Some(stamp) {
            return None;
        }
        cache.keys.get(&key).cloned()
    }

    pub fn find_by_hash(&self, hash: &[u8]) -> Result<Option<KeyRecord>, StoreError> {
        let Ok(key) = <[u8; 32]>::try_from(hash) else {
            return self.find_by_hash_stored(hash);
        };
        let poisoned = || StoreError::Unavailable("the key cache is poisoned".into());
        let stamp = self.watch.stamp()?;
        if self.cache.lock().map_err(|_| poisoned())?.stamp != Some(stamp) {
            self.catch_up(stamp)?;
        }
        if let Some(found) = self.cache.lock().map_err(|_| poisoned())?.keys.get(&key) {
            return Ok(Some(found.clone()));
        }
        // Read without holding the cache; keep the result only if nothing was
        // committed since `stamp` was taken (else the next lookup reads again).
        let mut found = self.find_by_hash_stored(hash)?;
        if let Some(record) = &mut found {
            self.with_pending_use(record);
            if let Ok(mut cache) = self.cache.lock()
                && cache.stamp == Some(stamp)
            {
                let generation = cache.keys.generation();
                cache.keys.insert_if(generation, &key, record.clone());
            }
        }
        Ok(found)
    }

    /// Evicts every key changed since the cache was last brought up to date,
    /// then marks it valid for `stamp`. When the changes cannot be read, the
    /// whole cache is emptied: it is never trusted blind.
    fn catch_up(&self, stamp: Stamp) -> Result<(), StoreError> {
        let seen = match self.cache.lock() {
            Ok(cache) => cache.keys.seen,
            Err(_) => return Err(StoreError::Unavailable("the key cache is poisoned".into())),
        };
        let changes = self.read(|c| {
            let oldest: Option<i64> =
                c.query_row("SELECT min(seq) FROM key_changes", [], |r| r.get(0))?;
            let rows = c
                .prepare_cached(
                    "SELECT seq, key_hash FROM key_changes WHERE seq > ?1 ORDER BY seq",
                )?
                .query_map([seen], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((oldest, rows))
        });
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| StoreError::Unavailable("the key cache is poisoned".into()))?;
        match changes {
            Ok((oldest, rows)) => {
                if oldest.is_some_and(|oldest| oldest > seen.saturating_add(1)) {
                    // Pruned past what we saw: some changes are unknown.
                    cache.keys.clear();
                }
                for (seq, hash) in &rows {
                    cache.keys.evict(hash);
                    cache.keys.seen = cache.keys.seen.max(*seq);
                }
                cache.stamp = Some(stamp);
                Ok(())
            }
            Err(e) => {
                cache.keys.clear();
                cache.stamp = None;
                Err(e)
            }
        }
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

    /// One trivial read: the database file opens and answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT count(*) FROM api_keys LIMIT 1", [], |_| Ok(())))
    }

    pub fn list(&self, tenant: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let mut list = self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM api_keys WHERE tenant = ?1 ORDER BY created_at, rowid"
            ))?
            .query_map([tenant], record)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        for key in &mut list {
            self.with_pending_use(key);
        }
        Ok(list)
    }

    pub fn deactivate(
        &self,
        tenant: &str,
        id: &str,
        at: u64,
        event: &Event,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let changed = tx
                .prepare_cached(
                    "UPDATE api_keys SET deactivated_at = ?3
                     WHERE tenant = ?1 AND id = ?2 AND deactivated_at IS NULL",
                )?
                .execute(params![tenant, id, to_sql_time(at)])?;
            if changed > 0 {
                insert_events(&tx, std::slice::from_ref(event))?;
            }
            let found = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE tenant = ?1 AND id = ?2"
                ))?
                .query_row([tenant, id], record)
                .optional()?;
            prune_changes(&tx)?;
            tx.commit()?;
            Ok(found)
        })
        .map(|found| {
            found.map(|mut record| {
                self.with_pending_use(&mut record);
                record
            })
        })
    }

    pub fn remove(&self, tenant: &str, id: &str, event: &Event) -> Result<bool, StoreError> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let removed = tx
                .prepare_cached("DELETE FROM api_keys WHERE tenant = ?1 AND id = ?2")?
                .execute([tenant, id])?
                > 0;
            if removed {
                insert_events(&tx, std::slice::from_ref(event))?;
            }
            prune_changes(&tx)?;
            tx.commit()?;
            Ok(removed)
        })
    }

    /// Every key with its hash, in creation order (for `sigma-keys migrate`).
    pub fn export(&self) -> Result<Vec<(KeyRecord, Vec<u8>)>, StoreError> {
        let mut all = self.read(|c| {
            c.prepare(&format!(
                "SELECT {COLUMNS}, key_hash FROM api_keys ORDER BY created_at, rowid"
            ))?
            .query_map([], |row| Ok((record(row)?, row.get::<_, Vec<u8>>(8)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        for (key, _) in &mut all {
            self.with_pending_use(key);
        }
        Ok(all)
    }

    /// Every event, oldest first (for `sigma-keys migrate`).
    pub fn export_events(&self) -> Result<Vec<Event>, StoreError> {
        self.read(|c| {
            c.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM key_events ORDER BY seq"
            ))?
            .query_map([], |row| logged_event(row).map(|e| e.event))?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
    }

    fn with_pending_use(&self, record: &mut KeyRecord) {
        self.pending.apply(record);
    }

    /// Notes a use; written with the others within [`USE_FLUSH_INTERVAL`].
    /// Never waits for the database.
    pub fn record_use(&self, id: &str, at: u64) {
        self.pending.note(id, at);
        // The cached record shows the use at once, so the component does not
        // ask again within the interval.
        if let Ok(mut cache) = self.cache.lock() {
            cache.keys.note_use(id, at);
        }
    }

    /// Writes every collected use now (also done on drop and every interval).
    pub fn flush_uses(&self) -> Result<(), StoreError> {
        flush_uses(&self.writer, &self.pending)
    }
}

impl UseWriter {
    fn start(path: &Path, pending: PendingUses) -> Result<UseWriter> {
        let conn = connect(path, false)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sigma-keys-uses".into())
            .spawn(move || {
                let conn = Mutex::new(conn);
                loop {
                    let last = matches!(
                        stopped.recv_timeout(USE_FLUSH_INTERVAL),
                        Err(RecvTimeoutError::Disconnected)
                    );
                    if let Err(e) = flush_uses(&conn, &pending) {
                        tracing::warn!(
                            "could not write lastUsedAt yet (kept for the next try): {e:?}"
                        );
                    }
                    if last {
                        return;
                    }
                }
            })
            .context("cannot start the lastUsedAt writer")?;
        Ok(UseWriter {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Writes the collected uses in one transaction; on failure they are kept.
fn flush_uses(conn: &Mutex<Connection>, pending: &PendingUses) -> Result<(), StoreError> {
    let batch = pending.take();
    if batch.is_empty() {
        return Ok(());
    }
    let written = conn
        .lock()
        .map_err(|_| StoreError::Unavailable("the lastUsedAt connection is poisoned".into()))
        .and_then(|mut c| {
            (|| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                {
                    // Only ever raises last_used_at, and touches no other
                    // column, so a concurrent deactivation or delete wins.
                    let mut update = tx.prepare_cached(
                        "UPDATE api_keys SET last_used_at = ?2
                         WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                    )?;
                    for (id, at) in &batch {
                        update.execute(params![id, to_sql_time(*at)])?;
                    }
                }
                tx.commit()
            })()
            .map_err(store_error)
        });
    if written.is_err() {
        pending.restore(batch);
    }
    written
}

/// Keeps `key_changes` from growing without end.
fn prune_changes(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "DELETE FROM key_changes WHERE seq <= (SELECT max(seq) FROM key_changes) - ?1",
    )?
    .execute([KEPT_CHANGES])
    .map(|_| ())
}

/// Creates the database file readable by its owner only, if it does not
/// exist: SQLite gives its `-wal` and `-shm` files the same mode.
fn create_private(path: &Path) -> Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create the database {}", path.display())),
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
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Switching a new database to WAL can be refused as busy without the
    // busy handler being asked (another connection is switching it too), so
    // retry here, within the same bound.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mode: String = loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            other => break other?,
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("the database does not support WAL mode (got {mode})");
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(conn)
}

/// Applies the migrations in one write transaction, reading the version
/// inside it, so processes that open a new database together migrate it once.
fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let applied = (|| -> Result<()> {
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            bail!(
                "the database was written by a newer sigma-keys (schema {version}, this one knows {})",
                MIGRATIONS.len()
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(&format!("{sql}; PRAGMA user_version = {};", i + 1))?;
        }
        Ok(())
    })();
    match applied {
        Ok(()) => Ok(conn.execute_batch("COMMIT")?),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// What a roll found, inside its transaction.
enum Rolled {
    Done(KeyRecord),
    NotFound,
    Inactive,
    LimitReached,
}

/// Inserts a key unless its tenant has `tenant_limit` keys; rows inserted.
fn insert_counted(
    tx: &rusqlite::Transaction<'_>,
    key: &KeyRecord,
    hash: &[u8],
    tenant_limit: u32,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "INSERT INTO api_keys (id, tenant, name, key_hash, permissions, created_at, last_used_at, deactivated_at, expires_at)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9
         WHERE coalesce((SELECT keys FROM tenant_key_counts WHERE tenant = ?2), 0) < ?10",
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
        key.expires_at.map(to_sql_time),
        tenant_limit,
    ])
}

fn insert_events(tx: &rusqlite::Transaction<'_>, events: &[Event]) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO key_events (id, tenant, key_id, at, kind, via, subject, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for e in events {
        insert.execute(params![
            e.id,
            e.tenant,
            e.key_id,
            to_sql_time(e.at),
            event_kind_text(e.kind),
            via_text(e.via),
            e.subject,
            e.details,
        ])?;
    }
    Ok(())
}

fn to_sql_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn logged_event(row: &Row<'_>) -> rusqlite::Result<LoggedEvent> {
    let bad = |i: usize, what: String| {
        rusqlite::Error::InvalidColumnType(i, what, rusqlite::types::Type::Text)
    };
    let kind: String = row.get(5)?;
    let via: String = row.get(6)?;
    Ok(LoggedEvent {
        seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
        event: Event {
            id: row.get(1)?,
            tenant: row.get(2)?,
            key_id: row.get(3)?,
            at: from_sql_time(row.get(4)?),
            kind: event_kind_named(&kind).ok_or_else(|| bad(5, format!("event kind {kind}")))?,
            via: via_named(&via).ok_or_else(|| bad(6, format!("actor {via}")))?,
            subject: row.get(7)?,
            details: row.get(8)?,
        },
    })
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

fn permissions_from_text(text: &str) -> rusqlite::Result<Vec<Permission>> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|name| {
            permission_named(name).ok_or_else(|| {
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
        expires_at: row.get::<_, Option<i64>>(7)?.map(from_sql_time),
    })
}

/// [`Db`] as a [`KeyStore`]: each call runs on tokio's blocking pool, so no
/// async worker waits for SQLite's lock; a cached key is answered inline.
pub struct SqliteStore {
    db: Arc<Db>,
}

impl SqliteStore {
    pub fn new(db: Db) -> SqliteStore {
        SqliteStore { db: Arc::new(db) }
    }

    /// The database, for direct (blocking) use.
    pub fn db(&self) -> &Db {
        &self.db
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || call(&db))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Unavailable(format!(
                    "the store call failed: {e}"
                )))
            })
    }
}

#[async_trait::async_trait]
impl KeyStore for SqliteStore {
    async fn insert(
        &self,
        key: KeyRecord,
        hash: Vec<u8>,
        tenant_limit: u32,
        event: Event,
    ) -> Result<(), StoreError> {
        self.blocking(move |db| db.insert(&key, &hash, tenant_limit, &event))
            .await
    }
    fn cached(&self, hash: &[u8]) -> Option<KeyRecord> {
        self.db.cached(hash)
    }
    async fn find_by_hash(&self, hash: Vec<u8>) -> Result<Option<KeyRecord>, StoreError> {
        self.blocking(move |db| db.find_by_hash(&hash)).await
    }
    async fn list(&self, tenant: String) -> Result<Vec<KeyRecord>, StoreError> {
        self.blocking(move |db| db.list(&tenant)).await
    }
    async fn deactivate(
        &self,
        tenant: String,
        id: String,
        at: u64,
        event: Event,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.blocking(move |db| db.deactivate(&tenant, &id, at, &event))
            .await
    }
    async fn remove(&self, tenant: String, id: String, event: Event) -> Result<bool, StoreError> {
        self.blocking(move |db| db.remove(&tenant, &id, &event))
            .await
    }
    async fn roll(&self, roll: Roll) -> Result<Option<KeyRecord>, StoreError> {
        self.blocking(move |db| db.roll(&roll)).await
    }
    async fn events(&self, query: EventQuery) -> Result<Vec<LoggedEvent>, StoreError> {
        self.blocking(move |db| db.events(&query)).await
    }
    fn record_use(&self, id: &str, at: u64) {
        self.db.record_use(id, at);
    }
    async fn flush_uses(&self) -> Result<(), StoreError> {
        self.blocking(|db| db.flush_uses()).await
    }
    async fn close(&self) {
        if let Err(e) = self.flush_uses().await {
            tracing::warn!("could not write the last lastUsedAt values: {e:?}");
        }
    }
    async fn ready(&self) -> Result<(), String> {
        self.blocking(|db| db.ping())
            .await
            .map_err(|e| format!("the database does not answer: {e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 10_000;

    /// An event for cases that are not about events (ids stay unique).
    fn ev() -> Event {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Event {
            id: format!("event-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            tenant: "t".into(),
            key_id: "x".into(),
            at: 1,
            kind: crate::store::EventKind::Created,
            via: crate::store::ActorVia::Cli,
            subject: None,
            details: "{}".into(),
        }
    }

    fn key(id: &str, tenant: &str, at: u64) -> KeyRecord {
        KeyRecord {
            expires_at: None,
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
        db.insert(&key("b", "t", 20), &[2; 32], LIMIT, &ev())
            .unwrap();
        db.insert(&key("a", "t", 10), &[1; 32], LIMIT, &ev())
            .unwrap();
        db.insert(&key("c", "u", 5), &[3; 32], LIMIT, &ev())
            .unwrap();
        assert!(matches!(
            db.insert(&key("a", "t", 1), &[9; 32], LIMIT, &ev()),
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            db.insert(&key("z", "t", 1), &[1; 32], LIMIT, &ev()),
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
        db.insert(&key("a", "t", 1), &[1; 32], LIMIT, &ev())
            .unwrap();
        assert!(db.deactivate("other", "a", 5, &ev()).unwrap().is_none());
        assert_eq!(
            db.deactivate("t", "a", 5, &ev())
                .unwrap()
                .unwrap()
                .deactivated_at,
            Some(5)
        );
        assert_eq!(
            db.deactivate("t", "a", 9, &ev())
                .unwrap()
                .unwrap()
                .deactivated_at,
            Some(5)
        );
        db.record_use("a", 100);
        db.record_use("a", 50);
        let k = db.find_by_hash(&[1; 32]).unwrap().unwrap();
        assert_eq!((k.last_used_at, k.deactivated_at), (Some(100), Some(5)));
        db.flush_uses().unwrap();
        let other = Db::open(&dir.path().join("k.db")).unwrap();
        let k = other.find_by_hash(&[1; 32]).unwrap().unwrap();
        assert_eq!((k.last_used_at, k.deactivated_at), (Some(100), Some(5)));
        assert!(!db.remove("other", "a", &ev()).unwrap());
        assert!(db.remove("t", "a", &ev()).unwrap());
        db.record_use("a", 200);
        assert!(db.find_by_hash(&[1; 32]).unwrap().is_none());
    }

    #[test]
    fn a_cached_key_never_outlives_a_write_from_here_or_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let db = Db::open(&path).unwrap();
        db.insert(&key("a", "t", 1), &[1; 32], LIMIT, &ev())
            .unwrap();
        db.insert(&key("b", "t", 2), &[2; 32], LIMIT, &ev())
            .unwrap();
        assert!(db.find_by_hash(&[1; 32]).unwrap().is_some());

        // Through this store.
        db.deactivate("t", "a", 5, &ev()).unwrap();
        let k = db.find_by_hash(&[1; 32]).unwrap().unwrap();
        assert_eq!(k.deactivated_at, Some(5));
        db.record_use("a", 7);
        assert_eq!(
            db.find_by_hash(&[1; 32]).unwrap().unwrap().last_used_at,
            Some(7)
        );
        db.flush_uses().unwrap();
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
        other.deactivate("t", "b", 9, &ev()).unwrap();
        assert_eq!(
            db.find_by_hash(&[2; 32]).unwrap().unwrap().deactivated_at,
            Some(9)
        );
        assert!(other.remove("t", "b", &ev()).unwrap());
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
            .insert(&key("a", "t", 1), &[1; 32], LIMIT, &ev())
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
            .insert(&key("a", "t", 1), &[1; 32], LIMIT, &ev())
            .unwrap();
        assert_eq!(Db::open(&path).unwrap().list("t").unwrap().len(), 1);
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        assert!(Db::open(&path).is_err());
    }

    /// A database written before expiry and events existed (schema 2)
    /// keeps its keys, gains both, and an expiry change evicts from the cache.
    #[test]
    fn a_schema_2_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        {
            let conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..2].iter().enumerate() {
                conn.execute_batch(&format!("{sql}; PRAGMA user_version = {};", i + 1))
                    .unwrap();
            }
            conn.execute(
                "INSERT INTO api_keys (id, tenant, name, key_hash, permissions, created_at)
                 VALUES ('old', 't', 'n', ?1, 'read', 1)",
                [vec![7u8; 32]],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let old = db.find_by_hash(&[7; 32]).unwrap().unwrap();
        assert_eq!((old.id.as_str(), old.expires_at), ("old", None));
        assert!(db.cached(&[7; 32]).is_some());
        let roll = Roll {
            tenant: "t".into(),
            id: "old".into(),
            at: 10,
            expires_at: 10,
            key: key("new", "t", 10),
            hash: vec![8; 32],
            tenant_limit: LIMIT,
            events: vec![ev()],
        };
        db.roll(&roll).unwrap();
        assert_eq!(
            db.find_by_hash(&[7; 32]).unwrap().unwrap().expires_at,
            Some(10),
            "the cached record was evicted by the expiry change"
        );
        let query = EventQuery {
            tenant: "t".into(),
            key_id: None,
            before: None,
            limit: 10,
        };
        assert_eq!(db.events(&query).unwrap().len(), 1);
    }

    #[test]
    fn a_commit_evicts_only_the_keys_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let db = Db::open(&path).unwrap();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let n = u8::try_from(i).unwrap() + 1;
            db.insert(&key(id, "t", 1), &[n; 32], LIMIT, &ev()).unwrap();
            assert!(db.find_by_hash(&[n; 32]).unwrap().is_some());
            assert!(db.cached(&[n; 32]).is_some(), "{id} is cached");
        }
        // Another process deactivates b and records a use of c.
        let other = Db::open(&path).unwrap();
        other.deactivate("t", "b", 9, &ev()).unwrap();
        other.record_use("c", 11);
        other.flush_uses().unwrap();
        assert!(db.cached(&[1; 32]).is_none(), "unknown until caught up");
        assert_eq!(
            db.find_by_hash(&[2; 32]).unwrap().unwrap().deactivated_at,
            Some(9)
        );
        assert!(db.cached(&[1; 32]).is_some(), "a survived the commit");
        assert!(db.cached(&[3; 32]).is_some(), "a use evicts nothing");
        assert_eq!(db.cached(&[2; 32]).unwrap().deactivated_at, Some(9));
        // A raw SQL delete is seen through the triggers.
        Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM api_keys WHERE id = 'c'", [])
            .unwrap();
        assert!(db.find_by_hash(&[3; 32]).unwrap().is_none());
        assert!(db.cached(&[1; 32]).is_some());
    }

    #[test]
    fn another_process_holding_the_write_lock_stalls_no_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let db = Db::open(&path).unwrap();
        db.insert(&key("a", "t", 1), &[1; 32], LIMIT, &ev())
            .unwrap();
        db.insert(&key("b", "t", 1), &[2; 32], LIMIT, &ev())
            .unwrap();
        assert!(db.find_by_hash(&[1; 32]).unwrap().is_some());
        // Another process (the CLI, a backup) holds the write lock.
        let locker = Connection::open(&path).unwrap();
        locker
            .execute_batch("BEGIN IMMEDIATE; UPDATE api_keys SET name = 'x' WHERE id = 'b';")
            .unwrap();
        let started = std::time::Instant::now();
        assert!(db.cached(&[1; 32]).is_some(), "cached keys keep working");
        assert_eq!(db.find_by_hash(&[2; 32]).unwrap().unwrap().name, "n");
        db.record_use("a", 5);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "lookups never wait"
        );
        let started = std::time::Instant::now();
        assert!(matches!(
            db.insert(&key("c", "t", 1), &[3; 32], LIMIT, &ev()),
            Err(StoreError::Unavailable(_))
        ));
        // The writer thread may take the batch first; either way it fails and is kept.
        let _ = db.flush_uses();
        let waited = started.elapsed();
        assert!(
            waited < BUSY_TIMEOUT * 3,
            "writes give up in bounded time: {waited:?}"
        );
        drop(locker); // rolls back
        db.flush_uses().unwrap();
        assert_eq!(
            db.find_by_hash(&[1; 32]).unwrap().unwrap().last_used_at,
            Some(5)
        );
        assert!(
            db.find_by_hash(&[3; 32]).unwrap().is_none(),
            "nothing was written"
        );
    }

    #[test]
    fn a_tenant_gets_at_most_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("k.db")).unwrap();
        db.insert(&key("a", "t", 1), &[1; 32], 2, &ev()).unwrap();
        db.insert(&key("b", "t", 1), &[2; 32], 2, &ev()).unwrap();
        assert!(matches!(
            db.insert(&key("c", "t", 1), &[3; 32], 2, &ev()),
            Err(StoreError::LimitReached)
        ));
        db.insert(&key("d", "u", 1), &[4; 32], 2, &ev()).unwrap();
        assert_eq!(db.list("t").unwrap().len(), 2);
        // A delete frees a place, from here or from any other writer.
        assert!(db.remove("t", "a", &ev()).unwrap());
        db.insert(&key("c", "t", 1), &[3; 32], 2, &ev()).unwrap();
        Connection::open(dir.path().join("k.db"))
            .unwrap()
            .execute("DELETE FROM api_keys WHERE id = 'b'", [])
            .unwrap();
        db.insert(&key("e", "t", 1), &[5; 32], 2, &ev()).unwrap();
        assert!(matches!(
            db.insert(&key("f", "t", 1), &[6; 32], 2, &ev()),
            Err(StoreError::LimitReached)
        ));
    }

    #[test]
    fn the_database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let db = Db::open(&path).unwrap();
        db.insert(&key("a", "t", 1), &[1; 32], LIMIT, &ev())
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
        }
    }
}
