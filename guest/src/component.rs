//! The WIT layer: converts between the `sigma:api-keys/service` world and
//! [`crate::domain`], and moves HTTP bytes. No decisions are made here.

use std::sync::{Arc, Mutex, OnceLock};

use crate::domain::api::{
    self, BodyError, BodySource, Caller, Decision, Outcome, Reply, RequestHead, RouteClass,
    Settings, UpstreamFailure,
};
use crate::domain::error::{ApiError, ErrorCode};
use crate::domain::events::{Actor, Details, Event, EventKind, LoggedEvent, Via};
use crate::domain::headers;
use crate::domain::jwt::{self, MIN_SECRET_LEN};
use crate::domain::key_set::{KeySet, KeySetSource};
use crate::domain::keys::{
    self as lifecycle, KeyRecord, KeyStore, NewKey, Roll, StoreError, Verified,
};
use crate::domain::permission::Permission;
use crate::domain::raw_key::KeyHash;
use crate::domain::time::Millis;
use crate::domain::upstream::{Scheme as UpstreamScheme, Upstream};

wit_bindgen::generate!({
    world: "service",
    path: "../wit",
    generate_all,
});

use exports::sigma::api_keys::{auth, gateway, keys};
use sigma::api_keys::{request_log, store};
use wasi::http::types::{
    ErrorCode as HttpErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody,
    OutgoingRequest, OutgoingResponse, RequestOptions, ResponseOutparam, Scheme,
};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

/// The types of the exported interfaces.
mod wit {
    pub use super::exports::sigma::api_keys::keys::{
        Actor, ActorVia, CreatedKey, Error, ErrorCode, Event, EventDetails, EventKind, EventPage,
        KeyRecord, LeakedDetails, Permission, RolledDetails, RolledKey,
    };
}

struct Component;

export!(Component);

// ---- conversions -------------------------------------------------------

/// Permission conversions for one WIT enum (the store's and the API's are distinct types).
macro_rules! permission_conversions {
    ($to:ident, $from:ident, $wit:ty) => {
        fn $to(p: Permission) -> $wit {
            match p {
                Permission::Read => <$wit>::Read,
                Permission::UpdateData => <$wit>::UpdateData,
                Permission::DeleteData => <$wit>::DeleteData,
                Permission::UpdateModel => <$wit>::UpdateModel,
                Permission::DeleteModel => <$wit>::DeleteModel,
            }
        }

        fn $from(p: $wit) -> Permission {
            match p {
                <$wit>::Read => Permission::Read,
                <$wit>::UpdateData => Permission::UpdateData,
                <$wit>::DeleteData => Permission::DeleteData,
                <$wit>::UpdateModel => Permission::UpdateModel,
                <$wit>::DeleteModel => Permission::DeleteModel,
            }
        }
    };
}

permission_conversions!(permission_to_wit, permission_from_wit, wit::Permission);
permission_conversions!(
    permission_to_store,
    permission_from_store,
    store::Permission
);

fn record_to_wit(r: &KeyRecord) -> wit::KeyRecord {
    wit::KeyRecord {
        id: r.id.clone(),
        tenant: r.tenant.clone(),
        name: r.name.clone(),
        permissions: r
            .permissions
            .iter()
            .copied()
            .map(permission_to_wit)
            .collect(),
        created_at: r.created_at,
        last_used_at: r.last_used_at,
        deactivated_at: r.deactivated_at,
        expires_at: r.expires_at,
        active: r.active(),
    }
}

fn record_to_store(r: &KeyRecord) -> store::StoredKey {
    store::StoredKey {
        id: r.id.clone(),
        tenant: r.tenant.clone(),
        name: r.name.clone(),
        permissions: r
            .permissions
            .iter()
            .copied()
            .map(permission_to_store)
            .collect(),
        created_at: r.created_at,
        last_used_at: r.last_used_at,
        deactivated_at: r.deactivated_at,
        expires_at: r.expires_at,
    }
}

fn record_from_store(r: store::StoredKey) -> KeyRecord {
    let mut permissions: Vec<Permission> = r
        .permissions
        .into_iter()
        .map(permission_from_store)
        .collect();
    permissions.sort();
    permissions.dedup();
    KeyRecord {
        id: r.id,
        tenant: r.tenant,
        name: r.name,
        permissions,
        created_at: r.created_at,
        last_used_at: r.last_used_at,
        deactivated_at: r.deactivated_at,
        expires_at: r.expires_at,
    }
}

/// Event kinds and actors for one WIT enum pair (the store's and the API's are distinct types).
macro_rules! event_conversions {
    ($kind_to:ident, $kind_from:ident, $kind:ty, $via_to:ident, $via_from:ident, $via:ty) => {
        fn $kind_to(k: EventKind) -> $kind {
            match k {
                EventKind::Created => <$kind>::Created,
                EventKind::Deactivated => <$kind>::Deactivated,
                EventKind::Deleted => <$kind>::Deleted,
                EventKind::Rolled => <$kind>::Rolled,
                EventKind::Leaked => <$kind>::Leaked,
            }
        }

        #[allow(dead_code)]
        fn $kind_from(k: $kind) -> EventKind {
            match k {
                <$kind>::Created => EventKind::Created,
                <$kind>::Deactivated => EventKind::Deactivated,
                <$kind>::Deleted => EventKind::Deleted,
                <$kind>::Rolled => EventKind::Rolled,
                <$kind>::Leaked => EventKind::Leaked,
            }
        }

        fn $via_to(v: Via) -> $via {
            match v {
                Via::Token => <$via>::Token,
                Via::Cli => <$via>::Cli,
                Via::SecretScanning => <$via>::SecretScanning,
            }
        }

        fn $via_from(v: $via) -> Via {
            match v {
                <$via>::Token => Via::Token,
                <$via>::Cli => Via::Cli,
                <$via>::SecretScanning => Via::SecretScanning,
            }
        }
    };
}

event_conversions!(
    kind_to_wit,
    kind_from_wit,
    wit::EventKind,
    via_to_wit,
    via_from_wit,
    wit::ActorVia
);
event_conversions!(
    kind_to_store,
    kind_from_store,
    store::EventKind,
    via_to_store,
    via_from_store,
    store::ActorVia
);

fn event_to_store(e: &Event) -> store::StoredEvent {
    store::StoredEvent {
        id: e.id.clone(),
        tenant: e.tenant.clone(),
        key_id: e.key_id.clone(),
        at: e.at,
        kind: kind_to_store(e.kind),
        via: via_to_store(e.actor.via),
        subject: e.actor.subject.clone(),
        details: e.details.to_json().to_string(),
    }
}

fn event_from_store(logged: store::LoggedEvent) -> LoggedEvent {
    let e = logged.event;
    let kind = kind_from_store(e.kind);
    LoggedEvent {
        seq: logged.seq,
        event: Event {
            details: Details::parse(kind, &e.details),
            id: e.id,
            tenant: e.tenant,
            key_id: e.key_id,
            at: e.at,
            kind,
            actor: Actor {
                via: via_from_store(e.via),
                subject: e.subject,
            },
        },
    }
}

fn event_to_wit(e: Event) -> wit::Event {
    wit::Event {
        id: e.id,
        at: e.at,
        kind: kind_to_wit(e.kind),
        key_id: e.key_id,
        actor: wit::Actor {
            via: via_to_wit(e.actor.via),
            subject: e.actor.subject,
        },
        details: match e.details {
            Details::Nothing => wit::EventDetails::Nothing,
            Details::Rolled {
                new_key_id,
                grace_period_seconds,
            } => wit::EventDetails::Rolled(wit::RolledDetails {
                new_key_id,
                grace_period_seconds,
            }),
            Details::Leaked { url, source } => {
                wit::EventDetails::Leaked(wit::LeakedDetails { url, source })
            }
        },
    }
}

fn actor_from_wit(a: wit::Actor) -> Actor {
    Actor {
        via: via_from_wit(a.via),
        subject: a.subject,
    }
}

fn error_to_wit(e: ApiError) -> wit::Error {
    let code = match e.code {
        ErrorCode::InvalidRequest | ErrorCode::InvalidJson => wit::ErrorCode::InvalidRequest,
        ErrorCode::NotFound => wit::ErrorCode::NotFound,
        ErrorCode::InvalidApiKey => wit::ErrorCode::InvalidApiKey,
        ErrorCode::ApiKeyDeactivated => wit::ErrorCode::ApiKeyDeactivated,
        ErrorCode::ApiKeyExpired => wit::ErrorCode::ApiKeyExpired,
        ErrorCode::ApiKeyInactive => wit::ErrorCode::ApiKeyInactive,
        ErrorCode::InsufficientPermission => wit::ErrorCode::InsufficientPermission,
        ErrorCode::UnknownResource => wit::ErrorCode::UnknownResource,
        ErrorCode::MethodNotAllowed => wit::ErrorCode::MethodNotAllowed,
        ErrorCode::KeyLimitReached => wit::ErrorCode::KeyLimitReached,
        ErrorCode::StoreUnavailable => wit::ErrorCode::StoreUnavailable,
        _ => wit::ErrorCode::Internal,
    };
    wit::Error {
        code,
        message: e.message,
    }
}

fn store_error(e: store::StoreError) -> StoreError {
    match e {
        store::StoreError::Conflict => StoreError::Conflict,
        store::StoreError::LimitReached => StoreError::LimitReached,
        store::StoreError::Inactive => StoreError::Inactive,
        store::StoreError::Unavailable(why) => StoreError::Unavailable(why),
    }
}

/// The host's `sigma:api-keys/store`, as the domain's [`KeyStore`].
struct HostStore;

impl KeyStore for HostStore {
    fn insert(
        &self,
        key: &KeyRecord,
        hash: &KeyHash,
        tenant_limit: u32,
        event: &Event,
    ) -> Result<(), StoreError> {
        store::insert(
            &record_to_store(key),
            &hash.0,
            tenant_limit,
            &event_to_store(event),
        )
        .map_err(store_error)
    }
    fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        Ok(store::find_by_hash(&hash.0)
            .map_err(store_error)?
            .map(record_from_store))
    }
    fn list(&self, tenant: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(store::list(tenant)
            .map_err(store_error)?
            .into_iter()
            .map(record_from_store)
            .collect())
    }
    fn deactivate(
        &self,
        tenant: &str,
        id: &str,
        at: Millis,
        event: &Event,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Ok(store::deactivate(tenant, id, at, &event_to_store(event))
            .map_err(store_error)?
            .map(record_from_store))
    }
    fn remove(&self, tenant: &str, id: &str, event: &Event) -> Result<bool, StoreError> {
        store::remove(tenant, id, &event_to_store(event)).map_err(store_error)
    }
    fn roll(&self, roll: &Roll<'_>) -> Result<Option<KeyRecord>, StoreError> {
        let events: Vec<store::StoredEvent> = roll.events.iter().map(event_to_store).collect();
        Ok(store::roll(
            roll.tenant,
            roll.id,
            roll.at,
            roll.expires_at,
            &record_to_store(roll.key),
            &roll.hash.0,
            roll.tenant_limit,
            &events,
        )
        .map_err(store_error)?
        .map(record_from_store))
    }
    fn events(
        &self,
        tenant: &str,
        key_id: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        Ok(store::events(tenant, key_id, before, limit)
            .map_err(store_error)?
            .into_iter()
            .map(event_from_store)
            .collect())
    }
    fn record_use(&self, id: &str, at: Millis) -> Result<(), StoreError> {
        store::record_use(id, at).map_err(store_error)
    }
}

fn verified_to_wit(v: Verified) -> auth::Verified {
    auth::Verified {
        key_id: v.key.id,
        tenant: v.key.tenant,
        permissions: v
            .key
            .permissions
            .into_iter()
            .map(permission_to_wit)
            .collect(),
        permission: permission_to_wit(v.permission),
    }
}

// ---- typed exports -----------------------------------------------------

impl keys::Guest for Component {
    fn list(tenant: String) -> Result<Vec<wit::KeyRecord>, wit::Error> {
        lifecycle::list(&HostStore, &tenant)
            .map(|list| list.iter().map(record_to_wit).collect())
            .map_err(error_to_wit)
    }

    fn get(tenant: String, id: String) -> Result<wit::KeyRecord, wit::Error> {
        lifecycle::get(&HostStore, &tenant, &id)
            .map(|r| record_to_wit(&r))
            .map_err(error_to_wit)
    }

    fn create(
        tenant: String,
        name: String,
        permissions: Vec<wit::Permission>,
        expires_at: Option<u64>,
        actor: wit::Actor,
    ) -> Result<wit::CreatedKey, wit::Error> {
        let permissions: Vec<Permission> =
            permissions.into_iter().map(permission_from_wit).collect();
        let new = NewKey {
            name: &name,
            permissions: &permissions,
            expires_at,
        };
        let (record, raw) = lifecycle::create(
            &HostStore,
            &tenant,
            &new,
            &actor_from_wit(actor),
            settings().max_keys_per_tenant,
        )
        .map_err(error_to_wit)?;
        Ok(wit::CreatedKey {
            key: record_to_wit(&record),
            raw_key: raw.expose().to_owned(),
        })
    }

    fn roll(
        tenant: String,
        id: String,
        grace_period_seconds: u32,
        actor: wit::Actor,
    ) -> Result<wit::RolledKey, wit::Error> {
        let rolled = lifecycle::roll(
            &HostStore,
            &tenant,
            &id,
            grace_period_seconds,
            &actor_from_wit(actor),
            settings().max_keys_per_tenant,
        )
        .map_err(error_to_wit)?;
        Ok(wit::RolledKey {
            created: wit::CreatedKey {
                key: record_to_wit(&rolled.key),
                raw_key: rolled.raw.expose().to_owned(),
            },
            previous: record_to_wit(&rolled.previous),
        })
    }

    fn deactivate(
        tenant: String,
        id: String,
        actor: wit::Actor,
    ) -> Result<wit::KeyRecord, wit::Error> {
        lifecycle::deactivate(&HostStore, &tenant, &id, &actor_from_wit(actor))
            .map(|r| record_to_wit(&r))
            .map_err(error_to_wit)
    }

    fn delete(tenant: String, id: String, actor: wit::Actor) -> Result<(), wit::Error> {
        lifecycle::delete(&HostStore, &tenant, &id, &actor_from_wit(actor)).map_err(error_to_wit)
    }

    fn events(
        tenant: String,
        key_id: Option<String>,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<wit::EventPage, wit::Error> {
        let page = lifecycle::events(
            &HostStore,
            &tenant,
            key_id.as_deref(),
            cursor.as_deref(),
            limit,
        )
        .map_err(error_to_wit)?;
        Ok(wit::EventPage {
            events: page.events.into_iter().map(event_to_wit).collect(),
            next: page.next,
        })
    }
}

impl auth::Guest for Component {
    fn verify(raw_key: String, permission: wit::Permission) -> Result<auth::Verified, wit::Error> {
        lifecycle::verify(&HostStore, &raw_key, permission_from_wit(permission))
            .map(verified_to_wit)
            .map_err(error_to_wit)
    }

    fn authorize(
        raw_key: String,
        method: String,
        path: String,
    ) -> Result<auth::Verified, wit::Error> {
        lifecycle::authorize(&HostStore, &raw_key, &method, &path)
            .map(verified_to_wit)
            .map_err(error_to_wit)
    }

    fn required_permission(method: String, path: String) -> Result<wit::Permission, wit::Error> {
        lifecycle::required_permission(&method, &path)
            .map(permission_to_wit)
            .map_err(error_to_wit)
    }
}

impl gateway::Guest for Component {
    fn decide(head: gateway::RequestHead) -> gateway::Decided {
        let Some(client_headers) = headers::unpack_headers(&head.headers.bytes, &head.headers.ends)
        else {
            // Fail closed: a head this component cannot read is not guessed at.
            let refusal = api::error_reply(&ApiError::invalid_request(
                "the request head's headers are malformed",
            ));
            return gateway::Decided {
                route: gateway::RouteClass::Resource,
                decision: gateway::Decision::Reply(reply_to_wit(&refusal)),
            };
        };
        let request = RequestHead {
            method: &head.method,
            path_with_query: &head.path_with_query,
            headers: &client_headers,
            peer: head.peer.as_deref(),
            tls: head.tls,
        };
        let mut caller = Caller::default();
        let decision = api::decide(&HostStore, settings(), &request, &mut caller);
        if !matches!(decision, Decision::Handle) {
            identify(&caller);
        }
        let route = match api::route_class(request.path()) {
            RouteClass::Resource => gateway::RouteClass::Resource,
            RouteClass::Authorization => gateway::RouteClass::Authorization,
            RouteClass::Management => gateway::RouteClass::Management,
            RouteClass::Verify => gateway::RouteClass::Verify,
            RouteClass::SecretScanning => gateway::RouteClass::SecretScanning,
            RouteClass::ApiDescription => gateway::RouteClass::ApiDescription,
        };
        let decision = match decision {
            Decision::Reply(reply) => gateway::Decision::Reply(reply_to_wit(&reply)),
            Decision::Forward(plan) => gateway::Decision::Forward(gateway::Forward {
                scheme: match plan.upstream.scheme {
                    UpstreamScheme::Http => gateway::Scheme::Http,
                    UpstreamScheme::Https => gateway::Scheme::Https,
                },
                authority: plan.upstream.authority,
                path_with_query: plan.path_with_query,
                remove: pack(plan.remove.iter().map(String::as_bytes)),
                add: {
                    let (bytes, ends) = plan.add.into_parts();
                    gateway::Packed { bytes, ends }
                },
                timeout_ms: settings().upstream_timeout_ms,
            }),
            Decision::Handle => {
                gateway::Decision::Handle(u32::try_from(api::MAX_BODY_BYTES).unwrap_or(u32::MAX))
            }
        };
        gateway::Decided { route, decision }
    }

    fn upstream_failed(failure: gateway::UpstreamFailure) -> gateway::Reply {
        reply_to_wit(&api::upstream_failed(match failure {
            gateway::UpstreamFailure::Timeout => UpstreamFailure::Timeout,
            gateway::UpstreamFailure::Unreachable => UpstreamFailure::Unreachable,
        }))
    }

    fn hop_by_hop_headers() -> Vec<String> {
        headers::HOP_BY_HOP
            .iter()
            .map(|n| (*n).to_owned())
            .collect()
    }
}

/// `parts` as the WIT `packed` record (see [`headers::pack`]).
fn pack<'a>(parts: impl Iterator<Item = &'a [u8]> + Clone) -> gateway::Packed {
    let (bytes, ends) = headers::pack(parts);
    gateway::Packed { bytes, ends }
}

fn reply_to_wit(reply: &Reply) -> gateway::Reply {
    let (status, headers, body) = reply.to_http();
    gateway::Reply {
        status,
        headers,
        body,
    }
}

fn identify(caller: &Caller) {
    request_log::identify(
        caller.tenant.as_deref(),
        caller.key_id.as_deref(),
        caller.subject.as_deref(),
    );
}

// ---- wasi:http ---------------------------------------------------------

/// The identity provider's key set as the host holds it now (`jwt-jwks`,
/// which the host replaces when the provider rotates its keys), parsed once
/// per version of its text.
fn current_key_set() -> Option<Arc<KeySet>> {
    static PARSED: Mutex<Option<(String, Option<Arc<KeySet>>)>> = Mutex::new(None);
    let text = wasi::config::store::get("jwt-jwks")
        .ok()
        .flatten()
        .filter(|v| !v.is_empty())?;
    let mut parsed = PARSED.lock().ok()?;
    if let Some((seen, set)) = parsed.as_ref()
        && *seen == text
    {
        return set.clone();
    }
    let set = match KeySet::parse(&text) {
        Ok(set) => Some(Arc::new(set)),
        Err(why) => {
            // Fail closed: no key-set token passes until a usable set arrives.
            eprintln!("sigma-keys component: the JWK Set is unusable: {why}");
            None
        }
    };
    *parsed = Some((text, set.clone()));
    set
}

/// Configuration from `wasi:config/store`, read once per instance.
fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let get = |key: &str| wasi::config::store::get(key).ok().flatten().filter(|v| !v.is_empty());
        let jwt_secret = get("jwt-secret").map(String::into_bytes).filter(|s| {
            let long_enough = s.len() >= MIN_SECRET_LEN;
            if !long_enough {
                eprintln!("sigma-keys component: jwt-secret is shorter than {MIN_SECRET_LEN} bytes; Bearer tokens are refused");
            }
            long_enough
        });
        let upstream = get("upstream").and_then(|url| match Upstream::parse(&url) {
            Ok(u) => Some(u),
            Err(why) => {
                eprintln!("sigma-keys component: ignoring upstream: {why}");
                None
            }
        });
        let upstream_timeout_ms = get("upstream-timeout-ms")
            .and_then(|v| v.parse().ok())
            .filter(|ms| *ms > 0)
            .unwrap_or(api::DEFAULT_UPSTREAM_TIMEOUT_MS);
        let jwt_max_lifetime_secs = get("jwt-max-lifetime-secs")
            .and_then(|v| v.parse().ok())
            .filter(|s| *s > 0)
            .unwrap_or(api::DEFAULT_JWT_MAX_LIFETIME_SECS);
        let max_keys_per_tenant = get("max-keys-per-tenant")
            .and_then(|v| v.parse().ok())
            .unwrap_or(api::DEFAULT_MAX_KEYS_PER_TENANT);
        let github_scanning_keys = get("github-scanning-keys");
        let endpoints = api::Endpoints::parse(get("endpoints").as_deref());
        let jwt_key_set = if get("jwt-jwks").is_some() {
            KeySetSource::new(current_key_set)
        } else {
            KeySetSource::NONE
        };
        Settings {
            jwt_secret,
            jwt_key_set,
            jwt_issuer: get("jwt-issuer"),
            jwt_audience: get("jwt-audience"),
            tenant_claim: get("tenant-claim")
                .unwrap_or_else(|| jwt::DEFAULT_TENANT_CLAIM.to_owned()),
            upstream,
            upstream_timeout_ms,
            jwt_max_lifetime_secs,
            max_keys_per_tenant,
            github_scanning_keys,
            endpoints,
        }
    })
}

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(s) => s.clone(),
    }
}

/// The request body, consumed on first use.
struct RequestBody<'a> {
    request: &'a IncomingRequest,
}

impl BodySource for RequestBody<'_> {
    fn read_limited(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let body = self
            .request
            .consume()
            .map_err(|()| BodyError::Failed("already read".into()))?;
        let stream = body
            .stream()
            .map_err(|()| BodyError::Failed("no body stream".into()))?;
        let mut out = Vec::new();
        loop {
            match stream.blocking_read(16 * 1024) {
                Ok(chunk) => {
                    if out.len() + chunk.len() > limit {
                        return Err(BodyError::TooLarge);
                    }
                    out.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(BodyError::Failed(e.to_debug_string()));
                }
            }
        }
        drop(stream);
        let _trailers = IncomingBody::finish(body);
        Ok(out)
    }
}

impl exports::wasi::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = method_name(&request.method());
        let path = request.path_with_query().unwrap_or_else(|| "/".into());
        let headers = request.headers().entries();
        let client_headers = headers::borrowed(&headers);
        let head = RequestHead {
            method: &method,
            path_with_query: &path,
            headers: &client_headers,
            // wasi:http does not tell the client's address.
            peer: None,
            tls: matches!(request.scheme(), Some(Scheme::Https)),
        };
        let mut caller = Caller::default();
        let outcome = api::handle(
            &HostStore,
            settings(),
            &head,
            &mut RequestBody { request: &request },
            &mut caller,
        );
        identify(&caller);
        match outcome {
            Outcome::Reply(reply) => send_reply(out, &reply),
            Outcome::Forward(plan) => forward(&request, &method, &client_headers, plan, out),
        }
    }
}

fn send_reply(out: ResponseOutparam, reply: &Reply) {
    let (status, headers, body) = reply.to_http();
    let Ok(fields) = Fields::from_list(&headers) else {
        ResponseOutparam::set(
            out,
            Err(HttpErrorCode::InternalError(Some(
                "bad reply headers".into(),
            ))),
        );
        return;
    };
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let Ok(out_body) = response.body() else {
        ResponseOutparam::set(out, Err(HttpErrorCode::InternalError(None)));
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = out_body.write() {
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(out_body, None);
}

fn wasi_method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        other => Method::Other(other.into()),
    }
}

fn reply_upstream_failure(out: ResponseOutparam, e: &HttpErrorCode) {
    eprintln!("sigma-keys component: upstream request failed: {e:?}");
    let failure = match e {
        HttpErrorCode::ConnectionTimeout
        | HttpErrorCode::ConnectionReadTimeout
        | HttpErrorCode::HttpResponseTimeout => UpstreamFailure::Timeout,
        _ => UpstreamFailure::Unreachable,
    };
    send_reply(out, &api::upstream_failed(failure));
}

fn reply_error(out: ResponseOutparam, e: &ApiError) {
    send_reply(
        out,
        &Reply {
            status: e.code.status(),
            headers: vec![],
            body: e.to_json(),
        },
    );
}

/// Copies `input` to `output` until the input ends. False if either side failed.
fn pump(input: &InputStream, output: &OutputStream) -> bool {
    loop {
        match output.blocking_splice(input, 64 * 1024) {
            Ok(_) => {}
            Err(StreamError::Closed) => return output.blocking_flush().is_ok(),
            Err(StreamError::LastOperationFailed(_)) => return false,
        }
    }
}

fn forward(
    request: &IncomingRequest,
    method: &str,
    client_headers: &[headers::HeaderRef<'_>],
    plan: api::Forward,
    out: ResponseOutparam,
) {
    let Ok(fields) = Fields::from_list(&plan.headers(client_headers)) else {
        reply_error(
            out,
            &ApiError::invalid_request("the request has a header that cannot be forwarded"),
        );
        return;
    };
    let upstream_request = OutgoingRequest::new(fields);
    let scheme = match plan.upstream.scheme {
        UpstreamScheme::Http => Scheme::Http,
        UpstreamScheme::Https => Scheme::Https,
    };
    let configured = upstream_request.set_method(&wasi_method(method)).is_ok()
        && upstream_request.set_scheme(Some(&scheme)).is_ok()
        && upstream_request
            .set_authority(Some(&plan.upstream.authority))
            .is_ok()
        && upstream_request
            .set_path_with_query(Some(&plan.path_with_query))
            .is_ok();
    if !configured {
        reply_error(
            out,
            &ApiError::internal("could not build the upstream request"),
        );
        return;
    }
    let Ok(upstream_body) = upstream_request.body() else {
        reply_error(out, &ApiError::internal("no upstream request body"));
        return;
    };
    let options = RequestOptions::new();
    let timeout_ns = settings().upstream_timeout_ms.saturating_mul(1_000_000);
    let _ = options.set_connect_timeout(Some(timeout_ns));
    let _ = options.set_first_byte_timeout(Some(timeout_ns));
    let _ = options.set_between_bytes_timeout(Some(timeout_ns));
    let pending = match wasi::http::outgoing_handler::handle(upstream_request, Some(options)) {
        Ok(p) => p,
        Err(e) => return reply_upstream_failure(out, &e),
    };

    // Stream the client's body to the upstream as it arrives.
    if let Ok(client_body) = request.consume() {
        if let (Ok(input), Ok(output)) = (client_body.stream(), upstream_body.write()) {
            pump(&input, &output);
        }
        let _ = IncomingBody::finish(client_body);
    }
    let _ = OutgoingBody::finish(upstream_body, None);

    let response = loop {
        if let Some(result) = pending.get() {
            break result;
        }
        pending.subscribe().block();
    };
    let response = match response {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return reply_upstream_failure(out, &e),
        Err(()) => return reply_error(out, &ApiError::internal("upstream response taken twice")),
    };

    let status = response.status();
    let mut headers =
        headers::end_to_end_headers(&headers::borrowed(&response.headers().entries()));
    if method == "HEAD" || status == 204 || status == 304 {
        // No body follows, so a length would not match what we write.
        headers.retain(|(n, _)| n != "content-length");
    }
    let Ok(fields) = Fields::from_list(&headers) else {
        return reply_error(
            out,
            &ApiError::new(
                ErrorCode::UpstreamUnavailable,
                "The upstream sent headers that cannot be passed on.",
            ),
        );
    };
    let client_response = OutgoingResponse::new(fields);
    let _ = client_response.set_status_code(status);
    let Ok(client_body) = client_response.body() else {
        return reply_error(out, &ApiError::internal("no response body"));
    };
    let Ok(upstream_body) = response.consume() else {
        return reply_error(out, &ApiError::internal("upstream body taken twice"));
    };
    ResponseOutparam::set(out, Ok(client_response));
    let complete = match (upstream_body.stream(), client_body.write()) {
        (Ok(input), Ok(output)) => pump(&input, &output),
        _ => false,
    };
    if complete {
        let _ = OutgoingBody::finish(client_body, None);
    } else {
        eprintln!("sigma-keys component: upstream response body was cut short");
    }
}
