//! The REST API as plain Rust: from a request head (and a bounded body, when
//! an endpoint needs one) to a JSON reply or a plan to forward upstream. The
//! `wasi:http` layer only moves bytes.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::error::{ApiError, ErrorCode};
use super::events::{self, Actor, Via};
use super::forward_auth::{self, Convention, ERROR_HEADER, STATUS_HEADER};
use super::framing;
use super::headers::{
    API_KEY_HEADER, FORWARDED_FOR, FORWARDED_HOST, FORWARDED_PROTO, HeaderRef, IDENTITY_HEADERS,
    PackedHeaders, is_owned, is_plain_authority, not_forwarded, without,
};
use super::jwt::{self, Principal, TokenRules};
use super::key_set::KeySetSource;
use super::keys::{self, KeyStore, NewKey, Verified};
use super::permission::Permission;
use super::routes::{self, API_BASE, METHODS};
use super::secret_scanning::{self, PublicKeys};
use super::time::now_millis;
use super::upstream::Upstream;

/// Largest management request body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long to wait for the upstream to connect, answer, or send more body.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;

/// How far ahead a Bearer token's `exp` may be, unless configured otherwise.
pub const DEFAULT_JWT_MAX_LIFETIME_SECS: u64 = 24 * 60 * 60;
/// Keys one tenant may have at once, unless configured otherwise.
pub const DEFAULT_MAX_KEYS_PER_TENANT: u32 = 10_000;

/// Header names are lower-case; values are raw bytes.
pub type Headers = Vec<(String, Vec<u8>)>;

/// What the component knows of its configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub jwt_secret: Option<Vec<u8>>,
    /// The identity provider's keys, for RS256, ES256 and EdDSA tokens.
    pub jwt_key_set: KeySetSource,
    /// Key-set tokens must carry this `iss`, when given.
    pub jwt_issuer: Option<String>,
    /// Key-set tokens must carry this `aud`, when given.
    pub jwt_audience: Option<String>,
    /// The claim that names the tenant in key-set tokens.
    pub tenant_claim: String,
    pub upstream: Option<Upstream>,
    pub upstream_timeout_ms: u64,
    /// Bearer tokens whose `exp` is further ahead than this are refused.
    pub jwt_max_lifetime_secs: u64,
    /// Creating a key beyond this many for one tenant is refused.
    pub max_keys_per_tenant: u32,
    /// GitHub's secret scanning key list, as GitHub publishes it: `None`
    /// turns the endpoint off. It is parsed by the endpoint, so instances
    /// that never see an alert never pay for it; an unreadable list keeps
    /// the endpoint on and refuses every alert (fail closed).
    pub github_scanning_keys: Option<String>,
    /// Which endpoints this listener serves.
    pub endpoints: Endpoints,
}

/// Which endpoints a listener serves: with `--auth-listen`, the
/// authorization endpoints move to a listener of their own, so they can
/// stay private.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Endpoints {
    /// Everything: the gateway, the management API and `/_sigma/auth/`.
    #[default]
    All,
    /// Everything but `/_sigma/auth/`.
    Public,
    /// Only `/_sigma/auth/`.
    Auth,
}

impl Endpoints {
    /// From the component's `endpoints` setting. An unknown value serves
    /// the least: only the authorization endpoints.
    pub fn parse(value: Option<&str>) -> Endpoints {
        match value {
            None | Some("all") => Endpoints::All,
            Some("public") => Endpoints::Public,
            Some(_) => Endpoints::Auth,
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            jwt_secret: None,
            jwt_key_set: KeySetSource::NONE,
            jwt_issuer: None,
            jwt_audience: None,
            tenant_claim: jwt::DEFAULT_TENANT_CLAIM.to_owned(),
            upstream: None,
            upstream_timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
            jwt_max_lifetime_secs: DEFAULT_JWT_MAX_LIFETIME_SECS,
            max_keys_per_tenant: DEFAULT_MAX_KEYS_PER_TENANT,
            github_scanning_keys: None,
            endpoints: Endpoints::All,
        }
    }
}

/// The parts of a request the API decides on.
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// Path and query as the client sent them.
    pub path_with_query: &'a str,
    pub headers: &'a [HeaderRef<'a>],
    /// The client's IP address, when the host knows it.
    pub peer: Option<&'a str>,
    /// Whether the client reached us over TLS.
    pub tls: bool,
}

impl RequestHead<'_> {
    pub fn path(&self) -> &str {
        self.path_with_query
            .split_once('?')
            .map_or(self.path_with_query, |(p, _)| p)
    }

    fn values(&self, name: &str) -> impl Iterator<Item = &[u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Failed(String),
}

/// A request body, read only when an endpoint needs it.
pub trait BodySource {
    /// The whole body, or `TooLarge` as soon as it passes `limit` bytes.
    fn read_limited(&mut self, limit: usize) -> Result<Vec<u8>, BodyError>;
}

/// Who made a request, for the host's request log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    pub subject: Option<String>,
}

/// A complete JSON response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The JSON body; `Null` sends no body at all.
    pub body: Value,
}

/// A request to pass on to the upstream: the client's headers, less every
/// header named in `remove`, then `add`. Only the changes cross the
/// component boundary, not every header twice.
#[derive(Debug)]
pub struct Forward {
    pub upstream: Upstream,
    pub path_with_query: String,
    /// Lower-case names, each once, of the client's headers not to pass on:
    /// every header of each name goes, whatever its case.
    pub remove: Vec<String>,
    /// The headers the gateway sets upstream, after the client's.
    pub add: PackedHeaders,
}

impl Forward {
    /// The headers to send upstream for a request with these headers.
    pub fn headers(&self, client: &[HeaderRef<'_>]) -> Headers {
        let mut headers = without(client, &self.remove);
        headers.extend(self.add.iter().map(|(n, v)| (n.to_owned(), v.to_vec())));
        headers
    }
}

/// What to do with a request.
#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    Forward(Forward),
}

/// What to do with a request, decided from its head alone.
#[derive(Debug)]
pub enum Decision {
    Reply(Reply),
    Forward(Forward),
    /// A management endpoint: it needs the whole request, body included.
    Handle,
}

impl Reply {
    /// The status, every header (`content-type` and `content-length` first) and the body bytes.
    pub fn to_http(&self) -> (u16, Headers, Vec<u8>) {
        let mut headers: Headers = Vec::with_capacity(self.headers.len() + 2);
        let body = if self.body.is_null() {
            headers.push(("content-length".into(), b"0".to_vec()));
            Vec::new()
        } else {
            let body = serde_json::to_vec(&self.body).unwrap_or_default();
            headers.push(("content-type".into(), b"application/json".to_vec()));
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
            body
        };
        headers.extend(
            self.headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone().into_bytes())),
        );
        (self.status, headers, body)
    }
}

/// Why a forwarded request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    Timeout,
    Unreachable,
}

/// The answer when the upstream fails before its response starts.
pub fn upstream_failed(failure: UpstreamFailure) -> Reply {
    let e = match failure {
        UpstreamFailure::Timeout => ApiError::new(
            ErrorCode::UpstreamTimeout,
            "The upstream did not answer in time. Retry later.",
        ),
        UpstreamFailure::Unreachable => ApiError::new(
            ErrorCode::UpstreamUnavailable,
            "The upstream could not be reached. Retry later.",
        ),
    };
    error_reply(&e)
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        headers: vec![("cache-control".into(), "no-store".into())],
        body,
    }
}

pub fn error_reply(e: &ApiError) -> Reply {
    let mut r = reply(e.code.status(), e.to_json());
    match e.code {
        ErrorCode::Unauthenticated | ErrorCode::InvalidToken => {
            r.headers.push(("www-authenticate".into(), "Bearer".into()));
        }
        ErrorCode::MethodNotAllowed => {
            // Resource 405s carry the resource methods; management ones set their own.
            r.headers.push(("allow".into(), routes::allowed_methods()));
        }
        _ => {}
    }
    r
}

fn method_not_allowed(allow: &str) -> Reply {
    let e = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("This endpoint accepts only {allow}."),
    );
    let mut r = reply(405, e.to_json());
    r.headers.push(("allow".into(), allow.into()));
    r
}

/// The management endpoints, by path shape.
enum Management<'a> {
    Collection,
    Verify,
    Events,
    Deactivate(&'a str),
    Roll(&'a str),
    Key(&'a str),
    SecretScanning,
    OpenApi,
}

/// Where GitHub posts secret scanning alerts.
pub const SECRET_SCANNING_PATH: &str = "/api/v1/secret-scanning/github";
/// Where this API's OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// `docs/openapi.yaml` as JSON (made by `build.rs`).
const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// The OpenAPI document, parsed once per instance.
fn openapi_document() -> Value {
    static DOCUMENT: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOCUMENT
        .get_or_init(|| serde_json::from_str(OPENAPI_JSON).unwrap_or(Value::Null))
        .clone()
}

fn management_route(path: &str) -> Option<Management<'_>> {
    if path == SECRET_SCANNING_PATH {
        return Some(Management::SecretScanning);
    }
    if path == OPENAPI_PATH {
        return Some(Management::OpenApi);
    }
    let rest = path.strip_prefix(API_BASE)?.strip_prefix("/api-keys")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(Management::Collection);
    }
    let rest = rest.strip_prefix('/')?;
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["verify"] => Some(Management::Verify),
        ["events"] => Some(Management::Events),
        [id, "deactivate"] if !id.is_empty() => Some(Management::Deactivate(id)),
        [id, "roll"] if !id.is_empty() => Some(Management::Roll(id)),
        [id] if !id.is_empty() => Some(Management::Key(id)),
        _ => None,
    }
}

/// Which kind of endpoint a request is for (a bounded label for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteClass {
    Resource,
    Authorization,
    Management,
    Verify,
    SecretScanning,
    ApiDescription,
}

/// The route class of a path, as [`decide`] and [`handle`] route it.
pub fn route_class(path: &str) -> RouteClass {
    if forward_auth::is_auth_path(path) {
        return RouteClass::Authorization;
    }
    match management_route(path) {
        None => RouteClass::Resource,
        Some(Management::Verify) => RouteClass::Verify,
        Some(Management::SecretScanning) => RouteClass::SecretScanning,
        Some(Management::OpenApi) => RouteClass::ApiDescription,
        Some(_) => RouteClass::Management,
    }
}

/// Handles one request. `caller` is filled in as soon as the caller is known.
pub fn handle(
    store: &dyn KeyStore,
    settings: &Settings,
    head: &RequestHead<'_>,
    body: &mut dyn BodySource,
    caller: &mut Caller,
) -> Outcome {
    match route(store, settings, head, body, caller) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Reply(error_reply(&e)),
    }
}

/// Decides a request from its head: management endpoints need their body
/// (`Handle`); every other request is answered or forwarded right away.
/// Decides exactly as [`handle`] does.
pub fn decide(
    store: &dyn KeyStore,
    settings: &Settings,
    head: &RequestHead<'_>,
    caller: &mut Caller,
) -> Decision {
    // Before the framing checks: an authorization request's own body is
    // never read or passed on (a proxy may send the original's framing).
    if let Some(served) = served_here(settings, head.path()) {
        return Decision::Reply(match served {
            Ok(convention) => auth_endpoint(store, settings, head, convention, caller),
            Err(e) => error_reply(&e),
        });
    }
    if let Err(e) = check_request(head) {
        return Decision::Reply(error_reply(&e));
    }
    if management_route(head.path()).is_some() {
        return Decision::Handle;
    }
    match resource(store, settings, head, caller) {
        Ok(Outcome::Forward(plan)) => Decision::Forward(plan),
        Ok(Outcome::Reply(reply)) => Decision::Reply(reply),
        Err(e) => Decision::Reply(error_reply(&e)),
    }
}

fn route(
    store: &dyn KeyStore,
    settings: &Settings,
    head: &RequestHead<'_>,
    body: &mut dyn BodySource,
    caller: &mut Caller,
) -> Result<Outcome, ApiError> {
    let path = head.path();
    if let Some(served) = served_here(settings, path) {
        return Ok(Outcome::Reply(auth_endpoint(
            store, settings, head, served?, caller,
        )));
    }
    check_request(head)?;
    if let Some(endpoint) = management_route(path) {
        return management(store, settings, head, endpoint, body, caller).map(Outcome::Reply);
    }
    resource(store, settings, head, caller)
}

/// Whether this listener answers `path` differently from the gateway: an
/// authorization endpoint's convention, or an error for a path this
/// listener does not serve. `None`: the gateway and management API decide.
fn served_here(settings: &Settings, path: &str) -> Option<Result<&'static Convention, ApiError>> {
    let auth = forward_auth::is_auth_path(path);
    let elsewhere = match (settings.endpoints, auth) {
        (Endpoints::Public, true) => "the authorization endpoints are served on another listener",
        (Endpoints::Auth, false) => "this listener serves only the authorization endpoints",
        (_, false) => return None,
        (_, true) => return Some(forward_auth::convention(path)),
    };
    Some(Err(ApiError::new(
        ErrorCode::UnknownResource,
        format!("Nothing is served at this path here: {elsewhere}."),
    )))
}

/// An authorization endpoint: the gateway's decision about the request the
/// proxy asks about, said in the proxy's terms. Allowed: 200, no body, the
/// identity headers for the proxy to copy upstream. Nothing is forwarded.
fn auth_endpoint(
    store: &dyn KeyStore,
    settings: &Settings,
    head: &RequestHead<'_>,
    convention: &Convention,
    caller: &mut Caller,
) -> Reply {
    let admitted =
        forward_auth::original(convention, head.method, head.path_with_query, head.headers)
            .and_then(|original| {
                let asked = RequestHead {
                    method: original.method,
                    path_with_query: original.path_with_query,
                    ..*head
                };
                if routes::overrides_method(asked.path_with_query) {
                    return Err(ApiError::invalid_request(
                        "the original URI must not carry a method override (_method)",
                    ));
                }
                admit(store, settings, &asked, caller)
            });
    match admitted {
        Ok(admitted) => {
            let mut r = Reply {
                status: 200,
                headers: vec![("cache-control".into(), "no-store".into())],
                body: Value::Null,
            };
            if convention.only_401_403 {
                r.headers.push((STATUS_HEADER.into(), "200".into()));
            }
            if let Some(remove) = convention.remove_header {
                let unset = IDENTITY_HEADERS
                    .into_iter()
                    .filter(|name| !admitted.identity.iter().any(|(set, _)| set == name));
                let names: Vec<&str> = std::iter::once(API_KEY_HEADER).chain(unset).collect();
                r.headers.push((remove.into(), names.join(", ")));
            }
            if convention.name_every_identity {
                for name in IDENTITY_HEADERS {
                    if !admitted.identity.iter().any(|(set, _)| *set == name) {
                        r.headers.push((name.to_owned(), String::new()));
                    }
                }
            }
            r.headers.extend(
                admitted
                    .identity
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value.into_owned())),
            );
            r
        }
        Err(e) => {
            let mut r = error_reply(&e);
            r.status = forward_auth::refusal_status(convention, &e);
            if convention.only_401_403 {
                r.headers
                    .push((STATUS_HEADER.into(), e.code.status().to_string()));
                r.headers.push((ERROR_HEADER.into(), e.code.name().into()));
            }
            r
        }
    }
}

/// What every request must satisfy before anything else is looked at, and
/// before any credential costs a lookup: unambiguous body framing, and no
/// method override in the query.
fn check_request(head: &RequestHead<'_>) -> Result<(), ApiError> {
    framing::check(head.method, head.headers)?;
    if routes::overrides_method(head.path_with_query) {
        return Err(ApiError::invalid_request(
            "the query must not carry a method override (_method); send the real method",
        ));
    }
    Ok(())
}

/// The credential a request carries.
enum Credential<'a> {
    None,
    ApiKey(&'a str),
    Bearer(&'a str),
}

fn credential<'h>(head: &'h RequestHead<'_>) -> Result<Credential<'h>, ApiError> {
    // The first of each and whether there is a second: no list is needed.
    let mut keys = head.values(API_KEY_HEADER);
    let mut auths = head.values("authorization");
    let (key, another_key) = (keys.next(), keys.next().is_some());
    let (auth, another_auth) = (auths.next(), auths.next().is_some());
    if key.is_some() && auth.is_some() {
        return Err(ApiError::new(
            ErrorCode::AmbiguousCredentials,
            "Send either an X-Sigma-ApiKey header or an Authorization header, not both.",
        ));
    }
    if another_key || another_auth {
        return Err(ApiError::new(
            ErrorCode::AmbiguousCredentials,
            "Send exactly one credential header.",
        ));
    }
    if let Some(key) = key {
        // A non-UTF-8 key is simply not a key; the format check refuses it.
        return Ok(Credential::ApiKey(std::str::from_utf8(key).unwrap_or("")));
    }
    if let Some(auth) = auth {
        let auth = std::str::from_utf8(auth).unwrap_or("");
        let (scheme, token) = auth.split_once(' ').unwrap_or((auth, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidToken,
                "The Authorization header must be `Bearer <token>`.",
            ));
        }
        return Ok(Credential::Bearer(token.trim()));
    }
    Ok(Credential::None)
}

fn bearer(settings: &Settings, token: &str) -> Result<Principal, ApiError> {
    jwt::verify(
        token,
        &TokenRules {
            secret: settings.jwt_secret.as_deref(),
            key_set: &settings.jwt_key_set,
            issuer: settings.jwt_issuer.as_deref(),
            audience: settings.jwt_audience.as_deref(),
            tenant_claim: &settings.tenant_claim,
            max_lifetime_secs: settings.jwt_max_lifetime_secs,
        },
    )
}

fn management(
    store: &dyn KeyStore,
    settings: &Settings,
    head: &RequestHead<'_>,
    endpoint: Management<'_>,
    body: &mut dyn BodySource,
    caller: &mut Caller,
) -> Result<Reply, ApiError> {
    if let Management::Verify = endpoint {
        // The raw key in the body is the credential.
        if head.method != "POST" {
            return Ok(method_not_allowed("POST"));
        }
        let request = read_json(head, body)?;
        return verify_endpoint(store, &request, caller);
    }
    if let Management::OpenApi = endpoint {
        // Public, as any published API description.
        if head.method != "GET" {
            return Ok(method_not_allowed("GET"));
        }
        return Ok(reply(200, openapi_document()));
    }
    if let Management::SecretScanning = endpoint {
        // GitHub's signature is the credential.
        return secret_scanning_endpoint(store, settings, head, body);
    }
    let principal = match credential(head)? {
        Credential::None => {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "Send a Bearer token in the Authorization header to manage API keys.",
            ));
        }
        Credential::ApiKey(_) => {
            return Err(ApiError::new(
                ErrorCode::ApiKeyNotAllowed,
                "API keys cannot manage API keys. Use a Bearer token.",
            ));
        }
        Credential::Bearer(token) => bearer(settings, token)?,
    };
    caller.tenant = Some(principal.tenant.clone());
    caller.subject = principal.subject.clone();
    let tenant = principal.tenant.as_str();
    let actor = Actor {
        via: Via::Token,
        subject: principal.subject.clone(),
    };
    match (endpoint, head.method) {
        (Management::Collection, "GET") => {
            let list: Vec<Value> = keys::list(store, tenant)?
                .iter()
                .map(|k| k.to_json())
                .collect();
            Ok(reply(200, Value::Array(list)))
        }
        (Management::Collection, "POST") => {
            let request = read_json(head, body)?;
            let (name, permissions, expires_at) = parse_create(&request)?;
            let new = NewKey {
                name: &name,
                permissions: &permissions,
                expires_at,
            };
            let (record, raw) =
                keys::create(store, tenant, &new, &actor, settings.max_keys_per_tenant)?;
            caller.key_id = Some(record.id.clone());
            Ok(reply(201, record.to_created_json(&raw)))
        }
        (Management::Collection, _) => Ok(method_not_allowed("GET, POST")),
        (Management::Deactivate(id), "POST") => {
            caller.key_id = Some(id.to_owned());
            Ok(reply(
                200,
                keys::deactivate(store, tenant, id, &actor)?.to_json(),
            ))
        }
        (Management::Deactivate(_), _) => Ok(method_not_allowed("POST")),
        (Management::Roll(id), "POST") => {
            caller.key_id = Some(id.to_owned());
            let grace = parse_roll(&read_optional_json(head, body)?)?;
            let rolled = keys::roll(
                store,
                tenant,
                id,
                grace,
                &actor,
                settings.max_keys_per_tenant,
            )?;
            Ok(reply(201, rolled.to_json()))
        }
        (Management::Roll(_), _) => Ok(method_not_allowed("POST")),
        (Management::Events, "GET") => {
            let query = EventsQuery::parse(head.path_with_query)?;
            let page = keys::events(
                store,
                tenant,
                query.key_id.as_deref(),
                query.cursor.as_deref(),
                query.limit,
            )?;
            Ok(reply(200, page.to_json()))
        }
        (Management::Events, _) => Ok(method_not_allowed("GET")),
        (Management::Key(id), "GET") => {
            caller.key_id = Some(id.to_owned());
            Ok(reply(200, keys::get(store, tenant, id)?.to_json()))
        }
        (Management::Key(id), "DELETE") => {
            caller.key_id = Some(id.to_owned());
            keys::delete(store, tenant, id, &actor)?;
            Ok(reply(200, json!({"deleted": true})))
        }
        (Management::Key(_), _) => Ok(method_not_allowed("GET, DELETE")),
        (Management::Verify | Management::SecretScanning | Management::OpenApi, _) => {
            Ok(method_not_allowed("POST"))
        }
    }
}

/// `POST /api/v1/secret-scanning/github`: 404 unless configured; the
/// signature is checked over the exact body before anything is read from it.
fn secret_scanning_endpoint(
    store: &dyn KeyStore,
    settings: &Settings,
    head: &RequestHead<'_>,
    body: &mut dyn BodySource,
) -> Result<Reply, ApiError> {
    let Some(keys) = &settings.github_scanning_keys else {
        return Err(ApiError::new(
            ErrorCode::UnknownResource,
            "Secret scanning alerts are not enabled on this server (start it with --github-scanning-keys).",
        ));
    };
    if head.method != "POST" {
        return Ok(method_not_allowed("POST"));
    }
    let keys = &PublicKeys::parse(keys).map_err(|why| {
        ApiError::internal(format!("the GitHub scanning keys are unusable: {why}"))
    })?;
    // One of each, or none: a repeated header could be read two ways.
    let one = |name: &str| {
        let mut values = head.values(name);
        match (values.next(), values.next()) {
            (value, None) => value,
            // Present but unusable: refused as an unknown identifier or a bad signature.
            _ => Some(&b""[..]),
        }
    };
    let identifier = one(secret_scanning::KEY_IDENTIFIER_HEADER);
    let signature = one(secret_scanning::SIGNATURE_HEADER);
    // Without both headers nothing can verify: refuse before reading the body.
    if identifier.is_none() || signature.is_none() {
        secret_scanning::verify(keys, identifier, signature, b"")?;
    }
    let bytes = read_body(head, body)?;
    secret_scanning::verify(keys, identifier, signature, &bytes)?;
    let alerts = secret_scanning::parse_alerts(&bytes)?;
    Ok(reply(200, secret_scanning::process(store, &alerts)?))
}

/// The query of `GET /api-keys/events`.
struct EventsQuery {
    limit: u32,
    cursor: Option<String>,
    key_id: Option<String>,
}

impl EventsQuery {
    fn parse(path_with_query: &str) -> Result<EventsQuery, ApiError> {
        let mut query = EventsQuery {
            limit: events::DEFAULT_PAGE,
            cursor: None,
            key_id: None,
        };
        let Some((_, raw)) = path_with_query.split_once('?') else {
            return Ok(query);
        };
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
            if seen.iter().any(|s| *s == name) {
                return Err(ApiError::invalid_request(format!(
                    "the query gives {} more than once",
                    name.chars().take(64).collect::<String>()
                )));
            }
            seen.push(name.to_string());
            match name.as_ref() {
                "limit" => {
                    let bad = || {
                        ApiError::invalid_request(format!(
                            "limit must be an integer from 1 to {}",
                            events::MAX_PAGE
                        ))
                    };
                    if value.is_empty()
                        || value.len() > 3
                        || !value.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(bad());
                    }
                    query.limit = events::check_limit(value.parse().map_err(|_| bad())?)?;
                }
                "cursor" => query.cursor = Some(value.into_owned()),
                "keyId" => query.key_id = Some(value.into_owned()),
                other => {
                    return Err(ApiError::invalid_request(format!(
                        "unknown query parameter \"{}\"; allowed are limit, cursor, keyId",
                        other.chars().take(64).collect::<String>()
                    )));
                }
            }
        }
        Ok(query)
    }
}

/// The whole body, at most [`MAX_BODY_BYTES`].
fn read_body(head: &RequestHead<'_>, body: &mut dyn BodySource) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
        )
    };
    let declared = head
        .values("content-length")
        .next()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    body.read_limited(MAX_BODY_BYTES).map_err(|e| match e {
        BodyError::TooLarge => too_large(),
        BodyError::Failed(why) => {
            ApiError::invalid_request(format!("the request body could not be read: {why}"))
        }
    })
}

fn read_json(
    head: &RequestHead<'_>,
    body: &mut dyn BodySource,
) -> Result<Map<String, Value>, ApiError> {
    parse_json_object(&read_body(head, body)?)
}

/// A JSON object body, or an empty object when there is no body at all.
fn read_optional_json(
    head: &RequestHead<'_>,
    body: &mut dyn BodySource,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = read_body(head, body)?;
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    parse_json_object(&bytes)
}

fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("The request body is not valid JSON ({e}). Send a JSON object."),
        )
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid_request(
            "the request body must be a JSON object",
        )),
    }
}

fn reject_unknown_fields(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid_request(format!(
            "unknown field \"{}\"; allowed fields are {}",
            k.chars().take(64).collect::<String>(),
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn string_field<'m>(map: &'m Map<String, Value>, field: &str) -> Result<Option<&'m str>, ApiError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid_request(format!(
            "{field} must be a string"
        ))),
    }
}

/// The grace period a roll asks for (0 when not given).
fn parse_roll(map: &Map<String, Value>) -> Result<u32, ApiError> {
    reject_unknown_fields(map, &["gracePeriodSeconds"])?;
    match map.get("gracePeriodSeconds") {
        None => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n <= keys::MAX_GRACE_PERIOD_SECS)
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "gracePeriodSeconds must be an integer from 0 to {}",
                    keys::MAX_GRACE_PERIOD_SECS
                ))
            }),
    }
}

type CreateRequest = (String, Vec<Permission>, Option<u64>);

fn parse_create(map: &Map<String, Value>) -> Result<CreateRequest, ApiError> {
    reject_unknown_fields(map, &["name", "permissions", "expiresAt"])?;
    let expires_at = match map.get("expiresAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(keys::parse_expiry(text, now_millis())?),
        Some(_) => {
            return Err(ApiError::invalid_request(
                "expiresAt must be an RFC 3339 timestamp in UTC, such as 2027-01-31T12:00:00Z",
            ));
        }
    };
    let name =
        string_field(map, "name")?.ok_or_else(|| ApiError::invalid_request("name is required"))?;
    let name = keys::check_name(name)?;
    let list = match map.get("permissions") {
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(ApiError::invalid_request(
                "permissions must be an array of strings",
            ));
        }
        None => return Err(ApiError::invalid_request("permissions is required")),
    };
    let mut permissions = Vec::with_capacity(list.len());
    for item in list {
        let Value::String(s) = item else {
            return Err(ApiError::invalid_request(
                "permissions must contain only strings",
            ));
        };
        let p = Permission::parse(s).ok_or_else(|| {
            ApiError::invalid_request(format!(
                "permissions contains \"{}\", which is not one of: {}",
                s.chars().take(64).collect::<String>(),
                Permission::names()
            ))
        })?;
        permissions.push(p);
    }
    let permissions = keys::check_permissions(&permissions)?;
    Ok((name, permissions, expires_at))
}

fn verify_endpoint(
    store: &dyn KeyStore,
    map: &Map<String, Value>,
    caller: &mut Caller,
) -> Result<Reply, ApiError> {
    reject_unknown_fields(map, &["key", "permission", "method", "path"])?;
    let key =
        string_field(map, "key")?.ok_or_else(|| ApiError::invalid_request("key is required"))?;
    let permission = string_field(map, "permission")?;
    let method = string_field(map, "method")?;
    let path = string_field(map, "path")?;
    let result = match (permission, method, path) {
        (Some(p), None, None) => {
            let p = Permission::parse(p).ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "permission must be one of: {}",
                    Permission::names()
                ))
            })?;
            keys::verify(store, key, p)
        }
        (None, Some(m), Some(p)) => {
            if !METHODS.iter().any(|(name, _)| *name == m) {
                return Err(ApiError::invalid_request(format!(
                    "method must be one of: {}",
                    routes::allowed_methods()
                )));
            }
            keys::authorize(store, key, m, p)
        }
        (Some(_), _, _) => {
            return Err(ApiError::invalid_request(
                "send either permission, or method and path, not both",
            ));
        }
        _ => {
            return Err(ApiError::invalid_request(
                "send key with either permission, or method and path",
            ));
        }
    };
    match result {
        Ok(verified) => {
            note_key(caller, &verified);
            Ok(reply(200, verified.to_json()))
        }
        // The server's own failures are errors, not answers about the key.
        Err(e) if matches!(e.code, ErrorCode::Internal | ErrorCode::StoreUnavailable) => Err(e),
        Err(e) => Ok(reply(200, json!({"valid": false, "code": e.code.name()}))),
    }
}

fn note_key(caller: &mut Caller, verified: &Verified) {
    caller.tenant = Some(verified.key.tenant.clone());
    caller.key_id = Some(verified.key.id.clone());
}

/// A request the gateway lets through, and who it is for the upstream.
struct Admitted {
    /// The identity headers to set upstream.
    identity: Vec<(&'static str, Cow<'static, str>)>,
    /// A Bearer request keeps its Authorization; an API key is never passed on.
    keep_authorization: bool,
}

/// The gateway's decision about a resource request: credential, then route,
/// then permission. The gateway and every authorization endpoint decide
/// with this one function.
fn admit(
    store: &dyn KeyStore,
    settings: &Settings,
    head: &RequestHead<'_>,
    caller: &mut Caller,
) -> Result<Admitted, ApiError> {
    let mut identity: Vec<(&'static str, Cow<'static, str>)> = Vec::with_capacity(3);
    let keep_authorization = match credential(head)? {
        Credential::None => {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "Send an API key in the X-Sigma-ApiKey header (or a Bearer token).",
            ));
        }
        Credential::ApiKey(raw) => {
            let record = keys::authenticate(store, raw)?;
            // Log whose request it was even when the route or permission fails.
            caller.tenant = Some(record.tenant.clone());
            caller.key_id = Some(record.id.clone());
            let verified = keys::permit(record, head.method, head.path_with_query)?;
            identity.push(("x-sigma-tenant", verified.key.tenant.into()));
            identity.push(("x-sigma-key-id", verified.key.id.into()));
            identity.push(("x-sigma-permission", verified.permission.name().into()));
            false
        }
        Credential::Bearer(token) => {
            let principal = bearer(settings, token)?;
            caller.tenant = Some(principal.tenant.clone());
            caller.subject = principal.subject.clone();
            keys::required_permission(head.method, head.path_with_query)?;
            identity.push(("x-sigma-tenant", principal.tenant.into()));
            if let Some(sub) = principal.subject {
                identity.push(("x-sigma-subject", sub.into()));
            }
            true
        }
    };
    Ok(Admitted {
        identity,
        keep_authorization,
    })
}

fn resource(
    store: &dyn KeyStore,
    settings: &Settings,
    head: &RequestHead<'_>,
    caller: &mut Caller,
) -> Result<Outcome, ApiError> {
    let Admitted {
        identity,
        keep_authorization,
    } = admit(store, settings, head, caller)?;
    let Some(upstream) = settings.upstream.clone() else {
        return Err(ApiError::new(
            ErrorCode::NoUpstream,
            "This server has no upstream configured; start it with --upstream URL.",
        ));
    };
    // The gateway owns identity, forwarding and method-override headers; a
    // Bearer request keeps its Authorization, an API key is never passed on.
    let remove = not_forwarded(head.headers, |name| {
        is_owned(name) || (!keep_authorization && name == "authorization")
    });
    let forwarded_for = head.peer.map(|peer| (FORWARDED_FOR, peer.as_bytes()));
    let proto: &[u8] = if head.tls { b"https" } else { b"http" };
    let mut hosts = head.values("host");
    let forwarded_host = match (hosts.next(), hosts.next()) {
        (Some(host), None) if is_plain_authority(host) => Some((FORWARDED_HOST, host)),
        _ => None,
    };
    let add = PackedHeaders::of(
        identity.iter().map(|(n, v)| (*n, v.as_bytes())).chain(
            [
                forwarded_for,
                Some((FORWARDED_PROTO, proto)),
                forwarded_host,
            ]
            .into_iter()
            .flatten(),
        ),
    );
    Ok(Outcome::Forward(Forward {
        path_with_query: upstream.path_for(head.path_with_query),
        upstream,
        remove,
        add,
    }))
}

#[cfg(test)]
mod tests;
