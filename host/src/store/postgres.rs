//! The PostgreSQL key store, for several nodes sharing one database.
//!
//! A write is acknowledged only after its transaction commits. Every change
//! that can make a key stop working (an update of anything a lookup decides
//! on, or a delete) is recorded in `key_changes` by a trigger, in the same
//! transaction, and announced with `NOTIFY sigma_key_changes, '<seq>'`. The
//! trigger takes a transaction-level advisory lock first, so change numbers
//! commit in order: a reader that has seen change N has seen every change
//! before it.
//!
//! Each node keeps one listening connection of its own (not from the pool).
//! On every (re)connect it listens first, then reads every change after the
//! last one it applied; it reads again on each notification and every fifth
//! of `max_staleness` (the heartbeat), and evicts what changed from its
//! lookup cache. The cache answers only while the last successful read
//! started less than `max_staleness` ago; otherwise lookups go to the
//! database, and fail with `unavailable` (503 `store_unavailable`) when it
//! cannot be reached. So a node never accepts a deactivated or deleted key
//! later than `max_staleness` after the deactivation committed, whatever
//! happens to the listener or the network.
//!
//! `lastUsedAt` is collected in memory and written by a task of its own,
//! one statement per [`USE_FLUSH_INTERVAL`](super::USE_FLUSH_INTERVAL), and
//! once more by [`KeyStore::close`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::cache::{KeyCache, PendingUses};
use super::{
    ActorVia, COLUMNS, EVENT_COLUMNS, Event, EventKind, EventQuery, FeedStatus, KeyRecord,
    KeyStore, LoggedEvent, Options, Roll, StoreError, USE_FLUSH_INTERVAL, active_at,
    event_kind_named, event_kind_text, permission_named, permissions_to_text, via_named, via_text,
};

/// The channel changes are announced on.
const CHANNEL: &str = "sigma_key_changes";
/// Taken (per transaction) while migrating, so nodes starting together
/// migrate one at a time.
const MIGRATION_LOCK: i64 = 0x5349_474d_414b_0001;
/// The longest one store call may take before it fails with `unavailable`.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections in each node's pool.
const POOL_SIZE: usize = 16;
/// Entries kept in `key_changes`; a node that falls further behind than this
/// empties its whole cache.
const KEPT_CHANGES: i64 = 10_000;
/// How often `key_changes` is pruned, in flush intervals.
const PRUNE_EVERY: u32 = 60;

/// Schema migrations, applied in order; `sigma_keys_schema.version` counts them.
const MIGRATIONS: &[&str] = &[
    // 1: keys, the change feed and keys per tenant, as in the SQLite store.
    // `position` orders a tenant's keys created in the same millisecond.
    "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        key_hash BYTEA NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
        permissions TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_used_at BIGINT,
        deactivated_at BIGINT,
        position BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at, position);
    CREATE TABLE key_changes (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key_hash BYTEA NOT NULL
    );
    CREATE FUNCTION sigma_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        changed BIGINT;
    BEGIN
        -- Writers of the feed take turns, so numbers commit in order.
        PERFORM pg_advisory_xact_lock(6004507061239152642);
        INSERT INTO key_changes (key_hash) VALUES (OLD.key_hash) RETURNING seq INTO changed;
        PERFORM pg_notify('sigma_key_changes', changed::text);
        RETURN NULL;
    END $$;
    CREATE TRIGGER api_keys_changed
        AFTER UPDATE OF id, tenant, name, key_hash, permissions, created_at, deactivated_at
        OR DELETE ON api_keys
        FOR EACH ROW EXECUTE FUNCTION sigma_key_changed();
    CREATE TABLE tenant_key_counts (
        tenant TEXT PRIMARY KEY,
        keys BIGINT NOT NULL
    );
    CREATE FUNCTION sigma_key_counted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            UPDATE tenant_key_counts SET keys = keys - 1 WHERE tenant = OLD.tenant;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO tenant_key_counts (tenant, keys) VALUES (NEW.tenant, 1)
                ON CONFLICT (tenant) DO UPDATE SET keys = tenant_key_counts.keys + 1;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER api_keys_counted
        AFTER INSERT OR DELETE OR UPDATE OF tenant ON api_keys
        FOR EACH ROW EXECUTE FUNCTION sigma_key_counted();",
    // 2: expiry, which decides lookups too (so its changes go into the
    // feed), and the audit trail, written in the same transaction as each
    // change.
    "ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
    DROP TRIGGER api_keys_changed ON api_keys;
    CREATE TRIGGER api_keys_changed
        AFTER UPDATE OF id, tenant, name, key_hash, permissions, created_at, deactivated_at, expires_at
        OR DELETE ON api_keys
        FOR EACH ROW EXECUTE FUNCTION sigma_key_changed();
    CREATE TABLE key_events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        kind TEXT NOT NULL,
        via TEXT NOT NULL,
        subject TEXT,
        details TEXT NOT NULL
    );
    CREATE INDEX key_events_by_tenant ON key_events (tenant, seq);
    CREATE INDEX key_events_by_key ON key_events (tenant, key_id, seq);",
];

/// A PostgreSQL URL, as given to `--db`: `sslmode` (`disable`, `prefer`
/// (the default), `require`, `verify-ca`, `verify-full`) and `sslrootcert`
/// are read here, the rest by the driver. Shown only without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct Url {
    text: String,
    /// The URL without the parameters read here, for the driver.
    driver: String,
    ssl: Ssl,
    root_cert: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ssl {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, String> {
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let mut ssl = Ssl::Prefer;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "sslmode" => {
                    ssl = match value {
                        "disable" => Ssl::Disable,
                        "allow" | "prefer" => Ssl::Prefer,
                        "require" => Ssl::Require,
                        "verify-ca" => Ssl::VerifyCa,
                        "verify-full" => Ssl::VerifyFull,
                        _ => {
                            return Err(format!(
                                "has sslmode={value}; use disable, prefer, require, verify-ca or verify-full"
                            ));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(value.to_owned()),
                _ => rest.push(pair),
            }
        }
        let driver = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let url = Url {
            text: text.to_owned(),
            driver,
            ssl,
            root_cert,
        };
        url.config()
            .map_err(|e| format!("is not a valid PostgreSQL URL ({e})"))?;
        Ok(url)
    }

    /// The URL with its password (in the user part or a `password`
    /// parameter) replaced by `***`.
    pub fn redacted(&self) -> String {
        let (scheme, rest) = self.text.split_once("://").unwrap_or(("", &self.text));
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((user, host)) => match user.split_once(':') {
                Some((name, _)) => format!("{name}:***@{host}"),
                None => format!("{user}@{host}"),
            },
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some(("password", _)) => "password=***".to_owned(),
                        _ => pair.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_owned(),
        };
        format!("{scheme}://{authority}{tail}")
    }

    fn config(&self) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = self.driver.parse()?;
        config.ssl_mode(match self.ssl {
            Ssl::Disable => SslMode::Disable,
            Ssl::Prefer => SslMode::Prefer,
            Ssl::Require | Ssl::VerifyCa | Ssl::VerifyFull => SslMode::Require,
        });
        config.connect_timeout(CALL_TIMEOUT);
        // A dead peer is noticed by the OS too, not only by our timeouts.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.application_name("sigma-keys");
        Ok(config)
    }

    fn tls(&self) -> Result<MakeRustlsConnect> {
        tls::connector(self.ssl, self.root_cert.as_deref())
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

mod tls {
    //! rustls for the driver, with libpq's `sslmode` meanings: `prefer` and
    //! `require` encrypt without checking the certificate (unless
    //! `sslrootcert` is given, as in libpq), `verify-ca` checks the chain,
    //! `verify-full` the chain and the host name.

    use std::sync::Arc;

    use anyhow::{Context, Result};
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
    use tokio_postgres_rustls::MakeRustlsConnect;

    use super::Ssl;

    pub(super) fn connector(ssl: Ssl, root_cert: Option<&str>) -> Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        match root_cert {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("cannot read sslrootcert {path}"))?
                {
                    let cert = cert.with_context(|| format!("cannot read sslrootcert {path}"))?;
                    roots
                        .add(cert)
                        .with_context(|| format!("sslrootcert {path} holds a bad certificate"))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?;
        let checks = match ssl {
            Ssl::Prefer | Ssl::Require if root_cert.is_none() => Checks::None,
            Ssl::VerifyFull => Checks::Full,
            _ => Checks::Chain,
        };
        let config = match checks {
            Checks::Full => builder.with_root_certificates(roots).with_no_client_auth(),
            Checks::None | Checks::Chain => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .context("cannot set up TLS certificate checks")?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Verifier {
                        webpki,
                        provider,
                        checks,
                    }))
                    .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Checks {
        None,
        Chain,
        Full,
    }

    /// Checks the chain only (`verify-ca`) or nothing but the handshake's
    /// signatures (`require` without a root certificate).
    #[derive(Debug)]
    struct Verifier {
        webpki: Arc<WebPkiServerVerifier>,
        provider: Arc<CryptoProvider>,
        checks: Checks,
    }

    impl ServerCertVerifier for Verifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp_response: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if self.checks == Checks::None {
                return Ok(ServerCertVerified::assertion());
            }
            match self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

/// What the listener knows about the change feed.
struct Feed {
    origin: Instant,
    /// When (µs after `origin`, plus one; 0 = never) the last successful
    /// read of the feed started: the cache holds every change committed
    /// before then.
    confirmed: AtomicU64,
    max_staleness: Duration,
    reconnects: AtomicU64,
}

impl Feed {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether the cache may answer now.
    fn fresh(&self) -> bool {
        let confirmed = self.confirmed.load(Ordering::Acquire);
        confirmed != 0
            && u128::from(self.now().saturating_sub(confirmed)) < self.max_staleness.as_micros()
    }

    /// Since the cache was last confirmed current; `None` before the first time.
    fn lag(&self) -> Option<Duration> {
        let confirmed = self.confirmed.load(Ordering::Acquire);
        (confirmed != 0).then(|| Duration::from_micros(self.now().saturating_sub(confirmed)))
    }

    fn confirm(&self, started: u64) {
        self.confirmed.fetch_max(started, Ordering::AcqRel);
    }
}

/// State shared by the store and its tasks.
struct Shared {
    pool: Pool,
    cache: Mutex<KeyCache>,
    feed: Feed,
    /// `lastUsedAt` values waiting to be written.
    pending: PendingUses,
}

/// The PostgreSQL database behind the store.
pub struct PgStore {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl PgStore {
    /// Connects, migrates (one node at a time) and starts the listener and
    /// the `lastUsedAt` writer.
    pub async fn open(url: &Url, options: &Options) -> Result<PgStore> {
        let shown = url.redacted();
        let config = url
            .config()
            .with_context(|| format!("{shown} is not a valid PostgreSQL URL"))?;
        let tls = url.tls()?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .context("cannot set up the database pool")?;
        let mut client = pool.get().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the database {shown}: {}",
                pool_error_text(&e)
            )
        })?;
        migrate(&mut client)
            .await
            .with_context(|| format!("cannot migrate the database {shown}"))?;
        let seen: i64 = client
            .query_one("SELECT coalesce(max(seq), 0) FROM key_changes", &[])
            .await
            .and_then(|row| row.try_get(0))
            .context("cannot read the change feed")?;
        drop(client);
        let shared = Arc::new(Shared {
            pool,
            cache: Mutex::new(KeyCache::new(seen)),
            feed: Feed {
                origin: Instant::now(),
                confirmed: AtomicU64::new(0),
                max_staleness: options.max_staleness,
                reconnects: AtomicU64::new(0),
            },
            pending: PendingUses::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(listen(shared.clone(), config, tls, stopped.clone())),
            tokio::spawn(write_uses(shared.clone(), stopped)),
        ];
        Ok(PgStore {
            shared,
            stop,
            tasks: Mutex::new(tasks),
        })
    }

    /// Copies keys in (for `sigma-keys migrate`): a key already here (by
    /// id) keeps its row, taking a deactivation or a later use from the
    /// copy. Returns how many were new.
    pub async fn import(&self, keys: &[(KeyRecord, Vec<u8>)]) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let run = async {
            let tx = client.transaction().await?;
            let insert = tx
                .prepare(
                    "INSERT INTO api_keys (id, tenant, name, key_hash, permissions, created_at, last_used_at, deactivated_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (id) DO UPDATE SET
                        deactivated_at = coalesce(api_keys.deactivated_at, EXCLUDED.deactivated_at),
                        last_used_at = greatest(api_keys.last_used_at, EXCLUDED.last_used_at),
                        expires_at = least(api_keys.expires_at, EXCLUDED.expires_at)
                     WHERE api_keys.key_hash = EXCLUDED.key_hash
                     RETURNING (xmax = 0)",
                )
                .await?;
            let mut added = 0;
            for (key, hash) in keys {
                let rows = tx
                    .query(
                        &insert,
                        &[
                            &key.id,
                            &key.tenant,
                            &key.name,
                            hash,
                            &permissions_to_text(&key.permissions),
                            &to_sql_time(key.created_at),
                            &key.last_used_at.map(to_sql_time),
                            &key.deactivated_at.map(to_sql_time),
                            &key.expires_at.map(to_sql_time),
                        ],
                    )
                    .await?;
                match rows.first().map(|r| r.try_get::<_, bool>(0)) {
                    Some(Ok(true)) => added += 1,
                    Some(Ok(false)) => {}
                    Some(Err(e)) => return Err(e),
                    // Same id, different hash: not the same key.
                    None => return Ok(Err(key.id.clone())),
                }
            }
            tx.commit().await?;
            Ok(Ok(added))
        };
        match tokio::time::timeout(Duration::from_secs(300), run).await {
            Ok(Ok(Ok(added))) => Ok(added),
            Ok(Ok(Err(id))) => Err(StoreError::Unavailable(format!(
                "the target already has a different key with the id {id}"
            ))),
            Ok(Err(e)) => Err(db_error(&e)),
            Err(_) => Err(StoreError::Unavailable("the copy timed out".into())),
        }
    }

    /// Copies events in, oldest first, after the ones already here (for
    /// `sigma-keys migrate`); an event already here (by id) is skipped.
    /// Returns how many were new.
    pub async fn import_events(&self, events: &[Event]) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let run = async {
            let tx = client.transaction().await?;
            let added = write_events(&tx, events, true).await?;
            tx.commit().await?;
            Ok::<u64, tokio_postgres::Error>(added)
        };
        match tokio::time::timeout(Duration::from_secs(300), run).await {
            Ok(Ok(added)) => Ok(added),
            Ok(Err(e)) => Err(db_error(&e)),
            Err(_) => Err(StoreError::Unavailable("the copy timed out".into())),
        }
    }

    /// How many times the listener reconnected (for tests and metrics).
    pub fn reconnects(&self) -> u64 {
        self.shared.feed.reconnects.load(Ordering::Relaxed)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.shared
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(pool_error_text(&e)))
    }

    fn with_pending_use(&self, record: &mut KeyRecord) {
        self.shared.pending.apply(record);
    }

    fn evict_id(&self, id: &str) {
        if let Ok(mut cache) = self.shared.cache.lock() {
            cache.evict_id(id);
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Runs one store call with a connection from the pool, within [`CALL_TIMEOUT`].
async fn call<T>(
    store: &PgStore,
    f: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> Result<T, StoreError> {
    let run = async {
        let mut client = store.client().await?;
        f(&mut client).await.map_err(|e| db_error(&e))
    };
    tokio::time::timeout(CALL_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            ))
        })
}

#[async_trait::async_trait]
impl KeyStore for PgStore {
    async fn insert(
        &self,
        key: KeyRecord,
        hash: Vec<u8>,
        tenant_limit: u32,
        event: Event,
    ) -> Result<(), StoreError> {
        let inserted = call(self, async |client| {
            let tx = client.transaction().await?;
            if !insert_counted(&tx, &key, &hash, tenant_limit).await? {
                return Ok(false);
            }
            insert_events(&tx, std::slice::from_ref(&event)).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await?;
        if inserted {
            Ok(())
        } else {
            Err(StoreError::LimitReached)
        }
    }

    fn cached(&self, hash: &[u8]) -> Option<KeyRecord> {
        if !self.shared.feed.fresh() {
            return None;
        }
        self.shared.cache.lock().ok()?.get(hash).cloned()
    }

    async fn find_by_hash(&self, hash: Vec<u8>) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(found) = self.cached(&hash) {
            return Ok(Some(found));
        }
        // Cache what is read only if the cache is current now and nothing is
        // evicted before the record is stored.
        let generation = match self.shared.cache.lock() {
            Ok(cache) if self.shared.feed.fresh() => Some(cache.generation()),
            _ => None,
        };
        let found = call(self, async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1"
                ))
                .await?;
            client.query_opt(&statement, &[&hash]).await
        })
        .await?;
        let Some(row) = found else {
            return Ok(None);
        };
        let mut record = record(&row)?;
        self.with_pending_use(&mut record);
        if let Some(generation) = generation
            && let Ok(mut cache) = self.shared.cache.lock()
        {
            cache.insert_if(generation, &hash, record.clone());
        }
        Ok(Some(record))
    }

    async fn list(&self, tenant: String) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = call(self, async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 ORDER BY created_at, position"
                ))
                .await?;
            client.query(&statement, &[&tenant]).await
        })
        .await?;
        rows.iter()
            .map(|row| {
                record(row).map(|mut r| {
                    self.with_pending_use(&mut r);
                    r
                })
            })
            .collect()
    }

    async fn deactivate(
        &self,
        tenant: String,
        id: String,
        at: u64,
        event: Event,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let found = call(self, async |client| {
            let tx = client.transaction().await?;
            let changed = tx
                .execute(
                    "UPDATE api_keys SET deactivated_at = $3
                     WHERE tenant = $1 AND id = $2 AND deactivated_at IS NULL",
                    &[&tenant, &id, &to_sql_time(at)],
                )
                .await?;
            if changed > 0 {
                insert_events(&tx, std::slice::from_ref(&event)).await?;
            }
            let row = tx
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 AND id = $2"),
                    &[&tenant, &id],
                )
                .await?;
            tx.commit().await?;
            Ok(row)
        })
        .await;
        // Evicted here even when the outcome is unknown: refused at once on
        // this node, and on the others through the feed.
        self.evict_id(&id);
        found?
            .map(|row| {
                record(&row).map(|mut record| {
                    self.with_pending_use(&mut record);
                    record
                })
            })
            .transpose()
    }

    async fn remove(&self, tenant: String, id: String, event: Event) -> Result<bool, StoreError> {
        let removed = call(self, async |client| {
            let tx = client.transaction().await?;
            let removed = tx
                .execute(
                    "DELETE FROM api_keys WHERE tenant = $1 AND id = $2",
                    &[&tenant, &id],
                )
                .await?
                > 0;
            if removed {
                insert_events(&tx, std::slice::from_ref(&event)).await?;
            }
            tx.commit().await?;
            Ok(removed)
        })
        .await;
        self.evict_id(&id);
        removed
    }

    async fn roll(&self, roll: Roll) -> Result<Option<KeyRecord>, StoreError> {
        let outcome = call(self, async |client| {
            let tx = client.transaction().await?;
            // The old key's row is locked first, so a racing deactivate or
            // roll of it waits for this one (or this one for it).
            let old = tx
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 AND id = $2 FOR UPDATE"
                    ),
                    &[&roll.tenant, &roll.id],
                )
                .await?;
            let Some(old) = old else {
                return Ok(Ok(None));
            };
            let old = match record(&old) {
                Ok(old) => old,
                Err(e) => return Ok(Err(e)),
            };
            if !active_at(&old, roll.at) {
                return Ok(Err(StoreError::Inactive));
            }
            if !insert_counted(&tx, &roll.key, &roll.hash, roll.tenant_limit).await? {
                return Ok(Err(StoreError::LimitReached));
            }
            let after = tx
                .query_one(
                    &format!(
                        "UPDATE api_keys SET expires_at = least(coalesce(expires_at, $3), $3)
                         WHERE tenant = $1 AND id = $2 RETURNING {COLUMNS}"
                    ),
                    &[&roll.tenant, &roll.id, &to_sql_time(roll.expires_at)],
                )
                .await?;
            insert_events(&tx, &roll.events).await?;
            tx.commit().await?;
            Ok(Ok(Some(after)))
        })
        .await;
        // As for deactivate: refused at once here, elsewhere through the feed.
        self.evict_id(&roll.id);
        match outcome?? {
            None => Ok(None),
            Some(row) => {
                let mut after = record(&row)?;
                self.with_pending_use(&mut after);
                Ok(Some(after))
            }
        }
    }

    async fn events(&self, query: EventQuery) -> Result<Vec<LoggedEvent>, StoreError> {
        let before = query
            .before
            .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let rows = call(self, async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM key_events
                     WHERE tenant = $1 AND ($2::text IS NULL OR key_id = $2) AND seq < $3
                     ORDER BY seq DESC LIMIT $4"
                ))
                .await?;
            client
                .query(
                    &statement,
                    &[
                        &query.tenant,
                        &query.key_id,
                        &before,
                        &i64::from(query.limit),
                    ],
                )
                .await
        })
        .await?;
        rows.iter().map(logged_event).collect()
    }

    fn record_use(&self, id: &str, at: u64) {
        self.shared.pending.note(id, at);
        if let Ok(mut cache) = self.shared.cache.lock() {
            cache.note_use(id, at);
        }
    }

    async fn flush_uses(&self) -> Result<(), StoreError> {
        flush_uses(&self.shared).await
    }

    async fn close(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = match self.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            let _ = task.await;
        }
        if let Err(e) = flush_uses(&self.shared).await {
            tracing::warn!("could not write the last lastUsedAt values: {e:?}");
        }
    }

    async fn ready(&self) -> Result<(), String> {
        let feed = &self.shared.feed;
        if !feed.fresh() {
            return Err(match feed.lag() {
                Some(lag) => format!(
                    "the change feed was last confirmed {} ms ago, beyond --max-staleness ({} ms)",
                    lag.as_millis(),
                    feed.max_staleness.as_millis()
                ),
                None => "the change feed has not been confirmed yet".to_owned(),
            });
        }
        let client = self.client().await.map_err(|e| format!("{e:?}"))?;
        match tokio::time::timeout(READY_TIMEOUT, client.query_one("SELECT 1", &[])).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "the database does not answer: {}",
                db_error_text(&e)
            )),
            Err(_) => Err(format!(
                "the database did not answer within {} ms",
                READY_TIMEOUT.as_millis()
            )),
        }
    }

    fn feed(&self) -> Option<FeedStatus> {
        Some(FeedStatus {
            lag: self.shared.feed.lag(),
            reconnects: self.shared.feed.reconnects.load(Ordering::Relaxed),
        })
    }
}

/// How long a readiness probe waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Applies the schema's migrations, one node at a time.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS sigma_keys_schema (version INTEGER NOT NULL)")
        .await?;
    let version: i32 = tx
        .query_opt("SELECT version FROM sigma_keys_schema", &[])
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if version > known {
        bail!(
            "the database was written by a newer sigma-keys (schema {version}, this one knows {known})"
        );
    }
    for sql in MIGRATIONS
        .iter()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.batch_execute(sql).await?;
    }
    tx.execute("DELETE FROM sigma_keys_schema", &[]).await?;
    tx.execute(
        "INSERT INTO sigma_keys_schema (version) VALUES ($1)",
        &[&known],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Keeps the listening connection up for the store's lifetime.
async fn listen(
    shared: Arc<Shared>,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let started = Instant::now();
        match follow(&shared, &config, tls.clone(), &mut stopped).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("the change feed connection failed ({e:#}); reconnecting"),
        }
        shared.feed.reconnects.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(20);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// One listening session: `LISTEN`, read what was missed, then read again on
/// every notification and heartbeat, until the connection fails or the store stops.
async fn follow(
    shared: &Shared,
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    stopped: &mut watch::Receiver<bool>,
) -> Result<()> {
    // Named, so operators (and tests) can tell it from pooled connections.
    let mut config = config.clone();
    config.application_name("sigma-keys listener");
    let (client, mut connection) = tokio::time::timeout(CALL_TIMEOUT, config.connect(tls))
        .await
        .context("connecting timed out")??;
    let (notified, mut notifications) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Drives the connection; ends (closing the channel) when it fails.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(_) = message
                && notified.send(()).is_err()
            {
                return;
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    let beat = (shared.feed.max_staleness / 5).max(Duration::from_millis(10));
    let deadline = shared.feed.max_staleness.max(Duration::from_millis(100));
    tokio::time::timeout(deadline, client.batch_execute(&format!("LISTEN {CHANNEL}")))
        .await
        .context("LISTEN timed out")??;
    let statement = client
        .prepare(
            "SELECT seq, key_hash, (SELECT min(seq) FROM key_changes)
             FROM key_changes WHERE seq > $1 ORDER BY seq",
        )
        .await?;
    let mut heartbeat = tokio::time::interval(beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let started = shared.feed.now();
        let seen = shared
            .cache
            .lock()
            .map_err(|_| anyhow::anyhow!("the key cache is poisoned"))?
            .seen;
        let rows = tokio::time::timeout(deadline, client.query(&statement, &[&seen]))
            .await
            .context("reading the change feed timed out")??;
        apply(shared, seen, &rows)?;
        shared.feed.confirm(started);
        tokio::select! {
            _ = heartbeat.tick() => {}
            more = notifications.recv() => {
                if more.is_none() {
                    bail!("the connection closed");
                }
                while notifications.try_recv().is_ok() {}
            }
            _ = stopped.changed() => return Ok(()),
        }
    }
}

/// Evicts the keys named by change rows read after `seen`.
fn apply(shared: &Shared, seen: i64, rows: &[Row]) -> Result<()> {
    let mut cache = shared
        .cache
        .lock()
        .map_err(|_| anyhow::anyhow!("the key cache is poisoned"))?;
    if let Some(first) = rows.first() {
        let oldest: Option<i64> = first.try_get(2)?;
        if oldest.is_some_and(|oldest| oldest > seen.saturating_add(1)) {
            // Pruned past what this node saw: some changes are unknown.
            cache.clear();
        }
    }
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        let hash: &[u8] = row.try_get(1)?;
        cache.evict(hash);
        cache.seen = cache.seen.max(seq);
    }
    Ok(())
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes collected uses every interval, and prunes the change feed now and then.
async fn write_uses(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut rounds = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(USE_FLUSH_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
        if let Err(e) = flush_uses(&shared).await {
            tracing::warn!("could not write lastUsedAt yet (kept for the next try): {e:?}");
        }
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(PRUNE_EVERY)
            && let Err(e) = prune(&shared).await
        {
            tracing::warn!("could not prune the change feed: {e:?}");
        }
    }
}

/// Writes the collected uses in one statement; on failure they are kept.
async fn flush_uses(shared: &Shared) -> Result<(), StoreError> {
    let batch = shared.pending.take();
    if batch.is_empty() {
        return Ok(());
    }
    let (ids, times): (Vec<&str>, Vec<i64>) = batch
        .iter()
        .map(|(id, at)| (id.as_str(), to_sql_time(*at)))
        .unzip();
    let run = async {
        let client = shared
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(pool_error_text(&e)))?;
        // Only ever raises last_used_at and touches no other column, so a
        // concurrent deactivation or delete wins, and no change is announced.
        client
            .execute(
                "UPDATE api_keys AS k SET last_used_at = u.at
                 FROM unnest($1::text[], $2::bigint[]) AS u(id, at)
                 WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
                &[&ids, &times],
            )
            .await
            .map_err(|e| db_error(&e))
    };
    let written = tokio::time::timeout(CALL_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            ))
        });
    if written.is_err() {
        shared.pending.restore(batch);
    }
    written.map(|_| ())
}

/// Keeps `key_changes` from growing without end.
async fn prune(shared: &Shared) -> Result<(), StoreError> {
    let client = shared
        .pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(pool_error_text(&e)))?;
    client
        .execute(
            "DELETE FROM key_changes WHERE seq <= (SELECT max(seq) FROM key_changes) - $1",
            &[&KEPT_CHANGES],
        )
        .await
        .map(|_| ())
        .map_err(|e| db_error(&e))
}

fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error_text(e),
        deadpool_postgres::PoolError::Timeout(_) => "the database did not answer in time".into(),
        other => other.to_string(),
    }
}

/// The driver's message, with the server's own message when there is one.
fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("database error {}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn db_error(e: &tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        return StoreError::Conflict;
    }
    StoreError::Unavailable(db_error_text(e))
}

fn to_sql_time(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn from_sql_time(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Inserts a key unless its tenant has `tenant_limit` keys; whether it did.
async fn insert_counted(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &KeyRecord,
    hash: &[u8],
    tenant_limit: u32,
) -> Result<bool, tokio_postgres::Error> {
    // Creates for one tenant take turns on its count row, so two racing
    // creates cannot both pass the limit.
    tx.execute(
        "INSERT INTO tenant_key_counts (tenant, keys) VALUES ($1, 0) ON CONFLICT (tenant) DO NOTHING",
        &[&key.tenant],
    )
    .await?;
    let count: i64 = tx
        .query_one(
            "SELECT keys FROM tenant_key_counts WHERE tenant = $1 FOR UPDATE",
            &[&key.tenant],
        )
        .await?
        .try_get(0)?;
    if count >= i64::from(tenant_limit) {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO api_keys (id, tenant, name, key_hash, permissions, created_at, last_used_at, deactivated_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &key.id,
            &key.tenant,
            &key.name,
            &hash,
            &permissions_to_text(&key.permissions),
            &to_sql_time(key.created_at),
            &key.last_used_at.map(to_sql_time),
            &key.deactivated_at.map(to_sql_time),
            &key.expires_at.map(to_sql_time),
        ],
    )
    .await?;
    Ok(true)
}

async fn insert_events(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[Event],
) -> Result<(), tokio_postgres::Error> {
    write_events(tx, events, false).await.map(|_| ())
}

/// Writes events in order; with `skip_existing`, one whose id is already
/// there is left alone (for copies) instead of failing the transaction.
/// Returns how many were written.
async fn write_events(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[Event],
    skip_existing: bool,
) -> Result<u64, tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let insert = tx
        .prepare_cached(if skip_existing {
            "INSERT INTO key_events (id, tenant, key_id, at, kind, via, subject, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
        } else {
            "INSERT INTO key_events (id, tenant, key_id, at, kind, via, subject, details)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        })
        .await?;
    let mut written = 0;
    for e in events {
        written += tx
            .execute(
                &insert,
                &[
                    &e.id,
                    &e.tenant,
                    &e.key_id,
                    &to_sql_time(e.at),
                    &event_kind_text(e.kind),
                    &via_text(e.via),
                    &e.subject,
                    &e.details,
                ],
            )
            .await?;
    }
    Ok(written)
}

fn logged_event(row: &Row) -> Result<LoggedEvent, StoreError> {
    let read = || -> Result<(i64, Event, String, String), tokio_postgres::Error> {
        let kind: String = row.try_get(5)?;
        let via: String = row.try_get(6)?;
        Ok((
            row.try_get(0)?,
            Event {
                id: row.try_get(1)?,
                tenant: row.try_get(2)?,
                key_id: row.try_get(3)?,
                at: from_sql_time(row.try_get(4)?),
                kind: EventKind::Created,
                via: ActorVia::Cli,
                subject: row.try_get(7)?,
                details: row.try_get(8)?,
            },
            kind,
            via,
        ))
    };
    let (seq, mut event, kind, via) = read().map_err(|e| db_error(&e))?;
    let bad = |what: &str| StoreError::Unavailable(format!("event {seq} has an unknown {what}"));
    event.kind = event_kind_named(&kind).ok_or_else(|| bad("kind"))?;
    event.via = via_named(&via).ok_or_else(|| bad("actor"))?;
    Ok(LoggedEvent {
        seq: u64::try_from(seq).unwrap_or(0),
        event,
    })
}

fn record(row: &Row) -> Result<KeyRecord, StoreError> {
    let read = || -> Result<KeyRecord, tokio_postgres::Error> {
        Ok(KeyRecord {
            id: row.try_get(0)?,
            tenant: row.try_get(1)?,
            name: row.try_get(2)?,
            permissions: Vec::new(),
            created_at: from_sql_time(row.try_get(4)?),
            last_used_at: row.try_get::<_, Option<i64>>(5)?.map(from_sql_time),
            deactivated_at: row.try_get::<_, Option<i64>>(6)?.map(from_sql_time),
            expires_at: row.try_get::<_, Option<i64>>(7)?.map(from_sql_time),
        })
    };
    let mut key = read().map_err(|e| db_error(&e))?;
    let permissions: &str = row.try_get(3).map_err(|e| db_error(&e))?;
    key.permissions = permissions
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|name| {
            permission_named(name).ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "key {} has an unknown permission {name:?}",
                    key.id
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_show_their_password() {
        let url =
            Url::parse("postgres://app:s3cret@db.example:5432/keys?sslmode=require&password=other")
                .unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://app:***@db.example:5432/keys?sslmode=require&password=***"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        let plain = Url::parse("postgresql://app@localhost/keys").unwrap();
        assert_eq!(plain.redacted(), "postgresql://app@localhost/keys");
        assert!(Url::parse("postgres://h/db?sslmode=sometimes").is_err());
    }
}
