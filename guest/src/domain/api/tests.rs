use super::*;
use crate::domain::events::{Event, LoggedEvent};
use crate::domain::headers::{HeaderRef, IDENTITY_HEADERS, end_to_end_headers};
use crate::domain::keys::{KeyRecord, Roll, StoreError};
use crate::domain::memory::MemoryStore;
use crate::domain::raw_key::KeyHash;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// The client address the tests' host reports.
const PEER: &str = "203.0.113.7";

struct Bytes(Vec<u8>);

impl BodySource for Bytes {
    fn read_limited(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        if self.0.len() > limit {
            Err(BodyError::TooLarge)
        } else {
            Ok(std::mem::take(&mut self.0))
        }
    }
}

fn settings() -> Settings {
    Settings {
        jwt_secret: Some(SECRET.to_vec()),
        upstream: Some(Upstream::parse("http://127.0.0.1:9/base").unwrap()),
        ..Settings::default()
    }
}

fn token(tenant: &str) -> String {
    let exp = crate::domain::time::now_millis() / 1000 + 300;
    let claims = json!({"tenant": tenant, "sub": "tester", "exp": exp});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

struct Call<'a> {
    store: &'a MemoryStore,
    settings: Settings,
}

impl Call<'_> {
    fn run(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (Outcome, Caller) {
        let headers: Vec<HeaderRef<'_>> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let head = RequestHead {
            method,
            path_with_query: path,
            headers: &headers,
            peer: Some(PEER),
            tls: false,
        };
        // Every request of these tests also checks that `decide` agrees with `handle`.
        let mut decided_caller = Caller::default();
        let decision = decide(self.store, &self.settings, &head, &mut decided_caller);
        let mut caller = Caller::default();
        let outcome = handle(
            self.store,
            &self.settings,
            &head,
            &mut Bytes(body.as_bytes().to_vec()),
            &mut caller,
        );
        match (&decision, &outcome) {
            (Decision::Handle, _) => assert!(
                path.starts_with("/api/v1/api-keys")
                    || path.starts_with(SECRET_SCANNING_PATH)
                    || path == OPENAPI_PATH,
                "{method} {path} needs no body, yet was left to the handler"
            ),
            (Decision::Reply(d), Outcome::Reply(h)) => {
                assert_eq!(format!("{d:?}"), format!("{h:?}"), "{method} {path}");
                assert_eq!(decided_caller, caller, "{method} {path}");
            }
            (Decision::Forward(d), Outcome::Forward(h)) => {
                assert_eq!(format!("{d:?}"), format!("{h:?}"), "{method} {path}");
                assert_eq!(decided_caller, caller, "{method} {path}");
            }
            _ => panic!("{method} {path}: decide gave {decision:?}, handle gave {outcome:?}"),
        }
        (outcome, caller)
    }

    fn reply(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        match self.run(method, path, headers, body).0 {
            Outcome::Reply(r) => r,
            Outcome::Forward(f) => panic!("expected a reply, got {f:?}"),
        }
    }

    /// What the upstream receives for a request the gateway forwards.
    fn forward(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Sent {
        match self.run(method, path, headers, "").0 {
            Outcome::Forward(plan) => {
                let client: Vec<HeaderRef<'_>> =
                    headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
                Sent {
                    headers: plan.headers(&client),
                    path_with_query: plan.path_with_query,
                }
            }
            Outcome::Reply(r) => panic!("expected a forward, got {r:?}"),
        }
    }
}

/// A forwarded request as the upstream receives it.
struct Sent {
    path_with_query: String,
    headers: Headers,
}

fn code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("<none>")
}

fn create(call: &Call<'_>, tenant: &str, body: &str) -> Reply {
    let auth = format!("Bearer {}", token(tenant));
    call.reply(
        "POST",
        "/api/v1/api-keys",
        &[("authorization", &auth)],
        body,
    )
}

#[test]
fn the_seed_story() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let auth = format!("Bearer {}", token("acme"));
    let created = create(
        &call,
        "acme",
        r#"{"name": "Shopify Sync - Production", "permissions": ["read", "update-data"]}"#,
    );
    assert_eq!(created.status, 201);
    assert!(
        created
            .headers
            .contains(&("cache-control".into(), "no-store".into()))
    );
    let id = created.body["id"].as_str().unwrap().to_owned();
    let raw = created.body["rawKey"].as_str().unwrap().to_owned();

    let list = call.reply("GET", "/api/v1/api-keys", &[("Authorization", &auth)], "");
    assert_eq!(list.status, 200);
    assert_eq!(list.body[0]["id"], id.as_str());
    assert_eq!(list.body[0]["lastUsedAt"], Value::Null);
    assert!(!list.body.to_string().contains(&raw));

    let fwd = call.forward(
        "PUT",
        "/api/v1/records/r1?x=1",
        &[("X-Sigma-ApiKey", &raw), ("X-Sigma-Tenant", "evil")],
    );
    assert_eq!(fwd.path_with_query, "/base/api/v1/records/r1?x=1");
    let tenant: Vec<_> = fwd
        .headers
        .iter()
        .filter(|(n, _)| n == "x-sigma-tenant")
        .collect();
    assert_eq!(
        tenant,
        vec![&("x-sigma-tenant".to_string(), b"acme".to_vec())]
    );
    assert!(fwd.headers.iter().all(|(n, _)| n != "x-sigma-apikey"));

    let denied = call.reply(
        "DELETE",
        "/api/v1/records/r1",
        &[("x-sigma-apikey", &raw)],
        "",
    );
    assert_eq!(
        (denied.status, code(&denied)),
        (403, "insufficient_permission")
    );

    let off = call.reply(
        "POST",
        &format!("/api/v1/api-keys/{id}/deactivate"),
        &[("authorization", &auth)],
        "",
    );
    assert_eq!(
        (off.status, off.body["active"].clone()),
        (200, json!(false))
    );
    let rejected = call.reply("GET", "/api/v1/records", &[("x-sigma-apikey", &raw)], "");
    assert_eq!(
        (rejected.status, code(&rejected)),
        (401, "api_key_deactivated")
    );

    let gone = call.reply(
        "DELETE",
        &format!("/api/v1/api-keys/{id}"),
        &[("authorization", &auth)],
        "",
    );
    assert_eq!(
        (gone.status, gone.body.clone()),
        (200, json!({"deleted": true}))
    );
    let again = call.reply(
        "DELETE",
        &format!("/api/v1/api-keys/{id}"),
        &[("authorization", &auth)],
        "",
    );
    assert_eq!((again.status, code(&again)), (404, "not_found"));
}

#[test]
fn bad_create_bodies_name_the_field_and_store_nothing() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    for (body, expected_code, field) in [
        ("", "invalid_json", ""),
        ("{", "invalid_json", ""),
        ("[]", "invalid_request", "object"),
        (r#"{"permissions": ["read"]}"#, "invalid_request", "name"),
        (
            r#"{"name": 5, "permissions": ["read"]}"#,
            "invalid_request",
            "name",
        ),
        (
            r#"{"name": "  ", "permissions": ["read"]}"#,
            "invalid_request",
            "name",
        ),
        (r#"{"name": "x"}"#, "invalid_request", "permissions"),
        (
            r#"{"name": "x", "permissions": "read"}"#,
            "invalid_request",
            "permissions",
        ),
        (
            r#"{"name": "x", "permissions": []}"#,
            "invalid_request",
            "permissions",
        ),
        (
            r#"{"name": "x", "permissions": ["write"]}"#,
            "invalid_request",
            "permissions",
        ),
        (
            r#"{"name": "x", "permissions": [1]}"#,
            "invalid_request",
            "permissions",
        ),
        (
            r#"{"name": "x", "permissions": ["read", "read"]}"#,
            "invalid_request",
            "permissions",
        ),
        (
            r#"{"name": "x", "permissions": ["read"], "admin": true}"#,
            "invalid_request",
            "admin",
        ),
    ] {
        let r = create(&call, "acme", body);
        assert_eq!((r.status, code(&r)), (400, expected_code), "{body}");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    assert!(store.rows.borrow().is_empty());
    let big = format!(
        r#"{{"name": "{}", "permissions": ["read"]}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    let r = create(&call, "acme", &big);
    assert_eq!((r.status, code(&r)), (413, "payload_too_large"));
}

#[test]
fn credentials_are_checked_in_order() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let auth = format!("Bearer {}", token("acme"));
    let created = create(&call, "acme", r#"{"name": "k", "permissions": ["read"]}"#);
    let raw = created.body["rawKey"].as_str().unwrap().to_owned();
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("GET", "/api/v1/api-keys", vec![], 401, "unauthenticated"),
        (
            "GET",
            "/api/v1/api-keys",
            vec![("authorization", "Bearer nope")],
            401,
            "invalid_token",
        ),
        (
            "GET",
            "/api/v1/api-keys",
            vec![("authorization", "Basic abc")],
            401,
            "invalid_token",
        ),
        (
            "GET",
            "/api/v1/api-keys",
            vec![("x-sigma-apikey", &raw)],
            403,
            "api_key_not_allowed",
        ),
        (
            "GET",
            "/api/v1/api-keys",
            vec![("x-sigma-apikey", &raw), ("authorization", &auth)],
            400,
            "ambiguous_credentials",
        ),
        ("GET", "/api/v1/records", vec![], 401, "unauthenticated"),
        (
            "GET",
            "/api/v1/records",
            vec![("x-sigma-apikey", "sigma_sk_live_x")],
            401,
            "invalid_api_key",
        ),
        (
            "GET",
            "/api/v1/nothing",
            vec![("x-sigma-apikey", "sigma_sk_live_x")],
            401,
            "invalid_api_key",
        ),
        (
            "GET",
            "/api/v1/nothing",
            vec![("x-sigma-apikey", &raw)],
            404,
            "unknown_resource",
        ),
        (
            "OPTIONS",
            "/api/v1/records",
            vec![("x-sigma-apikey", &raw)],
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/api/v1/api-keys",
            vec![("authorization", &auth)],
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/api/v1/api-keys/verify",
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/api/v1/api-keys/apikey-x",
            vec![("authorization", &auth)],
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/api/v1/api-keys/apikey-x",
            vec![("authorization", &auth)],
            404,
            "not_found",
        ),
    ];
    for (method, path, headers, status, expected) in cases {
        let r = call.reply(method, path, &headers, "");
        assert_eq!(
            (r.status, code(&r)),
            (status, expected),
            "{method} {path} {headers:?}"
        );
        if status == 405 {
            assert!(r.headers.iter().any(|(n, _)| n == "allow"));
        }
    }
}

#[test]
fn no_upstream_is_a_502_after_authorization() {
    let store = MemoryStore::default();
    let mut call = Call {
        store: &store,
        settings: settings(),
    };
    let created = create(&call, "acme", r#"{"name": "k", "permissions": ["read"]}"#);
    let raw = created.body["rawKey"].as_str().unwrap().to_owned();
    call.settings.upstream = None;
    let r = call.reply("GET", "/api/v1/records", &[("x-sigma-apikey", &raw)], "");
    assert_eq!((r.status, code(&r)), (502, "no_upstream"));
    let r = call.reply(
        "DELETE",
        "/api/v1/records/r1",
        &[("x-sigma-apikey", &raw)],
        "",
    );
    assert_eq!((r.status, code(&r)), (403, "insufficient_permission"));
}

#[test]
fn bearer_requests_are_forwarded_with_tenant_and_subject() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let auth = format!("Bearer {}", token("acme"));
    let fwd = call.forward(
        "DELETE",
        "/api/v1/schemas/s1",
        &[
            ("authorization", &auth),
            ("x-sigma-subject", "root"),
            ("connection", "close, x-drop"),
            ("x-drop", "1"),
            ("x-keep", "2"),
        ],
    );
    let get = |name: &str| -> Vec<String> {
        fwd.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
            .collect()
    };
    assert_eq!(get("authorization"), vec![auth.clone()]);
    assert_eq!(get("x-sigma-tenant"), vec!["acme"]);
    assert_eq!(get("x-sigma-subject"), vec!["tester"]);
    assert!(
        get("x-sigma-key-id").is_empty()
            && get("connection").is_empty()
            && get("x-drop").is_empty()
    );
    assert_eq!(get("x-keep"), vec!["2"]);
    let r = call.reply("GET", "/api/v1/unknown", &[("authorization", &auth)], "");
    assert_eq!(r.status, 404);
}

#[test]
fn the_verify_endpoint() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let created = create(
        &call,
        "acme",
        r#"{"name": "k", "permissions": ["read", "update-data"]}"#,
    );
    let raw = created.body["rawKey"].as_str().unwrap().to_owned();
    let verify =
        |body: Value| call.reply("POST", "/api/v1/api-keys/verify", &[], &body.to_string());

    let ok = verify(json!({"key": raw, "permission": "read"}));
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["valid"], true);
    assert_eq!(ok.body["tenant"], "acme");
    assert_eq!(ok.body["keyId"], created.body["id"]);
    assert_eq!(ok.body["permission"], "read");
    assert_eq!(ok.body["permissions"], json!(["read", "update-data"]));

    let ok = verify(json!({"key": raw, "method": "PATCH", "path": "/api/v1/records/r1"}));
    assert_eq!(
        (ok.body["valid"].clone(), ok.body["permission"].clone()),
        (json!(true), json!("update-data"))
    );

    for (body, expected) in [
        (
            json!({"key": raw, "permission": "delete-model"}),
            "insufficient_permission",
        ),
        (
            json!({"key": "sigma_sk_live_nope", "permission": "read"}),
            "invalid_api_key",
        ),
        (
            json!({"key": raw, "method": "GET", "path": "/api/v1/widgets"}),
            "unknown_resource",
        ),
    ] {
        let r = verify(body.clone());
        assert_eq!(
            (r.status, r.body.clone()),
            (200, json!({"valid": false, "code": expected})),
            "{body}"
        );
    }
    for body in [
        json!({"key": raw, "permission": "read", "method": "GET", "path": "/api/v1/records"}),
        json!({"key": raw}),
        json!({"permission": "read"}),
        json!({"key": raw, "permission": "write"}),
        json!({"key": raw, "method": "GET"}),
        json!({"key": raw, "method": "TRACE", "path": "/api/v1/records"}),
        json!({"key": 5, "permission": "read"}),
        json!({"key": raw, "permission": "read", "extra": 1}),
    ] {
        let r = verify(body.clone());
        assert_eq!((r.status, code(&r)), (400, "invalid_request"), "{body}");
    }
}

#[test]
fn hop_by_hop_headers_are_dropped() {
    let headers: Vec<HeaderRef<'_>> = [
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Upgrade", "websocket"),
        ("Host", "client.example"),
        ("X-Secret-Hop", "1"),
        ("Content-Type", "application/json"),
    ]
    .iter()
    .map(|(n, v)| (*n, v.as_bytes()))
    .collect();
    let kept = end_to_end_headers(&headers);
    assert_eq!(
        kept,
        vec![("content-type".to_string(), b"application/json".to_vec())]
    );
}

#[test]
fn upstream_failures_are_json_errors_with_their_status() {
    let timeout = upstream_failed(UpstreamFailure::Timeout);
    assert_eq!((timeout.status, code(&timeout)), (504, "upstream_timeout"));
    let unreachable = upstream_failed(UpstreamFailure::Unreachable);
    assert_eq!(
        (unreachable.status, code(&unreachable)),
        (502, "upstream_unavailable")
    );
    let (status, headers, body) = unreachable.to_http();
    assert_eq!(status, 502);
    assert_eq!(
        headers[0],
        ("content-type".into(), b"application/json".to_vec())
    );
    assert_eq!(
        headers[1],
        ("content-length".into(), body.len().to_string().into_bytes())
    );
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["error"]["code"], "upstream_unavailable");
}

/// Creates a key with `read` for acme: the reply and the raw key.
fn read_key(call: &Call<'_>) -> (Reply, String) {
    let created = create(call, "acme", r#"{"name": "k", "permissions": ["read"]}"#);
    let raw = created.body["rawKey"].as_str().unwrap().to_owned();
    (created, raw)
}

/// A store whose every call fails, as a locked or broken database does.
struct FailingStore;

impl KeyStore for FailingStore {
    fn insert(&self, _: &KeyRecord, _: &KeyHash, _: u32, _: &Event) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("locked".into()))
    }
    fn find_by_hash(&self, _: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::Unavailable("locked".into()))
    }
    fn list(&self, _: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Err(StoreError::Unavailable("locked".into()))
    }
    fn deactivate(
        &self,
        _: &str,
        _: &str,
        _: u64,
        _: &Event,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::Unavailable("locked".into()))
    }
    fn remove(&self, _: &str, _: &str, _: &Event) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("locked".into()))
    }
    fn roll(&self, _: &Roll<'_>) -> Result<Option<KeyRecord>, StoreError> {
        Err(StoreError::Unavailable("locked".into()))
    }
    fn events(
        &self,
        _: &str,
        _: Option<&str>,
        _: Option<u64>,
        _: u32,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        Err(StoreError::Unavailable("locked".into()))
    }
    fn record_use(&self, _: &str, _: u64) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("locked".into()))
    }
}

#[test]
fn bodies_on_bodyless_methods_are_refused_before_any_lookup() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let (_, raw) = read_key(&call);
    *store.reads.borrow_mut() = 0;
    for method in ["GET", "HEAD", "DELETE", "OPTIONS"] {
        for framing in [("content-length", "62"), ("transfer-encoding", "chunked")] {
            for path in ["/api/v1/records", "/api/v1/api-keys", "/api/v1/api-keys/x"] {
                let r = call.reply(method, path, &[("x-sigma-apikey", &raw), framing], "");
                assert_eq!(
                    (r.status, code(&r)),
                    (400, "invalid_request"),
                    "{method} {path} {framing:?}"
                );
            }
        }
    }
    let r = call.reply(
        "POST",
        "/api/v1/records",
        &[
            ("x-sigma-apikey", &raw),
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
        ],
        "",
    );
    assert_eq!((r.status, code(&r)), (400, "invalid_request"));
    assert_eq!(
        *store.reads.borrow(),
        0,
        "no refused request reached the store"
    );
    // An empty declared body is no body.
    call.forward(
        "GET",
        "/api/v1/records",
        &[("x-sigma-apikey", &raw), ("content-length", "0")],
    );
}

#[test]
fn method_overrides_in_the_query_are_refused() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let (_, raw) = read_key(&call);
    for path in [
        "/api/v1/records?_method=DELETE",
        "/api/v1/records/r1?x=1&%5fmethod=DELETE",
    ] {
        let r = call.reply("GET", path, &[("x-sigma-apikey", &raw)], "");
        assert_eq!((r.status, code(&r)), (400, "invalid_request"), "{path}");
    }
    let fwd = call.forward(
        "GET",
        "/api/v1/records?q=%2e%2e;x&_methodical=1",
        &[("x-sigma-apikey", &raw)],
    );
    assert_eq!(
        fwd.path_with_query, "/base/api/v1/records?q=%2e%2e;x&_methodical=1",
        "the query is forwarded byte for byte"
    );
}

#[test]
fn the_gateway_owns_identity_forwarding_and_override_headers() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let (created, raw) = read_key(&call);
    let spoofed = [
        ("X_Sigma_Tenant", "globex"),
        ("x-sigma-tenant", "globex"),
        ("X-Sigma-Key-Id", "apikey-forged"),
        ("X-Sigma-Permission", "delete-model"),
        ("X-Sigma-Subject", "root"),
        ("X-Sigma-Anything", "1"),
        ("Forwarded", "for=1.2.3.4"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Real-IP", "1.2.3.4"),
        ("X-Original-URL", "/api/v1/schemas/s1"),
        ("X-Rewrite-URL", "/api/v1/schemas/s1"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("Accept_Encoding", "x"),
        ("host", "pim.example:8080"),
        ("x-request-id", "r-1"),
    ];
    let mut headers = vec![("x-sigma-apikey", raw.as_str())];
    headers.extend(spoofed);
    let fwd = call.forward("GET", "/api/v1/records", &headers);
    let sent: Vec<(String, String)> = fwd
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8(v.clone()).unwrap()))
        .collect();
    let key_id = created.body["id"].as_str().unwrap();
    let expected: Vec<(String, String)> = [
        ("x-request-id", "r-1"),
        ("x-sigma-tenant", "acme"),
        ("x-sigma-key-id", key_id),
        ("x-sigma-permission", "read"),
        ("x-forwarded-for", PEER),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "pim.example:8080"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(sent, expected);
    assert!(IDENTITY_HEADERS.iter().all(|h| h.starts_with("x-sigma-")));
}

#[test]
fn x_forwarded_host_repeats_only_one_plain_host() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let (_, raw) = read_key(&call);
    let cases: [(&[&str], Option<&str>); 5] = [
        (&["pim.example:8080"], Some("pim.example:8080")),
        (&[], None),
        (&["a.example", "b.example"], None),
        (&["a.example, b.example"], None),
        (&["a.example/admin"], None),
    ];
    for (hosts, expected) in cases {
        let mut headers = vec![("x-sigma-apikey", raw.as_str())];
        headers.extend(hosts.iter().map(|h| ("host", *h)));
        let sent = call.forward("GET", "/api/v1/records", &headers).headers;
        let forwarded: Vec<&[u8]> = sent
            .iter()
            .filter(|(n, _)| n == "x-forwarded-host")
            .map(|(_, v)| v.as_slice())
            .collect();
        let expected: Vec<&[u8]> = expected.iter().map(|h| h.as_bytes()).collect();
        assert_eq!(forwarded, expected, "{hosts:?}");
        // The gateway's own headers follow the client's, each once.
        let names: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
        let own = &names[names.len() - 5 - expected.len()..];
        assert_eq!(
            &own[..5],
            [
                "x-sigma-tenant",
                "x-sigma-key-id",
                "x-sigma-permission",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
    }
}

#[test]
fn a_failing_store_is_503_store_unavailable_never_an_answer_about_the_key() {
    let store = FailingStore;
    let mut s = settings();
    s.max_keys_per_tenant = 5;
    let raw = crate::domain::raw_key::RawKey::generate().unwrap();
    let head_headers: Vec<HeaderRef<'_>> = vec![("x-sigma-apikey", raw.expose().as_bytes())];
    let head = RequestHead {
        method: "GET",
        path_with_query: "/api/v1/records",
        headers: &head_headers,
        peer: None,
        tls: false,
    };
    let Decision::Reply(r) = decide(&store, &s, &head, &mut Caller::default()) else {
        panic!("a failing store forwarded");
    };
    assert_eq!((r.status, code(&r)), (503, "store_unavailable"));
    let body = json!({"key": raw.expose(), "permission": "read"}).to_string();
    let verify_head = RequestHead {
        method: "POST",
        path_with_query: "/api/v1/api-keys/verify",
        headers: &[],
        peer: None,
        tls: false,
    };
    let Outcome::Reply(r) = handle(
        &store,
        &s,
        &verify_head,
        &mut Bytes(body.into_bytes()),
        &mut Caller::default(),
    ) else {
        panic!("verify forwarded");
    };
    assert_eq!((r.status, code(&r)), (503, "store_unavailable"));
}

#[test]
fn creating_past_the_tenant_limit_is_409() {
    let store = MemoryStore::default();
    let mut s = settings();
    s.max_keys_per_tenant = 2;
    let call = Call {
        store: &store,
        settings: s,
    };
    let body = r#"{"name": "k", "permissions": ["read"]}"#;
    assert_eq!(create(&call, "acme", body).status, 201);
    assert_eq!(create(&call, "acme", body).status, 201);
    let r = create(&call, "acme", body);
    assert_eq!((r.status, code(&r)), (409, "key_limit_reached"));
    assert_eq!(create(&call, "globex", body).status, 201);
}

#[test]
fn keys_expire_roll_and_leave_a_trail_over_rest() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let auth = format!("Bearer {}", token("acme"));
    let h = [("authorization", auth.as_str())];
    // expiresAt: checked, named, stored, shown.
    for bad in [
        r#""2020-01-01T00:00:00Z""#,
        r#""2999-01-01T00:00:00Z""#,
        r#""2027-01-01T00:00:00+01:00""#,
        r#""tomorrow""#,
        "5",
    ] {
        let r = create(
            &call,
            "acme",
            &format!(r#"{{"name":"k","permissions":["read"],"expiresAt":{bad}}}"#),
        );
        assert_eq!((r.status, code(&r)), (400, "invalid_request"), "{bad}");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expiresAt")
        );
    }
    assert!(store.rows.borrow().is_empty() && store.events.borrow().is_empty());
    let at = crate::domain::time::format_rfc3339(now_millis() + 86_400_000);
    let created = create(
        &call,
        "acme",
        &format!(r#"{{"name":"k","permissions":["read"],"expiresAt":"{at}"}}"#),
    );
    assert_eq!(created.status, 201);
    assert_eq!(created.body["expiresAt"], at.as_str());
    let id = created.body["id"].as_str().unwrap().to_owned();
    let one = call.reply("GET", &format!("/api/v1/api-keys/{id}"), &h, "");
    assert_eq!(one.body["expiresAt"], at.as_str());

    // Roll: grace bounds, body shape, result.
    let roll_path = format!("/api/v1/api-keys/{id}/roll");
    for bad in [
        r#"{"gracePeriodSeconds": 604801}"#,
        r#"{"gracePeriodSeconds": -1}"#,
        r#"{"gracePeriodSeconds": 1.5}"#,
        r#"{"gracePeriodSeconds": "10"}"#,
        r#"{"grace": 10}"#,
        "[]",
    ] {
        let r = call.reply("POST", &roll_path, &h, bad);
        assert_eq!((r.status, code(&r)), (400, "invalid_request"), "{bad}");
    }
    assert_eq!(store.rows.borrow().len(), 1);
    let r = call.reply("GET", &roll_path, &h, "");
    assert_eq!(r.status, 405);
    let rolled = call.reply("POST", &roll_path, &h, r#"{"gracePeriodSeconds": 60}"#);
    assert_eq!(rolled.status, 201);
    assert!(
        rolled
            .headers
            .contains(&("cache-control".into(), "no-store".into()))
    );
    assert_eq!(rolled.body["rolledFrom"], id.as_str());
    assert_eq!(rolled.body["expiresAt"], at.as_str());
    assert_eq!(rolled.body["name"], "k");
    assert!(
        rolled.body["rawKey"]
            .as_str()
            .unwrap()
            .starts_with("sigma_sk_live_")
    );
    let new_id = rolled.body["id"].as_str().unwrap().to_owned();
    // A roll with no body at all: grace 0, and the old key stops at once.
    let r = call.reply("POST", &format!("/api/v1/api-keys/{new_id}/roll"), &h, "");
    assert_eq!(r.status, 201);
    let r = call.reply("POST", &format!("/api/v1/api-keys/{new_id}/roll"), &h, "");
    assert_eq!((r.status, code(&r)), (409, "api_key_inactive"));
    let other = format!("Bearer {}", token("globex"));
    let r = call.reply("POST", &roll_path, &[("authorization", &other)], "");
    assert_eq!((r.status, code(&r)), (404, "not_found"));

    // The trail, paged, filtered, tenant-scoped.
    let r = call.reply("GET", "/api/v1/api-keys/events?limit=2", &h, "");
    assert_eq!(r.status, 200);
    let first = r.body["events"].as_array().unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0]["type"], "key.rolled");
    assert_eq!(first[0]["keyId"], new_id.as_str());
    assert_eq!(
        first[0]["actor"],
        json!({"via": "token", "subject": "tester"})
    );
    let next = r.body["next"].as_str().unwrap();
    let r = call.reply(
        "GET",
        &format!("/api/v1/api-keys/events?limit=500&cursor={next}"),
        &h,
        "",
    );
    let rest: Vec<_> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rest, ["key.rolled", "key.created", "key.created"]);
    assert_eq!(r.body["next"], Value::Null);
    let r = call.reply(
        "GET",
        &format!("/api/v1/api-keys/events?keyId={id}"),
        &h,
        "",
    );
    let mine = r.body["events"].as_array().unwrap();
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0]["details"]["newKeyId"], new_id.as_str());
    assert_eq!(mine[0]["details"]["gracePeriodSeconds"], 60);
    let r = call.reply(
        "GET",
        "/api/v1/api-keys/events",
        &[("authorization", &other)],
        "",
    );
    assert_eq!(r.body, json!({"events": [], "next": null}));
    for bad in [
        "limit=0",
        "limit=501",
        "limit=ten",
        "limit=1&limit=2",
        "cursor=abc",
        "page=2",
    ] {
        let r = call.reply("GET", &format!("/api/v1/api-keys/events?{bad}"), &h, "");
        assert_eq!((r.status, code(&r)), (400, "invalid_request"), "{bad}");
    }
    let r = call.reply("DELETE", "/api/v1/api-keys/events", &h, "");
    assert_eq!(r.status, 405);
    assert!(
        !serde_json::to_string(
            &store
                .events
                .borrow()
                .iter()
                .map(Event::to_json)
                .collect::<Vec<_>>()
        )
        .unwrap()
        .contains("sigma_sk_live_")
    );
}

#[test]
fn github_alerts_need_a_valid_signature_and_deactivate_our_keys() {
    use crate::domain::secret_scanning::tests as scanning;
    let store = MemoryStore::default();
    let path = SECRET_SCANNING_PATH;
    // Off unless configured.
    let off = Call {
        store: &store,
        settings: settings(),
    };
    let r = off.reply("POST", path, &[], "[]");
    assert_eq!(r.status, 404);
    // A key list that does not parse refuses every alert.
    let broken = Call {
        store: &store,
        settings: Settings {
            github_scanning_keys: Some(
                "{\"public_keys\": [{\"key_identifier\": \"k\", \"key\": \"x\"}]}".into(),
            ),
            ..settings()
        },
    };
    let r = broken.reply("POST", path, &[], "[]");
    assert_eq!((r.status, code(&r)), (500, "internal"));

    let (signing, list) = scanning::key_pair("kid-1");
    let call = Call {
        store: &store,
        settings: Settings {
            github_scanning_keys: Some(list),
            ..settings()
        },
    };
    let created = create(&call, "acme", r#"{"name":"ci","permissions":["read"]}"#);
    let raw = created.body["rawKey"].as_str().unwrap().to_owned();
    let body = json!([{"token": raw, "type": "sigma_api_key", "url": "https://github.com/o/r/blob/x", "source": "content"}]).to_string();
    let signature = scanning::sign(&signing, body.as_bytes());
    let tampered = body.replace("content", "commit");
    let events_before = store.events.borrow().len();
    for (headers, body) in [
        (
            vec![("github-public-key-identifier", "kid-1")],
            body.as_str(),
        ),
        (
            vec![("github-public-key-signature", signature.as_str())],
            body.as_str(),
        ),
        (
            vec![
                ("github-public-key-identifier", "kid-2"),
                ("github-public-key-signature", signature.as_str()),
            ],
            body.as_str(),
        ),
        (
            vec![
                ("github-public-key-identifier", "kid-1"),
                ("github-public-key-signature", signature.as_str()),
            ],
            tampered.as_str(),
        ),
    ] {
        let r = call.reply("POST", path, &headers, body);
        assert_eq!((r.status, code(&r)), (401, "invalid_signature"));
    }
    // The valid signature twice, or the identifier twice: ambiguous, refused.
    for headers in [
        vec![
            ("github-public-key-identifier", "kid-1"),
            ("github-public-key-signature", signature.as_str()),
            ("github-public-key-signature", signature.as_str()),
        ],
        vec![
            ("github-public-key-identifier", "kid-1"),
            ("github-public-key-identifier", "kid-1"),
            ("github-public-key-signature", signature.as_str()),
        ],
    ] {
        let r = call.reply("POST", path, &headers, &body);
        assert_eq!((r.status, code(&r)), (401, "invalid_signature"));
    }
    assert_eq!(store.events.borrow().len(), events_before);
    assert!(store.rows.borrow()[0].0.deactivated_at.is_none());
    let headers = [
        ("github-public-key-identifier", "kid-1"),
        ("github-public-key-signature", signature.as_str()),
    ];
    let r = call.reply("GET", path, &headers, "");
    assert_eq!(r.status, 405);
    let r = call.reply("POST", path, &headers, &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["label"], "true_positive");
    assert_eq!(r.body[0]["token_type"], "sigma_api_key");
    assert!(store.rows.borrow()[0].0.deactivated_at.is_some());
    let r = call.reply(
        "POST",
        "/api/v1/api-keys/verify",
        &[],
        &format!(r#"{{"key":"{raw}","permission":"read"}}"#),
    );
    assert_eq!(
        r.body,
        json!({"valid": false, "code": "api_key_deactivated"})
    );
}

mod forward_auth;

/// The served document is `docs/openapi.yaml`, and it names exactly the
/// error codes and permissions there are (plus the host's `overloaded`).
#[test]
fn the_openapi_document_is_served_and_names_every_code_and_permission() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let served = call.reply("GET", OPENAPI_PATH, &[], "");
    assert_eq!(served.status, 200);
    let yaml = include_str!("../../../../docs/openapi.yaml");
    let file: Value = serde_yaml_ng::from_str(yaml).unwrap();
    assert_eq!(served.body, file);
    let schemas = &served.body["components"]["schemas"];
    let mut documented: Vec<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    documented.sort_unstable();
    let mut codes: Vec<&str> = ErrorCode::names().chain(["overloaded"]).collect();
    codes.sort_unstable();
    assert_eq!(documented, codes);
    let permissions: Vec<&str> = schemas["Permission"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(permissions, Permission::ALL.map(Permission::name));
    let refused = call.reply("POST", OPENAPI_PATH, &[], "");
    assert_eq!(
        (refused.status, code(&refused)),
        (405, "method_not_allowed")
    );
}

#[test]
fn every_path_has_the_route_class_it_is_served_as() {
    for (path, class) in [
        ("/api/v1/records", RouteClass::Resource),
        ("/api/v1/records/r1/variants", RouteClass::Resource),
        ("/elsewhere", RouteClass::Resource),
        ("/_sigma/auth/forward", RouteClass::Authorization),
        (
            "/_sigma/auth/envoy/api/v1/records",
            RouteClass::Authorization,
        ),
        ("/api/v1/api-keys", RouteClass::Management),
        ("/api/v1/api-keys/", RouteClass::Management),
        ("/api/v1/api-keys/apikey-1/roll", RouteClass::Management),
        ("/api/v1/api-keys/events", RouteClass::Management),
        ("/api/v1/api-keys/verify", RouteClass::Verify),
        (SECRET_SCANNING_PATH, RouteClass::SecretScanning),
        (OPENAPI_PATH, RouteClass::ApiDescription),
    ] {
        assert_eq!(route_class(path), class, "{path}");
    }
}
