//! The lookup cache of keys by hash, shared by every backend.
//!
//! A backend decides when the cache may answer (its change signal); the
//! cache keeps the records, applies the change feed (`seen` is the last
//! change applied) and tells a reader whether the cache changed while it
//! read the database (`generation`), so a record read before a change is
//! never cached after that change was applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::KeyRecord;

/// Records found by hash, kept at most this many at once.
pub const MAX_CACHED_KEYS: usize = 100_000;

#[derive(Default)]
pub struct KeyCache {
    /// The last change-feed sequence number applied.
    pub seen: i64,
    /// Bumped by every eviction; see [`KeyCache::insert_if`].
    generation: u64,
    entries: HashMap<[u8; 32], KeyRecord>,
    /// The hash of each cached key id, to evict or update by id.
    hashes: HashMap<String, [u8; 32]>,
}

impl KeyCache {
    pub fn new(seen: i64) -> KeyCache {
        KeyCache {
            seen,
            ..KeyCache::default()
        }
    }

    pub fn get(&self, hash: &[u8]) -> Option<&KeyRecord> {
        <&[u8; 32]>::try_from(hash)
            .ok()
            .and_then(|h| self.entries.get(h))
    }

    /// The value to pass to [`KeyCache::insert_if`] for a record about to be read.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.hashes.clear();
        self.generation += 1;
    }

    pub fn evict(&mut self, hash: &[u8]) {
        self.generation += 1;
        if let Ok(hash) = <[u8; 32]>::try_from(hash)
            && let Some(record) = self.entries.remove(&hash)
        {
            self.hashes.remove(&record.id);
        }
    }

    pub fn evict_id(&mut self, id: &str) {
        self.generation += 1;
        if let Some(hash) = self.hashes.remove(id) {
            self.entries.remove(&hash);
        }
    }

    /// Caches a record read while the cache was at `generation`, unless a
    /// change was applied since (the record may predate it).
    pub fn insert_if(&mut self, generation: u64, hash: &[u8], record: KeyRecord) {
        let Ok(hash) = <[u8; 32]>::try_from(hash) else {
            return;
        };
        if generation != self.generation {
            return;
        }
        if self.entries.len() >= MAX_CACHED_KEYS {
            self.entries.clear();
            self.hashes.clear();
        }
        self.hashes.insert(record.id.clone(), hash);
        self.entries.insert(hash, record);
    }

    /// Shows a use in the cached record, so the component does not report
    /// it again within the flush interval.
    pub fn note_use(&mut self, id: &str, at: u64) {
        if let Some(hash) = self.hashes.get(id)
            && let Some(record) = self.entries.get_mut(hash)
        {
            record.last_used_at = record.last_used_at.max(Some(at));
        }
    }
}

/// `lastUsedAt` values noted but not yet written, by key id, shared by a
/// store and the writer that flushes them; a value only ever moves forward.
#[derive(Clone, Default)]
pub struct PendingUses(Arc<Mutex<HashMap<String, u64>>>);

impl PendingUses {
    pub fn note(&self, id: &str, at: u64) {
        if let Ok(mut pending) = self.0.lock() {
            let entry = pending.entry(id.to_owned()).or_insert(at);
            *entry = (*entry).max(at);
        }
    }

    /// Shows a use that is not written yet.
    pub fn apply(&self, record: &mut KeyRecord) {
        if let Some(at) = self.0.lock().ok().and_then(|p| p.get(&record.id).copied()) {
            record.last_used_at = record.last_used_at.max(Some(at));
        }
    }

    /// Everything noted so far, to write; empty when there is nothing.
    pub fn take(&self) -> HashMap<String, u64> {
        self.0
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// Puts back a batch that could not be written, for the next try.
    pub fn restore(&self, batch: HashMap<String, u64>) {
        for (id, at) in batch {
            self.note(&id, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            tenant: "t".into(),
            name: "n".into(),
            permissions: vec![],
            created_at: 1,
            last_used_at: None,
            deactivated_at: None,
            expires_at: None,
        }
    }

    #[test]
    fn a_record_read_before_an_eviction_is_not_cached_after_it() {
        let mut cache = KeyCache::new(0);
        let before = cache.generation();
        cache.evict(&[1; 32]);
        cache.insert_if(before, &[1; 32], record("a"));
        assert!(cache.get(&[1; 32]).is_none());
        let now = cache.generation();
        cache.insert_if(now, &[1; 32], record("a"));
        assert!(cache.get(&[1; 32]).is_some());
        cache.evict_id("a");
        assert!(cache.get(&[1; 32]).is_none());
    }

    #[test]
    fn pending_uses_only_move_forward_and_survive_a_failed_write() {
        let uses = PendingUses::default();
        uses.note("a", 10);
        uses.note("a", 5);
        let mut r = record("a");
        uses.apply(&mut r);
        assert_eq!(r.last_used_at, Some(10));
        let batch = uses.take();
        assert!(uses.take().is_empty());
        uses.note("a", 7);
        uses.restore(batch);
        assert_eq!(uses.take().get("a"), Some(&10));
    }
}
