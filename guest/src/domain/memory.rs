//! An in-memory [`KeyStore`]: for tests, and the native baseline of the benchmarks.

use std::cell::RefCell;

use super::keys::{KeyRecord, KeyStore, StoreError};
use super::raw_key::KeyHash;
use super::time::Millis;

/// Keys in a vector, with counters of storage reads and use records.
#[derive(Default)]
pub struct MemoryStore {
    pub rows: RefCell<Vec<(KeyRecord, KeyHash)>>,
    pub reads: RefCell<usize>,
    pub uses: RefCell<usize>,
}

impl KeyStore for MemoryStore {
    fn insert(&self, key: &KeyRecord, hash: &KeyHash, tenant_limit: u32) -> Result<(), StoreError> {
        let mut rows = self.rows.borrow_mut();
        if rows.iter().any(|(k, h)| k.id == key.id || h == hash) {
            return Err(StoreError::Conflict);
        }
        let owned = rows.iter().filter(|(k, _)| k.tenant == key.tenant).count();
        if owned >= tenant_limit as usize {
            return Err(StoreError::LimitReached);
        }
        rows.push((key.clone(), *hash));
        Ok(())
    }
    fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        *self.reads.borrow_mut() += 1;
        Ok(self
            .rows
            .borrow()
            .iter()
            .find(|(_, h)| h == hash)
            .map(|(k, _)| k.clone()))
    }
    fn list(&self, tenant: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self
            .rows
            .borrow()
            .iter()
            .filter(|(k, _)| k.tenant == tenant)
            .map(|(k, _)| k.clone())
            .collect())
    }
    fn deactivate(
        &self,
        tenant: &str,
        id: &str,
        at: Millis,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut rows = self.rows.borrow_mut();
        Ok(rows
            .iter_mut()
            .find(|(k, _)| k.tenant == tenant && k.id == id)
            .map(|(k, _)| {
                k.deactivated_at.get_or_insert(at);
                k.clone()
            }))
    }
    fn remove(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut rows = self.rows.borrow_mut();
        let before = rows.len();
        rows.retain(|(k, _)| !(k.tenant == tenant && k.id == id));
        Ok(rows.len() != before)
    }
    fn record_use(&self, id: &str, at: Millis) -> Result<(), StoreError> {
        *self.uses.borrow_mut() += 1;
        for (k, _) in self
            .rows
            .borrow_mut()
            .iter_mut()
            .filter(|(k, _)| k.id == id)
        {
            k.last_used_at = Some(k.last_used_at.map_or(at, |l| l.max(at)));
        }
        Ok(())
    }
}
