//! The key lifecycle over a [`KeyStore`]: create, list, deactivate, delete, verify.

use serde_json::{Value, json};

use super::error::{ApiError, ErrorCode};
use super::permission::Permission;
use super::random;
use super::raw_key::{KeyFormatError, KeyHash, RawKey};
use super::routes::{self, RouteError};
use super::time::{Millis, format_rfc3339, now_millis};

/// Prefix of every key id.
pub const ID_PREFIX: &str = "apikey-";
/// Random characters after the id prefix.
pub const ID_RANDOM_LEN: usize = 20;
/// Longest key name, in characters, after trimming.
pub const NAME_MAX_CHARS: usize = 200;
/// Longest tenant, in characters.
pub const TENANT_MAX_CHARS: usize = 128;
/// `lastUsedAt` is written at most this often per key.
pub const LAST_USED_INTERVAL_MS: Millis = 1000;

/// A key as stored (never with its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub permissions: Vec<Permission>,
    pub created_at: Millis,
    pub last_used_at: Option<Millis>,
    pub deactivated_at: Option<Millis>,
}

impl KeyRecord {
    pub fn active(&self) -> bool {
        self.deactivated_at.is_none()
    }

    fn permission_names(&self) -> Vec<&'static str> {
        self.permissions.iter().map(|p| p.name()).collect()
    }

    /// The list and deactivate shape: `deactivatedAt` only once deactivated.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "permissions": self.permission_names(),
            "active": self.active(),
            "createdAt": format_rfc3339(self.created_at),
            "lastUsedAt": self.last_used_at.map(format_rfc3339),
        });
        if let (Some(at), Some(obj)) = (self.deactivated_at, v.as_object_mut()) {
            obj.insert("deactivatedAt".into(), json!(format_rfc3339(at)));
        }
        v
    }

    /// The create shape: exactly `{id, name, rawKey, permissions, createdAt}`.
    pub fn to_created_json(&self, raw: &RawKey) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "rawKey": raw.expose(),
            "permissions": self.permission_names(),
            "createdAt": format_rfc3339(self.created_at),
        })
    }
}

/// Why storage failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    Conflict,
    /// The tenant already has the most keys allowed; nothing was written.
    LimitReached,
    Unavailable(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict => ApiError::internal("storage conflict"),
            StoreError::LimitReached => ApiError::new(
                ErrorCode::KeyLimitReached,
                "This tenant has the most API keys allowed. Delete keys it no longer needs, then retry.",
            ),
            StoreError::Unavailable(why) => {
                eprintln!("sigma-keys component: store unavailable: {why}");
                ApiError::new(
                    ErrorCode::StoreUnavailable,
                    "The key store is unavailable right now. Retry shortly.",
                )
            }
        }
    }
}

/// The storage the lifecycle needs; `sigma:api-keys/store` in the component.
pub trait KeyStore {
    /// Stores a new key unless its tenant already has `tenant_limit` keys.
    fn insert(&self, key: &KeyRecord, hash: &KeyHash, tenant_limit: u32) -> Result<(), StoreError>;
    fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError>;
    fn list(&self, tenant: &str) -> Result<Vec<KeyRecord>, StoreError>;
    fn deactivate(
        &self,
        tenant: &str,
        id: &str,
        at: Millis,
    ) -> Result<Option<KeyRecord>, StoreError>;
    fn remove(&self, tenant: &str, id: &str) -> Result<bool, StoreError>;
    fn record_use(&self, id: &str, at: Millis) -> Result<(), StoreError>;
}

/// A key that passed verification, and the permission it was checked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub key: KeyRecord,
    pub permission: Permission,
}

impl Verified {
    pub fn to_json(&self) -> Value {
        json!({
            "valid": true,
            "keyId": self.key.id,
            "tenant": self.key.tenant,
            "permissions": self.key.permission_names(),
            "permission": self.permission.name(),
        })
    }
}

/// Whether `tenant` is 1 to [`TENANT_MAX_CHARS`] characters of
/// `[A-Za-z0-9._:-]`: it reaches upstreams as `X-Sigma-Tenant`, so it must
/// not hold separators, spaces or anything a header parser could split.
pub fn is_valid_tenant(tenant: &str) -> bool {
    (1..=TENANT_MAX_CHARS).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn check_tenant(tenant: &str) -> Result<(), ApiError> {
    if !is_valid_tenant(tenant) {
        return Err(ApiError::invalid_request(format!(
            "tenant must be 1 to {TENANT_MAX_CHARS} characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    Ok(())
}

/// The trimmed name, or an error naming the field.
pub fn check_name(name: &str) -> Result<String, ApiError> {
    let trimmed = name.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > NAME_MAX_CHARS {
        return Err(ApiError::invalid_request(format!(
            "name must be 1 to {NAME_MAX_CHARS} characters after trimming (got {chars})"
        )));
    }
    if trimmed.chars().any(is_hidden) {
        return Err(ApiError::invalid_request(
            "name must not contain control characters or invisible formatting characters (such as bidi overrides)",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Control characters (Cc) and format characters (Cf: bidi overrides,
/// zero-width joiners, ...) make a name display as something it is not.
fn is_hidden(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    matches!(
        c.general_category(),
        GeneralCategory::Control | GeneralCategory::Format
    )
}

/// The permissions in canonical order, or an error naming the field.
pub fn check_permissions(permissions: &[Permission]) -> Result<Vec<Permission>, ApiError> {
    if permissions.is_empty() {
        return Err(ApiError::invalid_request(format!(
            "permissions must be a non-empty array of: {}",
            Permission::names()
        )));
    }
    let mut sorted = permissions.to_vec();
    sorted.sort();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(ApiError::invalid_request(format!(
            "permissions lists \"{}\" more than once",
            w[0]
        )));
    }
    Ok(sorted)
}

fn not_found(id: &str) -> ApiError {
    // Ids are ours and alphanumeric, but this one came from the client: only
    // echo it when it looks like an id.
    let shown = if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        id
    } else {
        "<given>"
    };
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "No API key with id {shown} exists for this tenant. List keys with GET /api/v1/api-keys."
        ),
    )
}

pub fn list(store: &dyn KeyStore, tenant: &str) -> Result<Vec<KeyRecord>, ApiError> {
    check_tenant(tenant)?;
    Ok(store.list(tenant)?)
}

/// One of the tenant's keys, found among its keys (the store interface has
/// no lookup by id; a tenant has at most `max-keys-per-tenant` keys).
pub fn get(store: &dyn KeyStore, tenant: &str, id: &str) -> Result<KeyRecord, ApiError> {
    check_tenant(tenant)?;
    store
        .list(tenant)?
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| not_found(id))
}

pub fn create(
    store: &dyn KeyStore,
    tenant: &str,
    name: &str,
    permissions: &[Permission],
    tenant_limit: u32,
) -> Result<(KeyRecord, RawKey), ApiError> {
    check_tenant(tenant)?;
    let name = check_name(name)?;
    let permissions = check_permissions(permissions)?;
    // A conflict means a random id or key collided: astronomically unlikely,
    // but a fresh draw is the right answer.
    for _ in 0..3 {
        let raw = RawKey::generate().map_err(|e| ApiError::internal(format!("random: {}", e.0)))?;
        let id = random::alphanumeric(ID_RANDOM_LEN)
            .map_err(|e| ApiError::internal(format!("random: {}", e.0)))?;
        let record = KeyRecord {
            id: format!("{ID_PREFIX}{id}"),
            tenant: tenant.to_owned(),
            name: name.clone(),
            permissions: permissions.clone(),
            created_at: now_millis(),
            last_used_at: None,
            deactivated_at: None,
        };
        match store.insert(&record, &raw.hash(), tenant_limit) {
            Ok(()) => return Ok((record, raw)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal("three insert conflicts in a row"))
}

pub fn deactivate(store: &dyn KeyStore, tenant: &str, id: &str) -> Result<KeyRecord, ApiError> {
    check_tenant(tenant)?;
    store
        .deactivate(tenant, id, now_millis())?
        .ok_or_else(|| not_found(id))
}

pub fn delete(store: &dyn KeyStore, tenant: &str, id: &str) -> Result<(), ApiError> {
    check_tenant(tenant)?;
    if store.remove(tenant, id)? {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

/// The key behind a raw key, if it is valid and active. One storage read;
/// a throttled `lastUsedAt` write when the key authenticates.
pub fn authenticate(store: &dyn KeyStore, raw: &str) -> Result<KeyRecord, ApiError> {
    let key = RawKey::parse(raw).map_err(|e| match e {
        KeyFormatError::Malformed => invalid_key("it is not in the sigma_sk_live_ format"),
        KeyFormatError::BadChecksum => {
            invalid_key("its checksum does not match (check for a typo)")
        }
    })?;
    let record = store
        .find_by_hash(&key.hash())?
        .ok_or_else(|| invalid_key("it is unknown or was deleted"))?;
    if !record.active() {
        return Err(ApiError::new(
            ErrorCode::ApiKeyDeactivated,
            format!(
                "The API key {} was deactivated. Use an active key, or create a new one.",
                record.id
            ),
        ));
    }
    note_use(store, &record);
    Ok(record)
}

fn invalid_key(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidApiKey,
        format!("The API key is not valid: {why}. Send a key created by POST /api/v1/api-keys."),
    )
}

/// Writes `lastUsedAt` at most once per interval per key. A failure here must
/// not fail the request: the key did authenticate.
fn note_use(store: &dyn KeyStore, record: &KeyRecord) {
    let now = now_millis();
    let due = record
        .last_used_at
        .is_none_or(|last| now >= last.saturating_add(LAST_USED_INTERVAL_MS));
    if due && let Err(e) = store.record_use(&record.id, now) {
        eprintln!(
            "sigma-keys component: could not record use of key {}: {e:?}",
            record.id
        );
    }
}

fn require(record: KeyRecord, permission: Permission, what: &str) -> Result<Verified, ApiError> {
    if record.permissions.contains(&permission) {
        Ok(Verified {
            key: record,
            permission,
        })
    } else {
        Err(ApiError::new(
            ErrorCode::InsufficientPermission,
            format!(
                "The API key {} lacks the {permission} permission{what}. Create a key that has it.",
                record.id
            ),
        ))
    }
}

pub fn verify(
    store: &dyn KeyStore,
    raw: &str,
    permission: Permission,
) -> Result<Verified, ApiError> {
    let record = authenticate(store, raw)?;
    require(record, permission, "")
}

/// Credential first (401), then route (404/405), then permission (403).
pub fn authorize(
    store: &dyn KeyStore,
    raw: &str,
    method: &str,
    path: &str,
) -> Result<Verified, ApiError> {
    permit(authenticate(store, raw)?, method, path)
}

/// Route (404/405), then permission (403), for a key that authenticated.
pub fn permit(record: KeyRecord, method: &str, path: &str) -> Result<Verified, ApiError> {
    let permission = required_permission(method, path)?;
    require(
        record,
        permission,
        &format!(" that {method} on this path needs"),
    )
}

/// The permission a request needs, as an API error.
pub fn required_permission(method: &str, path: &str) -> Result<Permission, ApiError> {
    routes::required_permission(method, path).map_err(|e| match e {
        RouteError::UnknownResource => ApiError::new(
            ErrorCode::UnknownResource,
            "No Sigma PIM resource lives at this path. Resource paths look like /api/v1/records/{id}.",
        ),
        RouteError::MethodNotAllowed => ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("Resources accept only {}.", routes::allowed_methods()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::memory::MemoryStore;
    use Permission::*;

    fn code<T: std::fmt::Debug>(r: Result<T, ApiError>) -> ErrorCode {
        r.unwrap_err().code
    }

    /// `create` with the default per-tenant limit.
    fn create(
        store: &MemoryStore,
        tenant: &str,
        name: &str,
        permissions: &[Permission],
    ) -> Result<(KeyRecord, RawKey), ApiError> {
        super::create(store, tenant, name, permissions, 10_000)
    }

    #[test]
    fn tenants_are_short_and_plain() {
        for ok in ["acme", "a", "Acme-1.eu_west:prod", &"t".repeat(128)] {
            assert!(is_valid_tenant(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "globex,acme",
            "a;b",
            "a/b",
            "\u{e9}",
            "a\tb",
            &"t".repeat(129),
        ] {
            assert!(!is_valid_tenant(bad), "{bad}");
            let store = MemoryStore::default();
            assert_eq!(
                code(create(&store, bad, "k", &[Read])),
                ErrorCode::InvalidRequest
            );
        }
    }

    #[test]
    fn names_with_hidden_characters_are_refused() {
        let store = MemoryStore::default();
        for bad in [
            "a\u{202e}b",  // right-to-left override
            "a\u{2066}b",  // left-to-right isolate
            "a\u{200b}b",  // zero-width space
            "a\u{feff}b",  // byte order mark
            "a\u{ad}b",    // soft hyphen
            "a\u{e0041}b", // tag character
            "a\u{7f}b",
            "a\u{85}b",
            "a\tb",
        ] {
            assert_eq!(
                code(create(&store, "acme", bad, &[Read])),
                ErrorCode::InvalidRequest,
                "{bad:?}"
            );
        }
        assert!(store.rows.borrow().is_empty());
        assert!(create(&store, "acme", "Zürich \u{1F511} sync", &[Read]).is_ok());
    }

    #[test]
    fn one_key_is_found_only_by_its_tenant() {
        let store = MemoryStore::default();
        let (key, _) = create(&store, "acme", "k", &[Read]).unwrap();
        create(&store, "acme", "other", &[Read]).unwrap();
        assert_eq!(get(&store, "acme", &key.id).unwrap(), key);
        assert_eq!(code(get(&store, "globex", &key.id)), ErrorCode::NotFound);
        assert_eq!(
            code(get(&store, "acme", "apikey-nosuchkey000000")),
            ErrorCode::NotFound
        );
        assert_eq!(code(get(&store, "a b", &key.id)), ErrorCode::InvalidRequest);
        deactivate(&store, "acme", &key.id).unwrap();
        assert!(!get(&store, "acme", &key.id).unwrap().active());
    }

    #[test]
    fn a_tenant_gets_at_most_its_limit_of_keys() {
        let store = MemoryStore::default();
        for _ in 0..3 {
            super::create(&store, "acme", "k", &[Read], 3).unwrap();
        }
        assert_eq!(
            code(super::create(&store, "acme", "k", &[Read], 3)),
            ErrorCode::KeyLimitReached
        );
        assert!(super::create(&store, "globex", "k", &[Read], 3).is_ok());
        assert_eq!(store.rows.borrow().len(), 4);
    }

    #[test]
    fn create_returns_a_working_key_once_and_stores_only_its_hash() {
        let store = MemoryStore::default();
        let (rec, raw) = create(
            &store,
            "acme",
            "  Shopify Sync - Production ",
            &[UpdateData, Read],
        )
        .unwrap();
        assert!(rec.id.starts_with("apikey-") && rec.id.len() == 27);
        assert_eq!(rec.name, "Shopify Sync - Production");
        assert_eq!(rec.permissions, vec![Read, UpdateData]);
        assert!(rec.active() && rec.last_used_at.is_none());
        let stored = store.rows.borrow();
        assert_eq!(stored[0].1, raw.hash());
        let created = rec.to_created_json(&raw);
        let keys: Vec<_> = created.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 5);
        for k in ["id", "name", "rawKey", "permissions", "createdAt"] {
            assert!(keys.contains(&k.to_owned()));
        }
        assert!(!rec.to_json().to_string().contains(raw.expose()));
    }

    #[test]
    fn bad_input_changes_nothing() {
        let store = MemoryStore::default();
        assert_eq!(
            code(create(&store, "acme", "   ", &[Read])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(create(&store, "acme", &"x".repeat(201), &[Read])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(create(&store, "acme", "a\nb", &[Read])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(create(&store, "acme", "ok", &[])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(create(&store, "acme", "ok", &[Read, Read])),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(create(&store, "", "ok", &[Read])),
            ErrorCode::InvalidRequest
        );
        assert!(store.rows.borrow().is_empty());
        assert!(create(&store, "acme", &"é".repeat(200), &[Read]).is_ok());
    }

    #[test]
    fn verify_checks_format_existence_state_and_permission() {
        let store = MemoryStore::default();
        let (rec, raw) = create(&store, "acme", "sync", &[Read, UpdateData]).unwrap();
        let ok = verify(&store, raw.expose(), Read).unwrap();
        assert_eq!(
            (ok.key.id.as_str(), ok.key.tenant.as_str(), ok.permission),
            (rec.id.as_str(), "acme", Read)
        );
        assert_eq!(
            code(verify(&store, raw.expose(), DeleteModel)),
            ErrorCode::InsufficientPermission
        );
        assert_eq!(
            code(verify(&store, "sigma_sk_live_nope", Read)),
            ErrorCode::InvalidApiKey
        );
        let other = RawKey::generate().unwrap();
        assert_eq!(
            code(verify(&store, other.expose(), Read)),
            ErrorCode::InvalidApiKey
        );
        deactivate(&store, "acme", &rec.id).unwrap();
        assert_eq!(
            code(verify(&store, raw.expose(), Read)),
            ErrorCode::ApiKeyDeactivated
        );
        delete(&store, "acme", &rec.id).unwrap();
        assert_eq!(
            code(verify(&store, raw.expose(), Read)),
            ErrorCode::InvalidApiKey
        );
    }

    #[test]
    fn a_malformed_key_costs_no_storage_read_and_a_good_one_costs_one() {
        let store = MemoryStore::default();
        let (_, raw) = create(&store, "acme", "sync", &[Read]).unwrap();
        let mut typo = raw.expose().to_owned();
        typo.replace_range(20..21, if &typo[20..21] == "a" { "b" } else { "a" });
        assert_eq!(code(verify(&store, &typo, Read)), ErrorCode::InvalidApiKey);
        assert_eq!(*store.reads.borrow(), 0);
        verify(&store, raw.expose(), Read).unwrap();
        assert_eq!(*store.reads.borrow(), 1);
    }

    #[test]
    fn last_used_is_written_at_most_once_per_interval() {
        let store = MemoryStore::default();
        let (_, raw) = create(&store, "acme", "sync", &[Read]).unwrap();
        for _ in 0..5 {
            let _ = verify(&store, raw.expose(), DeleteData);
        }
        assert_eq!(
            *store.uses.borrow(),
            1,
            "denied permission still counts as a use"
        );
        assert!(store.rows.borrow()[0].0.last_used_at.is_some());
    }

    #[test]
    fn deactivate_is_idempotent_and_tenants_are_isolated() {
        let store = MemoryStore::default();
        let (rec, _) = create(&store, "acme", "sync", &[Read]).unwrap();
        assert_eq!(
            code(deactivate(&store, "globex", &rec.id)),
            ErrorCode::NotFound
        );
        assert_eq!(code(delete(&store, "globex", &rec.id)), ErrorCode::NotFound);
        assert!(list(&store, "globex").unwrap().is_empty());
        let first = deactivate(&store, "acme", &rec.id).unwrap();
        let again = deactivate(&store, "acme", &rec.id).unwrap();
        assert_eq!(first, again);
        assert_eq!(first.to_json()["active"], false);
        assert!(first.to_json()["deactivatedAt"].is_string());
        delete(&store, "acme", &rec.id).unwrap();
        assert_eq!(code(delete(&store, "acme", &rec.id)), ErrorCode::NotFound);
    }

    #[test]
    fn authorize_checks_credential_then_route_then_permission() {
        let store = MemoryStore::default();
        let (_, raw) = create(&store, "acme", "sync", &[Read, UpdateData]).unwrap();
        assert_eq!(
            code(authorize(&store, "bad", "GET", "/api/v1/nothing")),
            ErrorCode::InvalidApiKey
        );
        assert_eq!(
            code(authorize(&store, raw.expose(), "DELETE", "/api/v1/nothing")),
            ErrorCode::UnknownResource
        );
        assert_eq!(
            code(authorize(&store, raw.expose(), "TRACE", "/api/v1/records")),
            ErrorCode::MethodNotAllowed
        );
        let denied = authorize(&store, raw.expose(), "DELETE", "/api/v1/records/r1").unwrap_err();
        assert_eq!(denied.code, ErrorCode::InsufficientPermission);
        assert!(denied.message.contains("delete-data"), "{}", denied.message);
        let ok = authorize(
            &store,
            raw.expose(),
            "PUT",
            "/api/v1/records/r1/variants/v1",
        )
        .unwrap();
        assert_eq!(ok.permission, UpdateData);
    }
}
