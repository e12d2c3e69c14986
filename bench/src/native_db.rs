//! The host's SQLite store as the domain's `KeyStore`, so the guest's domain
//! code can run natively over exactly the store the component uses.

use sigma_keys::bindings::sigma::api_keys::store::{
    ActorVia, EventKind as K, LoggedEvent as StoredLogged, Permission as S, StoreError as E,
    StoredEvent, StoredKey,
};
use sigma_keys::store::{EventQuery, Roll as StoreRoll};
use sigma_keys_guest::domain::events::{Actor, Details, Event, EventKind, LoggedEvent, Via};
use sigma_keys_guest::domain::keys::{KeyRecord, KeyStore, Roll, StoreError};
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
        expires_at: k.expires_at,
    }
}

const KINDS: [(EventKind, K); 5] = [
    (EventKind::Created, K::Created),
    (EventKind::Deactivated, K::Deactivated),
    (EventKind::Deleted, K::Deleted),
    (EventKind::Rolled, K::Rolled),
    (EventKind::Leaked, K::Leaked),
];

const VIAS: [(Via, ActorVia); 3] = [
    (Via::Token, ActorVia::Token),
    (Via::Cli, ActorVia::Cli),
    (Via::SecretScanning, ActorVia::SecretScanning),
];

fn event_to_store(e: &Event) -> StoredEvent {
    StoredEvent {
        id: e.id.clone(),
        tenant: e.tenant.clone(),
        key_id: e.key_id.clone(),
        at: e.at,
        kind: KINDS
            .iter()
            .find(|(k, _)| *k == e.kind)
            .map_or(K::Created, |(_, s)| *s),
        via: VIAS
            .iter()
            .find(|(v, _)| *v == e.actor.via)
            .map_or(ActorVia::Cli, |(_, s)| *s),
        subject: e.actor.subject.clone(),
        details: e.details.to_json().to_string(),
    }
}

fn event_from_store(l: StoredLogged) -> LoggedEvent {
    let kind = KINDS
        .iter()
        .find(|(_, s)| *s == l.event.kind)
        .map_or(EventKind::Created, |(k, _)| *k);
    LoggedEvent {
        seq: l.seq,
        event: Event {
            details: Details::parse(kind, &l.event.details),
            id: l.event.id,
            tenant: l.event.tenant,
            key_id: l.event.key_id,
            at: l.event.at,
            kind,
            actor: Actor {
                via: VIAS
                    .iter()
                    .find(|(_, s)| *s == l.event.via)
                    .map_or(Via::Cli, |(v, _)| *v),
                subject: l.event.subject,
            },
        },
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
        expires_at: k.expires_at,
    }
}

fn err(e: E) -> StoreError {
    match e {
        E::Conflict => StoreError::Conflict,
        E::LimitReached => StoreError::LimitReached,
        E::Inactive => StoreError::Inactive,
        E::Unavailable(s) => StoreError::Unavailable(s),
    }
}

impl KeyStore for NativeDb {
    fn insert(
        &self,
        key: &KeyRecord,
        hash: &KeyHash,
        tenant_limit: u32,
        event: &Event,
    ) -> Result<(), StoreError> {
        self.0
            .insert(
                &to_store(key),
                &hash.0,
                tenant_limit,
                &event_to_store(event),
            )
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
    fn deactivate(
        &self,
        tenant: &str,
        id: &str,
        at: u64,
        event: &Event,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self
            .0
            .deactivate(tenant, id, at, &event_to_store(event))
            .map_err(err)?
            .map(from_store))
    }
    fn remove(&self, tenant: &str, id: &str, event: &Event) -> Result<bool, StoreError> {
        self.0
            .remove(tenant, id, &event_to_store(event))
            .map_err(err)
    }
    fn roll(&self, roll: &Roll<'_>) -> Result<Option<KeyRecord>, StoreError> {
        let roll = StoreRoll {
            tenant: roll.tenant.to_owned(),
            id: roll.id.to_owned(),
            at: roll.at,
            expires_at: roll.expires_at,
            key: to_store(roll.key),
            hash: roll.hash.0.to_vec(),
            tenant_limit: roll.tenant_limit,
            events: roll.events.iter().map(event_to_store).collect(),
        };
        Ok(self.0.roll(&roll).map_err(err)?.map(from_store))
    }
    fn events(
        &self,
        tenant: &str,
        key_id: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        let query = EventQuery {
            tenant: tenant.to_owned(),
            key_id: key_id.map(str::to_owned),
            before,
            limit,
        };
        Ok(self
            .0
            .events(&query)
            .map_err(err)?
            .into_iter()
            .map(event_from_store)
            .collect())
    }
    fn record_use(&self, id: &str, at: u64) -> Result<(), StoreError> {
        self.0.record_use(id, at);
        Ok(())
    }
}
