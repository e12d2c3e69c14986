//! An in-memory [`KeyStore`]: for tests, and the native baseline of the benchmarks.

use std::cell::RefCell;

use super::events::{Event, LoggedEvent};
use super::keys::{KeyRecord, KeyStore, Roll, StoreError};
use super::raw_key::KeyHash;
use super::time::Millis;

/// Keys in a vector, with counters of storage reads and use records.
#[derive(Default)]
pub struct MemoryStore {
    pub rows: RefCell<Vec<(KeyRecord, KeyHash)>>,
    /// The audit trail, oldest first; an event's place is its `seq`.
    pub events: RefCell<Vec<Event>>,
    pub reads: RefCell<usize>,
    pub uses: RefCell<usize>,
}

impl MemoryStore {
    fn check_insert(
        rows: &[(KeyRecord, KeyHash)],
        key: &KeyRecord,
        hash: &KeyHash,
        tenant_limit: u32,
    ) -> Result<(), StoreError> {
        if rows.iter().any(|(k, h)| k.id == key.id || h == hash) {
            return Err(StoreError::Conflict);
        }
        let owned = rows.iter().filter(|(k, _)| k.tenant == key.tenant).count();
        if owned >= tenant_limit as usize {
            return Err(StoreError::LimitReached);
        }
        Ok(())
    }
}

impl KeyStore for MemoryStore {
    fn insert(
        &self,
        key: &KeyRecord,
        hash: &KeyHash,
        tenant_limit: u32,
        event: &Event,
    ) -> Result<(), StoreError> {
        let mut rows = self.rows.borrow_mut();
        Self::check_insert(&rows, key, hash, tenant_limit)?;
        rows.push((key.clone(), *hash));
        self.events.borrow_mut().push(event.clone());
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
        event: &Event,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut rows = self.rows.borrow_mut();
        Ok(rows
            .iter_mut()
            .find(|(k, _)| k.tenant == tenant && k.id == id)
            .map(|(k, _)| {
                if k.deactivated_at.is_none() {
                    k.deactivated_at = Some(at);
                    self.events.borrow_mut().push(event.clone());
                }
                k.clone()
            }))
    }
    fn remove(&self, tenant: &str, id: &str, event: &Event) -> Result<bool, StoreError> {
        let mut rows = self.rows.borrow_mut();
        let before = rows.len();
        rows.retain(|(k, _)| !(k.tenant == tenant && k.id == id));
        let removed = rows.len() != before;
        if removed {
            self.events.borrow_mut().push(event.clone());
        }
        Ok(removed)
    }
    fn roll(&self, roll: &Roll<'_>) -> Result<Option<KeyRecord>, StoreError> {
        let mut rows = self.rows.borrow_mut();
        let Some(index) = rows
            .iter()
            .position(|(k, _)| k.tenant == roll.tenant && k.id == roll.id)
        else {
            return Ok(None);
        };
        if !rows[index].0.active_at(roll.at) {
            return Err(StoreError::Inactive);
        }
        Self::check_insert(&rows, roll.key, roll.hash, roll.tenant_limit)?;
        let old = &mut rows[index].0;
        old.expires_at = Some(
            old.expires_at
                .map_or(roll.expires_at, |e| e.min(roll.expires_at)),
        );
        let previous = old.clone();
        rows.push((roll.key.clone(), *roll.hash));
        self.events.borrow_mut().extend(roll.events.iter().cloned());
        Ok(Some(previous))
    }
    fn events(
        &self,
        tenant: &str,
        key_id: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        Ok(self
            .events
            .borrow()
            .iter()
            .enumerate()
            .map(|(i, e)| LoggedEvent {
                seq: i as u64 + 1,
                event: e.clone(),
            })
            .rev()
            .filter(|e| {
                e.event.tenant == tenant
                    && key_id.is_none_or(|id| e.event.key_id == id)
                    && before.is_none_or(|b| e.seq < b)
            })
            .take(limit as usize)
            .collect())
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
