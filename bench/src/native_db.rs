//! The host's SQLite store as the domain's `KeyStore`, so the guest's domain
//! code can run natively over exactly the store the component uses.

use sigma_keys::bindings::sigma::api_keys::store::{Permission as S, StoreError as E, StoredKey};
use sigma_keys_guest::domain::keys::{KeyRecord, KeyStore, StoreError};
use sigma_keys_guest::domain::permission::Permission as P;
use sigma_keys_guest::domain::raw_key::KeyHash;

pub struct NativeDb(pub sigma_keys::store::sqlite::Db);

const PAIRS: [(P, S); 5] = [
    (P::Read, S::Read),
    (P::UpdateData, S::UpdateData),
    (P::DeleteData, S::DeleteData),
    (P::UpdateModel, S::UpdateModel),
    (P::DeleteModel, S::DeleteModel),
];

fn to_store(k: &KeyRecord) -> StoredKey {
    StoredKey {
        id: k.id.clone(),
        tenant: k.tenant.clone(),
        name: k.name.clone(),
        permissions: k
            .permissions
            .iter()
            .filter_map(|p| PAIRS.iter().find(|(q, _)| q == p).map(|(_, s)| *s))
            .collect(),
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        deactivated_at: k.deactivated_at,
    }
}

fn from_store(k: StoredKey) -> KeyRecord {
    KeyRecord {
        permissions: k
            .permissions
            .iter()
            .filter_map(|s| PAIRS.iter().find(|(_, t)| t == s).map(|(p, _)| *p))
            .collect(),
        id: k.id,
        tenant: k.tenant,
        name: k.name,
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        deactivated_at: k.deactivated_at,
    }
}

fn err(e: E) -> StoreError {
    match e {
        E::Conflict => StoreError::Conflict,
        E::LimitReached => StoreError::LimitReached,
        E::Unavailable(s) => StoreError::Unavailable(s),
    }
}

impl KeyStore for NativeDb {
    fn insert(&self, key: &KeyRecord, hash: &KeyHash, tenant_limit: u32) -> Result<(), StoreError> {
        self.0
            .insert(&to_store(key), &hash.0, tenant_limit)
            .map_err(err)
    }
    fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.0.find_by_hash(&hash.0).map_err(err)?.map(from_store))
    }
    fn list(&self, tenant: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self
            .0
            .list(tenant)
            .map_err(err)?
            .into_iter()
            .map(from_store)
            .collect())
    }
    fn deactivate(&self, tenant: &str, id: &str, at: u64) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self
            .0
            .deactivate(tenant, id, at)
            .map_err(err)?
            .map(from_store))
    }
    fn remove(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        self.0.remove(tenant, id).map_err(err)
    }
    fn record_use(&self, id: &str, at: u64) -> Result<(), StoreError> {
        self.0.record_use(id, at);
        Ok(())
    }
}
