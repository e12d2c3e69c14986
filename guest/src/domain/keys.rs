//! The key lifecycle over a [`KeyStore`]: create, list, roll, deactivate,
//! delete, verify, and the audit trail of those changes.

use serde_json::{Value, json};

use super::error::{ApiError, ErrorCode};
use super::events::{self, Actor, Details, Event, EventKind, LoggedEvent, Page};
use super::permission::Permission;
use super::random;
use super::raw_key::{KeyFormatError, KeyHash, RawKey};
use super::routes::{self, RouteError};
use super::time::{Millis, format_rfc3339, now_millis, parse_rfc3339};

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
/// How far ahead `expiresAt` may be: ten years, leap days included.
pub const MAX_EXPIRY_AHEAD_MS: Millis = 3653 * 24 * 60 * 60 * 1000;
/// The longest grace period a roll may give the old key: seven days.
pub const MAX_GRACE_PERIOD_SECS: u32 = 7 * 24 * 60 * 60;

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
    pub expires_at: Option<Millis>,
}

impl KeyRecord {
    /// Neither deactivated nor expired, now.
    pub fn active(&self) -> bool {
        self.active_at(now_millis())
    }

    /// Neither deactivated nor expired at `now`: a key stops at its
    /// `expires_at` instant exactly.
    pub fn active_at(&self, now: Millis) -> bool {
        self.deactivated_at.is_none() && !self.expired_at(now)
    }

    pub fn expired_at(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
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
            "expiresAt": self.expires_at.map(format_rfc3339),
        });
        if let (Some(at), Some(obj)) = (self.deactivated_at, v.as_object_mut()) {
            obj.insert("deactivatedAt".into(), json!(format_rfc3339(at)));
        }
        v
    }

    /// The create shape: `{id, name, rawKey, permissions, createdAt}`, and
    /// `expiresAt` when the key has one.
    pub fn to_created_json(&self, raw: &RawKey) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "rawKey": raw.expose(),
            "permissions": self.permission_names(),
            "createdAt": format_rfc3339(self.created_at),
        });
        if let (Some(at), Some(obj)) = (self.expires_at, v.as_object_mut()) {
            obj.insert("expiresAt".into(), json!(format_rfc3339(at)));
        }
        v
    }
}

/// Why storage failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    Conflict,
    /// The tenant already has the most keys allowed; nothing was written.
    LimitReached,
    /// `roll` found the old key deactivated or expired; nothing was written.
    Inactive,
    Unavailable(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict => ApiError::internal("storage conflict"),
            StoreError::Inactive => inactive(),
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

/// One roll, as the store carries it out in one transaction.
#[derive(Clone, Debug)]
pub struct Roll<'a> {
    pub tenant: &'a str,
    /// The key being replaced.
    pub id: &'a str,
    /// Now: the old key must be active at this instant.
    pub at: Millis,
    /// The old key's new `expires_at` (unless its own is earlier).
    pub expires_at: Millis,
    /// The new key, stored as by `insert`.
    pub key: &'a KeyRecord,
    pub hash: &'a KeyHash,
    pub tenant_limit: u32,
    /// Written with the change: the new key's `created`, the old key's `rolled`.
    pub events: &'a [Event],
}

/// The storage the lifecycle needs; `sigma:api-keys/store` in the component.
/// Every write takes the event that records it, written in the same
/// transaction.
pub trait KeyStore {
    /// Stores a new key unless its tenant already has `tenant_limit` keys.
    fn insert(
        &self,
        key: &KeyRecord,
        hash: &KeyHash,
        tenant_limit: u32,
        event: &Event,
    ) -> Result<(), StoreError>;
    fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError>;
    fn list(&self, tenant: &str) -> Result<Vec<KeyRecord>, StoreError>;
    /// Deactivates the key unless it already is; the event only if it changed.
    fn deactivate(
        &self,
        tenant: &str,
        id: &str,
        at: Millis,
        event: &Event,
    ) -> Result<Option<KeyRecord>, StoreError>;
    fn remove(&self, tenant: &str, id: &str, event: &Event) -> Result<bool, StoreError>;
    /// The old key after the roll; `None` if the tenant has no such key.
    fn roll(&self, roll: &Roll<'_>) -> Result<Option<KeyRecord>, StoreError>;
    /// Newest first, before `before`, at most `limit`.
    fn events(
        &self,
        tenant: &str,
        key_id: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StoreError>;
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

/// Checks a requested `expiresAt`: strictly after `now`, at most
/// [`MAX_EXPIRY_AHEAD_MS`] ahead.
pub fn check_expiry(expires_at: Millis, now: Millis) -> Result<Millis, ApiError> {
    if expires_at <= now {
        return Err(ApiError::invalid_request("expiresAt must be in the future"));
    }
    if expires_at - now > MAX_EXPIRY_AHEAD_MS {
        return Err(ApiError::invalid_request(
            "expiresAt must be at most 10 years ahead",
        ));
    }
    Ok(expires_at)
}

/// Parses and checks an `expiresAt` sent as text: RFC 3339 in UTC (`Z`).
pub fn parse_expiry(text: &str, now: Millis) -> Result<Millis, ApiError> {
    let at = parse_rfc3339(text).ok_or_else(|| {
        ApiError::invalid_request(
            "expiresAt must be an RFC 3339 timestamp in UTC, such as 2027-01-31T12:00:00Z",
        )
    })?;
    check_expiry(at, now)
}

fn new_record(
    tenant: &str,
    name: String,
    permissions: Vec<Permission>,
    expires_at: Option<Millis>,
    now: Millis,
) -> Result<(KeyRecord, RawKey), ApiError> {
    let raw = RawKey::generate().map_err(|e| ApiError::internal(format!("random: {}", e.0)))?;
    let id = random::alphanumeric(ID_RANDOM_LEN)
        .map_err(|e| ApiError::internal(format!("random: {}", e.0)))?;
    let record = KeyRecord {
        id: format!("{ID_PREFIX}{id}"),
        tenant: tenant.to_owned(),
        name,
        permissions,
        created_at: now,
        last_used_at: None,
        deactivated_at: None,
        expires_at,
    };
    Ok((record, raw))
}

/// What a new key is asked to be.
#[derive(Clone, Debug)]
pub struct NewKey<'a> {
    pub name: &'a str,
    pub permissions: &'a [Permission],
    pub expires_at: Option<Millis>,
}

pub fn create(
    store: &dyn KeyStore,
    tenant: &str,
    new: &NewKey<'_>,
    actor: &Actor,
    tenant_limit: u32,
) -> Result<(KeyRecord, RawKey), ApiError> {
    check_tenant(tenant)?;
    let name = check_name(new.name)?;
    let permissions = check_permissions(new.permissions)?;
    let now = now_millis();
    let expires_at = new.expires_at.map(|at| check_expiry(at, now)).transpose()?;
    // A conflict means a random id or key collided: astronomically unlikely,
    // but a fresh draw is the right answer.
    for _ in 0..3 {
        let (record, raw) = new_record(tenant, name.clone(), permissions.clone(), expires_at, now)?;
        let event = Event::new(
            tenant,
            &record.id,
            now,
            EventKind::Created,
            actor,
            Details::Nothing,
        )?;
        match store.insert(&record, &raw.hash(), tenant_limit, &event) {
            Ok(()) => return Ok((record, raw)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal("three insert conflicts in a row"))
}

/// A roll's result: the new key (shown once) and the old key after the roll.
#[derive(Debug)]
pub struct Rolled {
    pub key: KeyRecord,
    pub raw: RawKey,
    pub previous: KeyRecord,
}

impl Rolled {
    /// The create shape plus `rolledFrom`.
    pub fn to_json(&self) -> Value {
        let mut v = self.key.to_created_json(&self.raw);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("rolledFrom".into(), json!(self.previous.id));
        }
        v
    }
}

fn inactive() -> ApiError {
    ApiError::new(
        ErrorCode::ApiKeyInactive,
        "The API key is deactivated or expired, so it cannot be rolled. Create a new key instead.",
    )
}

/// Replaces an active key by a new one with the same name, permissions and
/// expiry; the old one keeps working for `grace_period_secs`, and never
/// longer than it would have.
pub fn roll(
    store: &dyn KeyStore,
    tenant: &str,
    id: &str,
    grace_period_secs: u32,
    actor: &Actor,
    tenant_limit: u32,
) -> Result<Rolled, ApiError> {
    check_tenant(tenant)?;
    if grace_period_secs > MAX_GRACE_PERIOD_SECS {
        return Err(ApiError::invalid_request(format!(
            "gracePeriodSeconds must be an integer from 0 to {MAX_GRACE_PERIOD_SECS}"
        )));
    }
    let old = get(store, tenant, id)?;
    let now = now_millis();
    if !old.active_at(now) {
        return Err(inactive());
    }
    let old_expires_at = now.saturating_add(Millis::from(grace_period_secs) * 1000);
    for _ in 0..3 {
        let (record, raw) = new_record(
            tenant,
            old.name.clone(),
            old.permissions.clone(),
            old.expires_at,
            now,
        )?;
        let events = [
            Event::new(
                tenant,
                &record.id,
                now,
                EventKind::Created,
                actor,
                Details::Nothing,
            )?,
            Event::new(
                tenant,
                &old.id,
                now,
                EventKind::Rolled,
                actor,
                Details::Rolled {
                    new_key_id: record.id.clone(),
                    grace_period_seconds: grace_period_secs,
                },
            )?,
        ];
        let result = store.roll(&Roll {
            tenant,
            id: &old.id,
            at: now,
            expires_at: old_expires_at,
            key: &record,
            hash: &raw.hash(),
            tenant_limit,
            events: &events,
        });
        match result {
            Ok(Some(previous)) => {
                return Ok(Rolled {
                    key: record,
                    raw,
                    previous,
                });
            }
            Ok(None) => return Err(not_found(id)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal("three roll conflicts in a row"))
}

pub fn deactivate(
    store: &dyn KeyStore,
    tenant: &str,
    id: &str,
    actor: &Actor,
) -> Result<KeyRecord, ApiError> {
    check_tenant(tenant)?;
    let now = now_millis();
    let event = Event::new(
        tenant,
        id,
        now,
        EventKind::Deactivated,
        actor,
        Details::Nothing,
    )?;
    store
        .deactivate(tenant, id, now, &event)?
        .ok_or_else(|| not_found(id))
}

pub fn delete(store: &dyn KeyStore, tenant: &str, id: &str, actor: &Actor) -> Result<(), ApiError> {
    check_tenant(tenant)?;
    let event = Event::new(
        tenant,
        id,
        now_millis(),
        EventKind::Deleted,
        actor,
        Details::Nothing,
    )?;
    if store.remove(tenant, id, &event)? {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

/// Longest `keyId` filter accepted; longer ones cannot name a key.
const KEY_ID_FILTER_MAX: usize = 128;

/// One page of the tenant's events, newest first.
pub fn events(
    store: &dyn KeyStore,
    tenant: &str,
    key_id: Option<&str>,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Page, ApiError> {
    check_tenant(tenant)?;
    let limit = events::check_limit(limit)?;
    if key_id.is_some_and(|id| id.is_empty() || id.len() > KEY_ID_FILTER_MAX) {
        return Err(ApiError::invalid_request(format!(
            "keyId must be 1 to {KEY_ID_FILTER_MAX} characters"
        )));
    }
    let before = cursor.map(events::parse_cursor).transpose()?;
    // One more than asked, to know whether a next page exists.
    let mut logged = store.events(tenant, key_id, before, limit + 1)?;
    let more = logged.len() > limit as usize;
    logged.truncate(limit as usize);
    let next = if more {
        logged.last().map(|e| events::cursor_after(e.seq))
    } else {
        None
    };
    Ok(Page {
        events: logged.into_iter().map(|e| e.event).collect(),
        next,
    })
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
    if record.deactivated_at.is_some() {
        return Err(refused(ErrorCode::ApiKeyDeactivated, &record.id));
    }
    // One clock read serves the expiry check and the use it records.
    let now = now_millis();
    if record.expired_at(now) {
        return Err(refused(ErrorCode::ApiKeyExpired, &record.id));
    }
    note_use(store, &record, now);
    Ok(record)
}

/// Why an existing key is refused; kept off the hot path of `authenticate`.
#[cold]
#[inline(never)]
fn refused(code: ErrorCode, id: &str) -> ApiError {
    let message = if code == ErrorCode::ApiKeyExpired {
        format!("The API key {id} has expired. Use an active key, or roll or create a new one.")
    } else {
        format!("The API key {id} was deactivated. Use an active key, or create a new one.")
    };
    ApiError::new(code, message)
}

fn invalid_key(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidApiKey,
        format!("The API key is not valid: {why}. Send a key created by POST /api/v1/api-keys."),
    )
}

/// Writes `lastUsedAt` at most once per interval per key. A failure here must
/// not fail the request: the key did authenticate.
fn note_use(store: &dyn KeyStore, record: &KeyRecord, now: Millis) {
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

/// The key, if it has `permission`. `method` names the request that needs
/// it in the refusal, when there is one.
fn require(
    record: KeyRecord,
    permission: Permission,
    method: Option<&str>,
) -> Result<Verified, ApiError> {
    if record.permissions.contains(&permission) {
        Ok(Verified {
            key: record,
            permission,
        })
    } else {
        Err(lacks(&record.id, permission, method))
    }
}

/// The refusal of a key without the permission; written only when a key is
/// refused, not for every request that is let through.
#[cold]
#[inline(never)]
fn lacks(id: &str, permission: Permission, method: Option<&str>) -> ApiError {
    let what = method.map_or(String::new(), |m| format!(" that {m} on this path needs"));
    ApiError::new(
        ErrorCode::InsufficientPermission,
        format!(
            "The API key {id} lacks the {permission} permission{what}. Create a key that has it."
        ),
    )
}

pub fn verify(
    store: &dyn KeyStore,
    raw: &str,
    permission: Permission,
) -> Result<Verified, ApiError> {
    let record = authenticate(store, raw)?;
    require(record, permission, None)
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
    require(record, permission, Some(method))
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
        create_limited(store, tenant, name, permissions, 10_000)
    }

    fn create_limited(
        store: &MemoryStore,
        tenant: &str,
        name: &str,
        permissions: &[Permission],
        limit: u32,
    ) -> Result<(KeyRecord, RawKey), ApiError> {
        let new = NewKey {
            name,
            permissions,
            expires_at: None,
        };
        super::create(store, tenant, &new, &Actor::cli(), limit)
    }

    fn deactivate(store: &MemoryStore, tenant: &str, id: &str) -> Result<KeyRecord, ApiError> {
        super::deactivate(store, tenant, id, &Actor::cli())
    }

    fn delete(store: &MemoryStore, tenant: &str, id: &str) -> Result<(), ApiError> {
        super::delete(store, tenant, id, &Actor::cli())
    }

    fn token(subject: &str) -> Actor {
        Actor {
            via: events::Via::Token,
            subject: Some(subject.into()),
        }
    }

    /// A key whose expiry is set straight in the store, past or near.
    fn expire(store: &MemoryStore, id: &str, at: Millis) {
        for (k, _) in store
            .rows
            .borrow_mut()
            .iter_mut()
            .filter(|(k, _)| k.id == id)
        {
            k.expires_at = Some(at);
        }
    }

    #[test]
    fn expiry_must_be_future_and_within_ten_years() {
        let now = now_millis();
        let store = MemoryStore::default();
        for bad in [now - 1, now, now + MAX_EXPIRY_AHEAD_MS + 1000] {
            let new = NewKey {
                name: "k",
                permissions: &[Read],
                expires_at: Some(bad),
            };
            let e = super::create(&store, "acme", &new, &Actor::cli(), 10).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.message.contains("expiresAt"), "{}", e.message);
        }
        assert!(store.rows.borrow().is_empty() && store.events.borrow().is_empty());
        assert!(parse_expiry("2020-01-01T00:00:00Z", now).is_err());
        assert!(parse_expiry("2099-01-01T00:00:00+00:00", now).is_err());
        assert!(parse_expiry("soon", now).is_err());
        let ahead = format_rfc3339(now + 60_000);
        assert!(parse_expiry(&ahead, now).is_ok());
        let new = NewKey {
            name: "k",
            permissions: &[Read],
            expires_at: Some(now + MAX_EXPIRY_AHEAD_MS - 1000),
        };
        let (rec, raw) = super::create(&store, "acme", &new, &Actor::cli(), 10).unwrap();
        assert_eq!(rec.expires_at, new.expires_at);
        let created = rec.to_created_json(&raw);
        assert!(created["expiresAt"].is_string());
        assert_eq!(rec.to_json()["expiresAt"], created["expiresAt"]);
    }

    #[test]
    fn an_expired_key_is_refused_and_lists_inactive() {
        let store = MemoryStore::default();
        let (rec, raw) = create(&store, "acme", "k", &[Read]).unwrap();
        assert_eq!(rec.to_json()["expiresAt"], Value::Null);
        expire(&store, &rec.id, now_millis() - 1);
        assert_eq!(
            code(verify(&store, raw.expose(), Read)),
            ErrorCode::ApiKeyExpired
        );
        assert_eq!(
            code(authorize(&store, raw.expose(), "GET", "/api/v1/records")),
            ErrorCode::ApiKeyExpired
        );
        let listed = list(&store, "acme").unwrap();
        assert_eq!(listed[0].to_json()["active"], false);
        // Deactivation is the stronger statement, so it is the one reported.
        deactivate(&store, "acme", &rec.id).unwrap();
        assert_eq!(
            code(verify(&store, raw.expose(), Read)),
            ErrorCode::ApiKeyDeactivated
        );
        // A key stops at its instant exactly.
        let at = 1_000;
        let mut k = rec.clone();
        k.deactivated_at = None;
        k.expires_at = Some(at);
        assert!(k.active_at(at - 1) && !k.active_at(at));
    }

    #[test]
    fn rolling_replaces_a_key_and_the_old_one_expires_after_its_grace() {
        let store = MemoryStore::default();
        let far = now_millis() + 3_600_000;
        let new = NewKey {
            name: "sync",
            permissions: &[Read, UpdateData],
            expires_at: Some(far),
        };
        let (old, old_raw) = super::create(&store, "acme", &new, &Actor::cli(), 10).unwrap();
        let before = now_millis();
        let rolled = roll(&store, "acme", &old.id, 30, &token("ops"), 10).unwrap();
        assert_eq!(rolled.key.name, "sync");
        assert_eq!(rolled.key.permissions, vec![Read, UpdateData]);
        assert_eq!(rolled.key.expires_at, Some(far));
        let grace_end = rolled.previous.expires_at.unwrap();
        assert!(grace_end >= before + 30_000 && grace_end <= now_millis() + 30_000);
        let json = rolled.to_json();
        assert_eq!(json["rolledFrom"], old.id.as_str());
        assert_eq!(json["rawKey"], rolled.raw.expose());
        // Both work during the grace period.
        verify(&store, old_raw.expose(), Read).unwrap();
        verify(&store, rolled.raw.expose(), Read).unwrap();
        // A roll never lengthens a key's life.
        let again = roll(
            &store,
            "acme",
            &old.id,
            MAX_GRACE_PERIOD_SECS,
            &token("ops"),
            10,
        )
        .unwrap();
        assert_eq!(again.previous.expires_at, Some(grace_end));
        // Grace 0 stops the key at once.
        let last = roll(&store, "acme", &rolled.key.id, 0, &token("ops"), 10).unwrap();
        assert_eq!(
            code(verify(&store, rolled.raw.expose(), Read)),
            ErrorCode::ApiKeyExpired
        );
        verify(&store, last.raw.expose(), Read).unwrap();
        // The trail: created, then the rolled event on the old key naming the new one.
        let page = events(&store, "acme", Some(&old.id), None, 100).unwrap();
        assert_eq!(page.events.len(), 3);
        assert_eq!(page.events[1].kind, EventKind::Rolled);
        assert_eq!(
            page.events[1].details,
            Details::Rolled {
                new_key_id: rolled.key.id.clone(),
                grace_period_seconds: 30
            }
        );
        assert_eq!(page.events[1].actor, token("ops"));
    }

    #[test]
    fn only_active_keys_of_the_tenant_roll_and_bad_rolls_change_nothing() {
        let store = MemoryStore::default();
        let (a, _) = create(&store, "acme", "a", &[Read]).unwrap();
        let (b, _) = create(&store, "acme", "b", &[Read]).unwrap();
        let written = || (store.rows.borrow().len(), store.events.borrow().len());
        let start = written();
        assert_eq!(
            code(roll(
                &store,
                "acme",
                &a.id,
                MAX_GRACE_PERIOD_SECS + 1,
                &Actor::cli(),
                10
            )),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(roll(&store, "globex", &a.id, 0, &Actor::cli(), 10)),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(roll(&store, "acme", "apikey-nosuch", 0, &Actor::cli(), 10)),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(roll(&store, "acme", &a.id, 0, &Actor::cli(), 2)),
            ErrorCode::KeyLimitReached
        );
        assert_eq!(written(), start);
        deactivate(&store, "acme", &a.id).unwrap();
        expire(&store, &b.id, now_millis() - 1);
        let start = written();
        for id in [&a.id, &b.id] {
            let e = roll(&store, "acme", id, 0, &Actor::cli(), 10).unwrap_err();
            assert_eq!(e.code, ErrorCode::ApiKeyInactive);
            assert_eq!(e.code.status(), 409);
        }
        assert_eq!(written(), start);
    }

    #[test]
    fn the_store_refuses_a_roll_of_a_key_that_went_inactive_meanwhile() {
        let store = MemoryStore::default();
        let (a, _) = create(&store, "acme", "a", &[Read]).unwrap();
        let (next, raw) = create(&store, "acme", "spare", &[Read]).unwrap();
        delete(&store, "acme", &next.id).unwrap();
        deactivate(&store, "acme", &a.id).unwrap();
        let events_before = store.events.borrow().len();
        let result = store.roll(&Roll {
            tenant: "acme",
            id: &a.id,
            at: now_millis(),
            expires_at: now_millis(),
            key: &next,
            hash: &raw.hash(),
            tenant_limit: 10,
            events: &[],
        });
        assert_eq!(result, Err(StoreError::Inactive));
        assert_eq!(store.events.borrow().len(), events_before);
        assert_eq!(store.rows.borrow().len(), 1);
    }

    #[test]
    fn every_change_is_one_event_and_tenants_see_only_theirs() {
        let store = MemoryStore::default();
        let (a, _) = create(&store, "acme", "a", &[Read]).unwrap();
        let (g, _) = create(&store, "globex", "g", &[Read]).unwrap();
        super::deactivate(&store, "acme", &a.id, &token("ann")).unwrap();
        // Deactivating again changes nothing, so it records nothing.
        super::deactivate(&store, "acme", &a.id, &token("ann")).unwrap();
        super::delete(&store, "acme", &a.id, &token("bob")).unwrap();
        // Failed changes record nothing either.
        assert!(super::delete(&store, "acme", &a.id, &token("bob")).is_err());
        assert!(super::deactivate(&store, "acme", &g.id, &token("eve")).is_err());
        let page = events(&store, "acme", None, None, 100).unwrap();
        let story: Vec<_> = page
            .events
            .iter()
            .map(|e| (e.kind, e.key_id.as_str(), e.actor.subject.as_deref()))
            .collect();
        assert_eq!(
            story,
            [
                (EventKind::Deleted, a.id.as_str(), Some("bob")),
                (EventKind::Deactivated, a.id.as_str(), Some("ann")),
                (EventKind::Created, a.id.as_str(), None),
            ]
        );
        assert_eq!(page.next, None);
        let theirs = events(&store, "globex", None, None, 100).unwrap();
        assert_eq!(theirs.events.len(), 1);
        assert_eq!(theirs.events[0].key_id, g.id);
    }

    #[test]
    fn events_page_newest_first_with_a_cursor() {
        let store = MemoryStore::default();
        let mut ids = Vec::new();
        for i in 0..7 {
            ids.push(
                create(&store, "acme", &format!("k{i}"), &[Read])
                    .unwrap()
                    .0
                    .id,
            );
        }
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = events(&store, "acme", None, cursor.as_deref(), 3).unwrap();
            assert!(page.events.len() <= 3);
            seen.extend(page.events.iter().map(|e| e.key_id.clone()));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        ids.reverse();
        assert_eq!(seen, ids);
        let one = events(&store, "acme", Some(&ids[3]), None, 100).unwrap();
        assert_eq!(one.events.len(), 1);
        for bad in [0, 501] {
            assert_eq!(
                code(events(&store, "acme", None, None, bad)),
                ErrorCode::InvalidRequest
            );
        }
        assert_eq!(
            code(events(&store, "acme", None, Some("x"), 10)),
            ErrorCode::InvalidRequest
        );
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
            create_limited(&store, "acme", "k", &[Read], 3).unwrap();
        }
        assert_eq!(
            code(create_limited(&store, "acme", "k", &[Read], 3)),
            ErrorCode::KeyLimitReached
        );
        assert!(create_limited(&store, "globex", "k", &[Read], 3).is_ok());
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
        let (rec, raw) = create(&store, "acme", "sync", &[Read, UpdateData]).unwrap();
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
        // The refusal names the request that needs the permission; a plain
        // verify names none.
        let id = &rec.id;
        assert_eq!(
            denied.message,
            format!(
                "The API key {id} lacks the delete-data permission that DELETE on this path \
                 needs. Create a key that has it."
            )
        );
        let plain = verify(&store, raw.expose(), DeleteData).unwrap_err();
        assert_eq!(
            plain.message,
            format!("The API key {id} lacks the delete-data permission. Create a key that has it.")
        );
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
