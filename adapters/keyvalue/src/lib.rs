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
//!
//! A record is form-encoded (`application/x-www-form-urlencoded`, so it holds
//! no comma and can be passed to `-Skeyvalue-in-memory-data`):
//!
//! ```text
//! id=apikey-…&tenant=acme&name=Shopify+Sync&permissions=read+update-data&created-at=1772971200000&last-used-at=&deactivated-at=
//! ```
//!
//! Timestamps are milliseconds since the Unix epoch; empty means never.
//! Verifying a key costs one `get`; listing a tenant scans the
//! `sigma-keys/key/` entries, and so does creating one (to count the
//! tenant's keys against its limit). `wasi:keyvalue` has no transactions,
//! so two creates racing at the limit may both succeed.

/// Where records live, by key hash.
pub const KEY_PREFIX: &str = "sigma-keys/key/";
/// The index from key id to key hash.
pub const ID_PREFIX: &str = "sigma-keys/id/";

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

    use exports::sigma::api_keys::store::{Guest, Permission, StoreError, StoredKey as KeyRecord};
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
        }
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
        fn insert(key: KeyRecord, hash: Vec<u8>, tenant_limit: u32) -> Result<(), StoreError> {
            if Self::list(key.tenant.clone())?.len() >= tenant_limit as usize {
                return Err(StoreError::LimitReached);
            }
            let b = bucket()?;
            let entry = key_entry(&hash);
            let index = id_entry(&key.id);
            if b.exists(&entry).map_err(unavailable)? || b.exists(&index).map_err(unavailable)? {
                return Err(StoreError::Conflict);
            }
            write(&b, &entry, &to_stored(&key))?;
            b.set(&index, hex(&hash).as_bytes()).map_err(unavailable)
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
        ) -> Result<Option<KeyRecord>, StoreError> {
            let b = bucket()?;
            let Some((entry, mut key)) = entry_of(&b, &tenant, &id)? else {
                return Ok(None);
            };
            if key.deactivated_at.is_none() {
                key.deactivated_at = Some(at);
                write(&b, &entry, &key)?;
            }
            Ok(Some(from_stored(key)))
        }

        fn remove(tenant: String, id: String) -> Result<bool, StoreError> {
            let b = bucket()?;
            let Some((entry, _)) = entry_of(&b, &tenant, &id)? else {
                return Ok(false);
            };
            b.delete(&entry).map_err(unavailable)?;
            b.delete(&id_entry(&id)).map_err(unavailable)?;
            Ok(true)
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
        };
        let encoded = k.encode();
        assert!(!encoded.contains(','), "{encoded}");
        assert_eq!(
            encoded,
            "id=apikey-x&tenant=acme%2C+inc&name=Sync+%3D+prod+%26+more&permissions=read+update-data&created-at=1772971200000&last-used-at=&deactivated-at=1772971300000"
        );
        assert_eq!(StoredKey::decode(encoded.as_bytes()), Ok(k));
        assert!(StoredKey::decode(b"id=x").is_err());
        assert!(
            StoredKey::decode(b"id=x&tenant=t&name=n&permissions=read&created-at=soon").is_err()
        );
    }
}
