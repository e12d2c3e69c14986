//! The store conformance suite: every backend must pass every case.
//!
//! Each case gets a way to open the same store again (a second "node" or
//! process), so the invalidation contract is tried across stores, not only
//! within one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    ActorVia, Event, EventKind, EventQuery, KeyRecord, KeyStore, Location, Options, Permission,
    Roll, StoreError,
};

#[path = "../../../tests/pg_cluster.rs"]
mod pg_cluster;

/// The staleness bound the Postgres cases run with.
const BOUND: Duration = Duration::from_millis(500);

/// Opens the store under test again, as another node would.
struct Backend {
    location: Location,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        Backend {
            location: Location::Sqlite(dir.path().join("keys.db")),
            _dir: Some(dir),
        }
    }

    fn postgres() -> Backend {
        Backend {
            location: pg_cluster::database_url().parse().unwrap(),
            _dir: None,
        }
    }

    /// How long after a write another store may still accept the key:
    /// SQLite's commit watch is checked on every lookup.
    fn bound(&self) -> Duration {
        match self.location {
            Location::Sqlite(_) => Duration::ZERO,
            Location::Postgres(_) => BOUND,
        }
    }

    async fn open(&self) -> Arc<dyn KeyStore> {
        super::open(
            &self.location,
            &Options {
                max_staleness: BOUND,
            },
        )
        .await
        .unwrap()
    }
}

fn key(id: &str, tenant: &str, at: u64) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        tenant: tenant.into(),
        name: format!("name of {id}"),
        permissions: vec![Permission::Read, Permission::DeleteModel],
        created_at: at,
        last_used_at: None,
        deactivated_at: None,
        expires_at: None,
    }
}

/// A fresh event id (unique within a run, which is what the store requires).
fn event_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("event-{nanos}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An event about `key_id` of `tenant`.
fn event(kind: EventKind, tenant: &str, key_id: &str) -> Event {
    Event {
        id: event_id(),
        tenant: tenant.into(),
        key_id: key_id.into(),
        at: 1,
        kind,
        via: ActorVia::Token,
        subject: Some("ops".into()),
        details: "{}".into(),
    }
}

/// An event for the cases that are not about events.
fn ev() -> Event {
    event(EventKind::Created, "t", "x")
}

async fn events_of(store: &Arc<dyn KeyStore>, tenant: &str, key_id: Option<&str>) -> Vec<Event> {
    store
        .events(EventQuery {
            tenant: tenant.into(),
            key_id: key_id.map(Into::into),
            before: None,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

fn hash(n: u8) -> Vec<u8> {
    vec![n; 32]
}

async fn round_trip(backend: Backend) {
    let store = backend.open().await;
    store
        .insert(key("b", "t", 20), hash(2), 100, ev())
        .await
        .unwrap();
    store
        .insert(key("a", "t", 10), hash(1), 100, ev())
        .await
        .unwrap();
    store
        .insert(key("c", "t", 20), hash(3), 100, ev())
        .await
        .unwrap();
    store
        .insert(key("x", "other", 5), hash(9), 100, ev())
        .await
        .unwrap();
    let ids: Vec<String> = store
        .list("t".into())
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(
        ids,
        ["a", "b", "c"],
        "oldest first, then in insertion order"
    );
    assert_eq!(
        store.find_by_hash(hash(1)).await.unwrap(),
        Some(key("a", "t", 10))
    );
    assert_eq!(store.find_by_hash(hash(7)).await.unwrap(), None);
    assert_eq!(
        store.insert(key("a", "t", 30), hash(4), 100, ev()).await,
        Err(StoreError::Conflict),
        "a duplicate id"
    );
    assert_eq!(
        store.insert(key("d", "t", 30), hash(1), 100, ev()).await,
        Err(StoreError::Conflict),
        "a duplicate hash"
    );
    assert!(store.list("nobody".into()).await.unwrap().is_empty());
    store.close().await;
}

async fn limits_hold_under_racing_creates(backend: Backend) {
    let store = backend.open().await;
    let other = backend.open().await;
    let mut racing = Vec::new();
    for i in 0..20u8 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        racing.push(tokio::spawn(async move {
            s.insert(key(&format!("k{i}"), "t", 1), hash(i), 5, ev())
                .await
        }));
    }
    let mut created = 0;
    for r in racing {
        match r.await.unwrap() {
            Ok(()) => created += 1,
            Err(StoreError::LimitReached) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(created, 5);
    assert_eq!(store.list("t".into()).await.unwrap().len(), 5);
    // A delete makes room again.
    let first = store.list("t".into()).await.unwrap()[0].id.clone();
    assert!(store.remove("t".into(), first, ev()).await.unwrap());
    store
        .insert(key("again", "t", 2), hash(100), 5, ev())
        .await
        .unwrap();
    store.close().await;
    other.close().await;
}

async fn deactivate_and_remove(backend: Backend) {
    let store = backend.open().await;
    store
        .insert(key("a", "t", 1), hash(1), 100, ev())
        .await
        .unwrap();
    assert_eq!(
        store
            .deactivate("other".into(), "a".into(), 5, ev())
            .await
            .unwrap(),
        None,
        "another tenant's key"
    );
    let first = store
        .deactivate("t".into(), "a".into(), 5, ev())
        .await
        .unwrap();
    assert_eq!(first.unwrap().deactivated_at, Some(5));
    let again = store
        .deactivate("t".into(), "a".into(), 9, ev())
        .await
        .unwrap();
    assert_eq!(
        again.unwrap().deactivated_at,
        Some(5),
        "the first time stays"
    );
    assert!(
        !store
            .remove("other".into(), "a".into(), ev())
            .await
            .unwrap()
    );
    assert!(store.remove("t".into(), "a".into(), ev()).await.unwrap());
    assert!(!store.remove("t".into(), "a".into(), ev()).await.unwrap());
    assert_eq!(store.find_by_hash(hash(1)).await.unwrap(), None);
    store.close().await;
}

async fn uses_are_written_and_never_resurrect(backend: Backend) {
    let store = backend.open().await;
    store
        .insert(key("a", "t", 1), hash(1), 100, ev())
        .await
        .unwrap();
    store.record_use("a", 100);
    store.record_use("a", 50);
    assert_eq!(
        store
            .find_by_hash(hash(1))
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(100),
        "a noted use shows before it is written"
    );
    store.flush_uses().await.unwrap();
    let other = backend.open().await;
    assert_eq!(
        other.list("t".into()).await.unwrap()[0].last_used_at,
        Some(100)
    );
    store
        .deactivate("t".into(), "a".into(), 150, ev())
        .await
        .unwrap();
    store.record_use("a", 200);
    store.flush_uses().await.unwrap();
    let read = other.find_by_hash(hash(1)).await.unwrap().unwrap();
    assert_eq!(read.deactivated_at, Some(150), "a use never reactivates");
    // Pending uses are written by close.
    store.record_use("a", 300);
    store.close().await;
    assert_eq!(
        other.list("t".into()).await.unwrap()[0].last_used_at,
        Some(300)
    );
    other.close().await;
}

/// Two writers race to deactivate and delete the same keys: every call
/// answers, and the end state is one of the two orders.
async fn racing_deactivate_and_delete(backend: Backend) {
    let a = backend.open().await;
    let b = backend.open().await;
    for i in 0..20u8 {
        let id = format!("k{i}");
        a.insert(key(&id, "t", 1), hash(i), 100, ev())
            .await
            .unwrap();
        let (x, y) = (a.clone(), b.clone());
        let (i1, i2) = (id.clone(), id.clone());
        let deactivate = tokio::spawn(async move { x.deactivate("t".into(), i1, 7, ev()).await });
        let remove = tokio::spawn(async move { y.remove("t".into(), i2, ev()).await });
        let deactivated = deactivate.await.unwrap().unwrap();
        assert!(remove.await.unwrap().unwrap(), "the delete found the key");
        if let Some(record) = deactivated {
            assert_eq!(record.deactivated_at, Some(7));
        }
        assert_eq!(a.find_by_hash(hash(i)).await.unwrap(), None);
        assert_eq!(b.find_by_hash(hash(i)).await.unwrap(), None);
    }
    a.close().await;
    b.close().await;
}

/// A key that one store deactivates or deletes is refused by another that
/// had it cached, within the bound (at once on SQLite); the time is printed.
async fn another_store_refuses_within_the_bound(backend: Backend) {
    let bound = backend.bound();
    let writer = backend.open().await;
    let reader = backend.open().await;
    for (n, delete) in [(1u8, false), (2, true)] {
        let id = format!("k{n}");
        writer
            .insert(key(&id, "t", 1), hash(n), 100, ev())
            .await
            .unwrap();
        // Cached on the reader (read twice, the second from the cache once it is current).
        let deadline = Instant::now() + Duration::from_secs(5);
        while reader.cached(&hash(n)).is_none() {
            assert!(reader.find_by_hash(hash(n)).await.unwrap().is_some());
            assert!(Instant::now() < deadline, "the reader never cached the key");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if delete {
            assert!(writer.remove("t".into(), id, ev()).await.unwrap());
        } else {
            writer.deactivate("t".into(), id, 5, ev()).await.unwrap();
        }
        let acknowledged = Instant::now();
        loop {
            let asked = acknowledged.elapsed();
            let seen = reader.find_by_hash(hash(n)).await.unwrap();
            if seen.is_none_or(|k| k.deactivated_at.is_some()) {
                break;
            }
            assert!(
                asked <= bound,
                "a lookup made {asked:?} after the write still found the key active"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        eprintln!(
            "{}: refused by the other store {:?} after the write",
            if delete { "delete" } else { "deactivate" },
            acknowledged.elapsed()
        );
    }
    writer.close().await;
    reader.close().await;
}

/// Nodes (or processes) that start together on a new database all migrate
/// it without error, and a key written by one is found by the others.
async fn stores_opened_together_migrate_once(backend: Backend) {
    let backend = Arc::new(backend);
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let b = backend.clone();
            tokio::spawn(async move { b.open().await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opening {
        stores.push(o.await.unwrap());
    }
    stores[0]
        .insert(key("a", "t", 1), hash(1), 100, ev())
        .await
        .unwrap();
    for s in &stores {
        assert!(s.find_by_hash(hash(1)).await.unwrap().is_some());
        s.close().await;
    }
}

/// Each change writes its event in its own transaction, and only when the
/// change happens; events outlive their key, stay with their tenant, and
/// page newest first.
async fn events_are_written_with_their_changes(backend: Backend) {
    let store = backend.open().await;
    let created = event(EventKind::Created, "t", "a");
    store
        .insert(key("a", "t", 1), hash(1), 100, created.clone())
        .await
        .unwrap();
    store
        .insert(
            key("g", "other", 1),
            hash(2),
            100,
            event(EventKind::Created, "other", "g"),
        )
        .await
        .unwrap();
    // A failed insert writes no event.
    let refused = event(EventKind::Created, "t", "dup");
    assert_eq!(
        store
            .insert(key("dup", "t", 1), hash(1), 100, refused.clone())
            .await,
        Err(StoreError::Conflict)
    );
    assert_eq!(
        store.insert(key("full", "t", 1), hash(3), 1, refused).await,
        Err(StoreError::LimitReached)
    );
    let deactivated = event(EventKind::Deactivated, "t", "a");
    store
        .deactivate("t".into(), "a".into(), 5, deactivated.clone())
        .await
        .unwrap();
    // No change, no event: again, another tenant's, an unknown key.
    store
        .deactivate(
            "t".into(),
            "a".into(),
            6,
            event(EventKind::Deactivated, "t", "a"),
        )
        .await
        .unwrap();
    store
        .deactivate(
            "other".into(),
            "a".into(),
            6,
            event(EventKind::Deactivated, "other", "a"),
        )
        .await
        .unwrap();
    assert!(
        !store
            .remove(
                "t".into(),
                "nope".into(),
                event(EventKind::Deleted, "t", "nope")
            )
            .await
            .unwrap()
    );
    let deleted = event(EventKind::Deleted, "t", "a");
    assert!(
        store
            .remove("t".into(), "a".into(), deleted.clone())
            .await
            .unwrap()
    );
    let trail = events_of(&store, "t", None).await;
    assert_eq!(
        trail,
        [deleted.clone(), deactivated, created.clone()],
        "newest first, kept after the delete"
    );
    assert_eq!(events_of(&store, "other", None).await.len(), 1);
    assert_eq!(events_of(&store, "t", Some("g")).await, []);
    // Pages: `before` is exclusive, `limit` caps.
    let page = store
        .events(EventQuery {
            tenant: "t".into(),
            key_id: Some("a".into()),
            before: None,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    assert!(page[0].seq > page[1].seq);
    let rest = store
        .events(EventQuery {
            tenant: "t".into(),
            key_id: Some("a".into()),
            before: Some(page[1].seq),
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        [created]
    );
    // Another store (node) reads the same trail.
    let other = backend.open().await;
    assert_eq!(events_of(&other, "t", None).await.len(), 3);
    // An event id is unique: a change whose event cannot be written is not made.
    assert_eq!(
        store.insert(key("b", "t", 1), hash(4), 100, deleted).await,
        Err(StoreError::Conflict)
    );
    assert_eq!(store.find_by_hash(hash(4)).await.unwrap(), None);
    store.close().await;
    other.close().await;
}

fn roll_of(id: &str, new: &str, n: u8, at: u64, expires_at: u64, limit: u32) -> Roll {
    Roll {
        tenant: "t".into(),
        id: id.into(),
        at,
        expires_at,
        key: key(new, "t", at),
        hash: hash(n),
        tenant_limit: limit,
        events: vec![
            event(EventKind::Created, "t", new),
            event(EventKind::Rolled, "t", id),
        ],
    }
}

/// A roll writes the new key, the old key's expiry and both events
/// together, or nothing at all.
async fn rolls_are_one_transaction(backend: Backend) {
    let store = backend.open().await;
    store
        .insert(key("old", "t", 1), hash(1), 100, ev())
        .await
        .unwrap();
    let written = async |s: &Arc<dyn KeyStore>| {
        (
            s.list("t".into()).await.unwrap(),
            events_of(s, "t", None).await.len(),
        )
    };
    let before = written(&store).await;
    // Nothing is written when the roll cannot happen.
    assert_eq!(
        store.roll(roll_of("nope", "n1", 2, 10, 20, 100)).await,
        Ok(None)
    );
    assert_eq!(
        store.roll(roll_of("old", "n1", 2, 10, 20, 1)).await,
        Err(StoreError::LimitReached)
    );
    assert_eq!(
        store.roll(roll_of("old", "n1", 1, 10, 20, 100)).await,
        Err(StoreError::Conflict),
        "the new key's hash is taken"
    );
    let mut reused = roll_of("old", "n1", 2, 10, 20, 100);
    reused.events[1].id = reused.events[0].id.clone();
    assert_eq!(
        store.roll(reused).await,
        Err(StoreError::Conflict),
        "an event cannot be written, so neither is the key"
    );
    let mut other_tenant = roll_of("old", "n1", 2, 10, 20, 100);
    other_tenant.tenant = "other".into();
    assert_eq!(store.roll(other_tenant).await, Ok(None));
    assert_eq!(written(&store).await, before);

    // The roll: the old key expires at the end of the grace, the new one is found.
    let rolled = roll_of("old", "new", 2, 10, 20, 100);
    let events = rolled.events.clone();
    let old = store.roll(rolled).await.unwrap().unwrap();
    assert_eq!((old.id.as_str(), old.expires_at), ("old", Some(20)));
    let new = store.find_by_hash(hash(2)).await.unwrap().unwrap();
    assert_eq!(new.id, "new");
    assert_eq!(
        store
            .find_by_hash(hash(1))
            .await
            .unwrap()
            .unwrap()
            .expires_at,
        Some(20)
    );
    let trail = events_of(&store, "t", None).await;
    assert_eq!(trail[..2], [events[1].clone(), events[0].clone()]);
    // Rolled again within its grace: it never lives longer than it would have.
    let old = store
        .roll(roll_of("old", "new2", 3, 15, 99, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.expires_at, Some(20));
    // Expired (at its instant exactly) or deactivated: inactive, nothing written.
    let before = written(&store).await;
    assert_eq!(
        store.roll(roll_of("old", "n3", 4, 20, 30, 100)).await,
        Err(StoreError::Inactive)
    );
    store
        .deactivate("t".into(), "new".into(), 21, ev())
        .await
        .unwrap();
    let before_deactivated = written(&store).await;
    assert_eq!(before_deactivated.1, before.1 + 1);
    assert_eq!(
        store.roll(roll_of("new", "n3", 4, 22, 30, 100)).await,
        Err(StoreError::Inactive)
    );
    assert_eq!(written(&store).await, before_deactivated);
    store.close().await;
}

/// A roll's new expiry reaches another store that had the key cached,
/// within the bound (at once on SQLite), like a deactivation.
async fn another_store_sees_a_roll_within_the_bound(backend: Backend) {
    let bound = backend.bound();
    let writer = backend.open().await;
    let reader = backend.open().await;
    writer
        .insert(key("a", "t", 1), hash(1), 100, ev())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reader.cached(&hash(1)).is_none() {
        assert!(reader.find_by_hash(hash(1)).await.unwrap().is_some());
        assert!(Instant::now() < deadline, "the reader never cached the key");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer
        .roll(roll_of("a", "b", 2, 10, 10, 100))
        .await
        .unwrap();
    let acknowledged = Instant::now();
    loop {
        let asked = acknowledged.elapsed();
        let seen = reader.find_by_hash(hash(1)).await.unwrap().unwrap();
        if seen.expires_at == Some(10) {
            break;
        }
        assert!(
            asked <= bound,
            "a lookup {asked:?} after the roll still saw no expiry"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    writer.close().await;
    reader.close().await;
}

macro_rules! both {
    ($($name:ident;)*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::postgres()).await;
                }
            )*
        }
    };
}

both! {
    round_trip;
    limits_hold_under_racing_creates;
    deactivate_and_remove;
    uses_are_written_and_never_resurrect;
    racing_deactivate_and_delete;
    another_store_refuses_within_the_bound;
    stores_opened_together_migrate_once;
    events_are_written_with_their_changes;
    rolls_are_one_transaction;
    another_store_sees_a_roll_within_the_bound;
}
