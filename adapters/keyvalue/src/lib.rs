//! `sigma:api-keys/store` on top of `wasi:keyvalue/store@0.2.0-draft`, so the
//! sigma-keys component can run on hosts that offer only standard WASI
//! (`wasmtime serve`, wasmCloud). Composed with the service component by
//! `just compose`.
//!
//! Storage layout, in the bucket `""` (the one `wasmtime serve -Skeyvalue`
//! offers):
//!
//! | key | value |
//! | --- | --- |
//! | `sigma-keys/key/<sha256 of the raw key, 64 lower-case hex>` | the record as JSON (below) |
//! | `sigma-keys/id/<key id>` | the same 64 hex characters |
//! | `sigma-keys/event/<seq, 20 digits>` | an audit event (below) |
//! | `sigma-keys/event-seq` | the last `seq` given to an event |
//!
//! A record is form-encoded (`application/x-www-form-urlencoded`, so it holds
//! no comma and can be passed to `-Skeyvalue-in-memory-data`):
//!
//! ```text
//! id=apikey-…&tenant=acme&name=Shopify+Sync&permissions=read+update-data&created-at=1772971200000&last-used-at=&deactivated-at=&expires-at=
//! ```
//!
//! and an event the same way
//! (`id=event-…&tenant=acme&key-id=apikey-…&at=…&kind=created&via=token&subject=ops&details=%7B%7D`,
//! `subject` left out when there is none).
//!
//! Timestamps are milliseconds since the Unix epoch; empty means never.
//! Verifying a key costs one `get`; listing a tenant scans the
//! `sigma-keys/key/` entries, and so does creating one (to count the
//! tenant's keys against its limit); listing events scans the
//! `sigma-keys/event/` entries. `wasi:keyvalue` has no transactions, so two
//! creates racing at the limit may both succeed, and a change and its event
//! are two writes, the change first: a host that fails between them keeps
//! the change without its event. Use the SQLite or PostgreSQL store where
//! the one-transaction rules matter.

/// Where records live, by key hash.
pub const KEY_PREFIX: &str = "sigma-keys/key/";
/// The index from key id to key hash.
pub const ID_PREFIX: &str = "sigma-keys/id/";
/// Where events live, by `seq`.
pub const EVENT_PREFIX: &str = "sigma-keys/event/";
/// The last `seq` given out.
pub const EVENT_SEQ: &str = "sigma-keys/event-seq";

/// A record as stored in the key-value store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredKey {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub created_at: u64,
    pub last_used_at: Option<u64>,
    pub deactivated_at: Option<u64>,
    pub expires_at: Option<u64>,
}

impl StoredKey {
    /// The form-encoded value.
    pub fn encode(&self) -> String {
        let time = |t: Option<u64>| t.map(|t| t.to_string()).unwrap_or_default();
        form_urlencoded::Serializer::new(String::new())
            .append_pair("id", &self.id)
            .append_pair("tenant", &self.tenant)
            .append_pair("name", &self.name)
            .append_pair("permissions", &self.permissions.join(" "))
            .append_pair("created-at", &self.created_at.to_string())
            .append_pair("last-used-at", &time(self.last_used_at))
            .append_pair("deactivated-at", &time(self.deactivated_at))
            .append_pair("expires-at", &time(self.expires_at))
            .finish()
    }

    /// Parses a form-encoded value; every field must be present and valid.
    pub fn decode(bytes: &[u8]) -> Result<StoredKey, String> {
        let mut key = StoredKey::default();
        let mut seen = Vec::new();
        let time = |v: &str| v.parse::<u64>().map_err(|_| format!("bad timestamp {v:?}"));
        for (field, value) in form_urlencoded::parse(bytes) {
            match field.as_ref() {
                "id" => key.id = value.into_owned(),
                "tenant" => key.tenant = value.into_owned(),
                "name" => key.name = value.into_owned(),
                "permissions" => {
                    key.permissions = value.split_whitespace().map(str::to_owned).collect()
                }
                "created-at" => key.created_at = time(&value)?,
                "last-used-at" => {
                    key.last_used_at = (!value.is_empty()).then(|| time(&value)).transpose()?
                }
                "deactivated-at" => {
                    key.deactivated_at = (!value.is_empty()).then(|| time(&value)).transpose()?
                }
                // Absent in records written before expiry existed.
                "expires-at" => {
                    key.expires_at = (!value.is_empty()).then(|| time(&value)).transpose()?
                }
                other => return Err(format!("unknown field {other:?}")),
            }
            seen.push(field.into_owned());
        }
        for required in ["id", "tenant", "name", "permissions", "created-at"] {
            if !seen.iter().any(|s| s == required) {
                return Err(format!("missing field {required}"));
            }
        }
        Ok(key)
    }
}

/// An audit event as stored in the key-value store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub id: String,
    pub tenant: String,
    pub key_id: String,
    pub at: u64,
    pub kind: String,
    pub via: String,
    pub subject: Option<String>,
    pub details: String,
}

impl StoredEvent {
    /// The form-encoded value.
    pub fn encode(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        out.append_pair("seq", &self.seq.to_string())
            .append_pair("id", &self.id)
            .append_pair("tenant", &self.tenant)
            .append_pair("key-id", &self.key_id)
            .append_pair("at", &self.at.to_string())
            .append_pair("kind", &self.kind)
            .append_pair("via", &self.via);
        if let Some(subject) = &self.subject {
            out.append_pair("subject", subject);
        }
        out.append_pair("details", &self.details).finish()
    }

    /// Parses a form-encoded value; every field but `subject` must be present.
    pub fn decode(bytes: &[u8]) -> Result<StoredEvent, String> {
        let mut e = StoredEvent::default();
        let mut seen = Vec::new();
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("bad number {v:?}"));
        for (field, value) in form_urlencoded::parse(bytes) {
            match field.as_ref() {
                "seq" => e.seq = number(&value)?,
                "id" => e.id = value.into_owned(),
                "tenant" => e.tenant = value.into_owned(),
                "key-id" => e.key_id = value.into_owned(),
                "at" => e.at = number(&value)?,
                "kind" => e.kind = value.into_owned(),
                "via" => e.via = value.into_owned(),
                "subject" => e.subject = Some(value.into_owned()),
                "details" => e.details = value.into_owned(),
                other => return Err(format!("unknown field {other:?}")),
            }
            seen.push(field.into_owned());
        }
        for required in [
            "seq", "id", "tenant", "key-id", "at", "kind", "via", "details",
        ] {
            if !seen.iter().any(|s| s == required) {
                return Err(format!("missing field {required}"));
            }
        }
        Ok(e)
    }
}

/// The entry that holds the event with this `seq` (zero-padded, so entries sort by it).
pub fn event_entry(seq: u64) -> String {
    format!("{EVENT_PREFIX}{seq:020}")
}

/// Lower-case hex of a hash.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The entry that holds the record of the key with this hash.
pub fn key_entry(hash: &[u8]) -> String {
    format!("{KEY_PREFIX}{}", hex(hash))
}

/// The entry that maps a key id to its hash.
pub fn id_entry(id: &str) -> String {
    format!("{ID_PREFIX}{id}")
}

#[cfg(target_arch = "wasm32")]
mod component {
    use super::*;

    wit_bindgen::generate!({
        world: "keyvalue-adapter",
        path: "../../wit",
        generate_all,
    });

    use exports::sigma::api_keys::store::{
        ActorVia, EventKind, Guest, LoggedEvent, Permission, StoreError, StoredEvent as Event,
        StoredKey as KeyRecord,
    };
    use wasi::keyvalue::store as kv;

    struct Adapter;

    export!(Adapter);

    const PERMISSIONS: [(Permission, &str); 5] = [
        (Permission::Read, "read"),
        (Permission::UpdateData, "update-data"),
        (Permission::DeleteData, "delete-data"),
        (Permission::UpdateModel, "update-model"),
        (Permission::DeleteModel, "delete-model"),
    ];

    const KINDS: [(EventKind, &str); 5] = [
        (EventKind::Created, "created"),
        (EventKind::Deactivated, "deactivated"),
        (EventKind::Deleted, "deleted"),
        (EventKind::Rolled, "rolled"),
        (EventKind::Leaked, "leaked"),
    ];

    const VIAS: [(ActorVia, &str); 3] = [
        (ActorVia::Token, "token"),
        (ActorVia::Cli, "cli"),
        (ActorVia::SecretScanning, "secret-scanning"),
    ];

    fn unavailable(e: kv::Error) -> StoreError {
        StoreError::Unavailable(format!("wasi:keyvalue: {e:?}"))
    }

    fn bucket() -> Result<kv::Bucket, StoreError> {
        kv::open("").map_err(unavailable)
    }

    fn to_stored(k: &KeyRecord) -> StoredKey {
        StoredKey {
            id: k.id.clone(),
            tenant: k.tenant.clone(),
            name: k.name.clone(),
            permissions: k
                .permissions
                .iter()
                .filter_map(|p| {
                    PERMISSIONS
                        .iter()
                        .find(|(q, _)| q == p)
                        .map(|(_, n)| (*n).to_owned())
                })
                .collect(),
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            deactivated_at: k.deactivated_at,
            expires_at: k.expires_at,
        }
    }

    fn from_stored(s: StoredKey) -> KeyRecord {
        KeyRecord {
            permissions: s
                .permissions
                .iter()
                .filter_map(|n| PERMISSIONS.iter().find(|(_, m)| m == n).map(|(p, _)| *p))
                .collect(),
            id: s.id,
            tenant: s.tenant,
            name: s.name,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            deactivated_at: s.deactivated_at,
            expires_at: s.expires_at,
        }
    }

    /// Writes events under fresh `seq` numbers, after the change they record.
    fn append_events(b: &kv::Bucket, events: &[Event]) -> Result<(), StoreError> {
        let mut seq = match b.get(EVENT_SEQ).map_err(unavailable)? {
            None => 0,
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .parse::<u64>()
                .map_err(|_| StoreError::Unavailable(format!("bad {EVENT_SEQ} entry")))?,
        };
        for e in events {
            seq += 1;
            let stored = StoredEvent {
                seq,
                id: e.id.clone(),
                tenant: e.tenant.clone(),
                key_id: e.key_id.clone(),
                at: e.at,
                kind: KINDS
                    .iter()
                    .find(|(k, _)| *k == e.kind)
                    .map_or("created", |(_, n)| n)
                    .to_owned(),
                via: VIAS
                    .iter()
                    .find(|(v, _)| *v == e.via)
                    .map_or("cli", |(_, n)| n)
                    .to_owned(),
                subject: e.subject.clone(),
                details: e.details.clone(),
            };
            b.set(&event_entry(seq), stored.encode().as_bytes())
                .map_err(unavailable)?;
            b.set(EVENT_SEQ, seq.to_string().as_bytes())
                .map_err(unavailable)?;
        }
        Ok(())
    }

    fn logged(e: StoredEvent) -> Result<LoggedEvent, StoreError> {
        let bad = |what: &str| StoreError::Unavailable(format!("event {} has a bad {what}", e.seq));
        Ok(LoggedEvent {
            seq: e.seq,
            event: Event {
                kind: KINDS
                    .iter()
                    .find(|(_, n)| *n == e.kind)
                    .map(|(k, _)| *k)
                    .ok_or_else(|| bad("kind"))?,
                via: VIAS
                    .iter()
                    .find(|(_, n)| *n == e.via)
                    .map(|(v, _)| *v)
                    .ok_or_else(|| bad("via"))?,
                id: e.id,
                tenant: e.tenant,
                key_id: e.key_id,
                at: e.at,
                subject: e.subject,
                details: e.details,
            },
        })
    }

    /// Stores a new key and its id index after the checks `insert` makes.
    fn add_key(
        b: &kv::Bucket,
        key: &KeyRecord,
        hash: &[u8],
        tenant_limit: u32,
    ) -> Result<(), StoreError> {
        if Adapter::list(key.tenant.clone())?.len() >= tenant_limit as usize {
            return Err(StoreError::LimitReached);
        }
        let entry = key_entry(hash);
        let index = id_entry(&key.id);
        if b.exists(&entry).map_err(unavailable)? || b.exists(&index).map_err(unavailable)? {
            return Err(StoreError::Conflict);
        }
        write(b, &entry, &to_stored(key))?;
        b.set(&index, hex(hash).as_bytes()).map_err(unavailable)
    }

    fn read(b: &kv::Bucket, entry: &str) -> Result<Option<StoredKey>, StoreError> {
        match b.get(entry).map_err(unavailable)? {
            None => Ok(None),
            Some(bytes) => StoredKey::decode(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Unavailable(format!("bad record at {entry}: {e}"))),
        }
    }

    fn write(b: &kv::Bucket, entry: &str, key: &StoredKey) -> Result<(), StoreError> {
        b.set(entry, key.encode().as_bytes()).map_err(unavailable)
    }

    /// The record entry of a tenant's key id.
    fn entry_of(
        b: &kv::Bucket,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(String, StoredKey)>, StoreError> {
        let Some(hash) = b.get(&id_entry(id)).map_err(unavailable)? else {
            return Ok(None);
        };
        let entry = format!("{KEY_PREFIX}{}", String::from_utf8_lossy(&hash));
        Ok(read(b, &entry)?
            .filter(|k| k.tenant == tenant)
            .map(|k| (entry, k)))
    }

    impl Guest for Adapter {
        fn insert(
            key: KeyRecord,
            hash: Vec<u8>,
            tenant_limit: u32,
            event: Event,
        ) -> Result<(), StoreError> {
            let b = bucket()?;
            add_key(&b, &key, &hash, tenant_limit)?;
            append_events(&b, &[event])
        }

        fn find_by_hash(hash: Vec<u8>) -> Result<Option<KeyRecord>, StoreError> {
            Ok(read(&bucket()?, &key_entry(&hash))?.map(from_stored))
        }

        fn list(tenant: String) -> Result<Vec<KeyRecord>, StoreError> {
            let b = bucket()?;
            let mut found = Vec::new();
            let mut cursor = None;
            loop {
                let page = b.list_keys(cursor).map_err(unavailable)?;
                for entry in page.keys.iter().filter(|k| k.starts_with(KEY_PREFIX)) {
                    if let Some(k) = read(&b, entry)?.filter(|k| k.tenant == tenant) {
                        found.push(k);
                    }
                }
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(found.into_iter().map(from_stored).collect())
        }

        fn deactivate(
            tenant: String,
            id: String,
            at: u64,
            event: Event,
        ) -> Result<Option<KeyRecord>, StoreError> {
            let b = bucket()?;
            let Some((entry, mut key)) = entry_of(&b, &tenant, &id)? else {
                return Ok(None);
            };
            if key.deactivated_at.is_none() {
                key.deactivated_at = Some(at);
                write(&b, &entry, &key)?;
                append_events(&b, &[event])?;
            }
            Ok(Some(from_stored(key)))
        }

        fn remove(tenant: String, id: String, event: Event) -> Result<bool, StoreError> {
            let b = bucket()?;
            let Some((entry, _)) = entry_of(&b, &tenant, &id)? else {
                return Ok(false);
            };
            b.delete(&entry).map_err(unavailable)?;
            b.delete(&id_entry(&id)).map_err(unavailable)?;
            append_events(&b, &[event])?;
            Ok(true)
        }

        #[allow(clippy::too_many_arguments)]
        fn roll(
            tenant: String,
            id: String,
            at: u64,
            expires_at: u64,
            key: KeyRecord,
            hash: Vec<u8>,
            tenant_limit: u32,
            events: Vec<Event>,
        ) -> Result<Option<KeyRecord>, StoreError> {
            let b = bucket()?;
            let Some((entry, mut old)) = entry_of(&b, &tenant, &id)? else {
                return Ok(None);
            };
            if old.deactivated_at.is_some() || old.expires_at.is_some_and(|e| e <= at) {
                return Err(StoreError::Inactive);
            }
            add_key(&b, &key, &hash, tenant_limit)?;
            old.expires_at = Some(old.expires_at.map_or(expires_at, |e| e.min(expires_at)));
            write(&b, &entry, &old)?;
            append_events(&b, &events)?;
            Ok(Some(from_stored(old)))
        }

        fn events(
            tenant: String,
            key_id: Option<String>,
            before: Option<u64>,
            limit: u32,
        ) -> Result<Vec<LoggedEvent>, StoreError> {
            let b = bucket()?;
            let mut found = Vec::new();
            let mut cursor = None;
            loop {
                let page = b.list_keys(cursor).map_err(unavailable)?;
                for entry in page.keys.iter().filter(|k| k.starts_with(EVENT_PREFIX)) {
                    let Some(bytes) = b.get(entry).map_err(unavailable)? else {
                        continue;
                    };
                    let e = StoredEvent::decode(&bytes).map_err(|e| {
                        StoreError::Unavailable(format!("bad event at {entry}: {e}"))
                    })?;
                    if e.tenant == tenant
                        && key_id.as_ref().is_none_or(|id| *id == e.key_id)
                        && before.is_none_or(|b| e.seq < b)
                    {
                        found.push(e);
                    }
                }
                match page.cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            found.sort_by_key(|e| std::cmp::Reverse(e.seq));
            found.truncate(limit as usize);
            found.into_iter().map(logged).collect()
        }

        fn record_use(id: String, at: u64) -> Result<(), StoreError> {
            let b = bucket()?;
            let Some(hash) = b.get(&id_entry(&id)).map_err(unavailable)? else {
                return Ok(());
            };
            let entry = format!("{KEY_PREFIX}{}", String::from_utf8_lossy(&hash));
            if let Some(mut key) = read(&b, &entry)?
                && key.last_used_at.is_none_or(|last| last < at)
            {
                key.last_used_at = Some(at);
                write(&b, &entry, &key)?;
            }
            Ok(())
        }
    }

    impl exports::sigma::api_keys::request_log::Guest for Adapter {
        fn identify(tenant: Option<String>, key_id: Option<String>, subject: Option<String>) {
            // Stock hosts have no request log of ours: one stderr line per request.
            let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            eprintln!(
                "sigma-keys: tenant={} key_id={} subject={}",
                show(tenant),
                show(key_id),
                show(subject)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(key_entry(&[0xab, 0x01]), "sigma-keys/key/ab01");
        assert_eq!(id_entry("apikey-x"), "sigma-keys/id/apikey-x");
    }

    #[test]
    fn records_round_trip_without_commas() {
        let k = StoredKey {
            id: "apikey-x".into(),
            tenant: "acme, inc".into(),
            name: "Sync = prod & more".into(),
            permissions: vec!["read".into(), "update-data".into()],
            created_at: 1_772_971_200_000,
            last_used_at: None,
            deactivated_at: Some(1_772_971_300_000),
            expires_at: Some(1_772_971_400_000),
        };
        let encoded = k.encode();
        assert!(!encoded.contains(','), "{encoded}");
        assert_eq!(
            encoded,
            "id=apikey-x&tenant=acme%2C+inc&name=Sync+%3D+prod+%26+more&permissions=read+update-data&created-at=1772971200000&last-used-at=&deactivated-at=1772971300000&expires-at=1772971400000"
        );
        assert_eq!(StoredKey::decode(encoded.as_bytes()), Ok(k));
        assert!(StoredKey::decode(b"id=x").is_err());
        assert!(
            StoredKey::decode(b"id=x&tenant=t&name=n&permissions=read&created-at=soon").is_err()
        );
        // Records from before expiry existed still read.
        let old = StoredKey::decode(
            b"id=x&tenant=t&name=n&permissions=read&created-at=1&last-used-at=&deactivated-at=",
        )
        .unwrap();
        assert_eq!(old.expires_at, None);
    }

    #[test]
    fn events_round_trip_and_sort_by_entry() {
        let e = StoredEvent {
            seq: 7,
            id: "event-x".into(),
            tenant: "acme".into(),
            key_id: "apikey-x".into(),
            at: 1_772_971_200_000,
            kind: "rolled".into(),
            via: "token".into(),
            subject: Some("ops, inc".into()),
            details: r#"{"newKeyId":"apikey-y","gracePeriodSeconds":5}"#.into(),
        };
        let encoded = e.encode();
        assert!(!encoded.contains(','), "{encoded}");
        assert_eq!(StoredEvent::decode(encoded.as_bytes()), Ok(e.clone()));
        let none = StoredEvent { subject: None, ..e };
        assert_eq!(StoredEvent::decode(none.encode().as_bytes()), Ok(none));
        assert!(event_entry(9) < event_entry(10));
        assert!(StoredEvent::decode(b"seq=1").is_err());
    }
}
