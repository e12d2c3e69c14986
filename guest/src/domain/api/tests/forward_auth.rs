//! The authorization endpoints against the gateway they must agree with.

use super::*;
use crate::domain::forward_auth::{ERROR_HEADER, STATUS_HEADER};

fn header<'r>(r: &'r Reply, name: &str) -> Option<&'r str> {
    r.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The identity headers of an answer, or of a forward plan, in order.
fn identity_of(headers: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    headers
        .filter(|(n, _)| IDENTITY_HEADERS.contains(&n.as_str()))
        .collect()
}

#[test]
fn every_endpoint_decides_exactly_as_the_gateway() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let bearer = format!("Bearer {}", token("acme"));
    let reader = create(&call, "acme", r#"{"name": "r", "permissions": ["read"]}"#);
    let reader = reader.body["rawKey"].as_str().unwrap().to_owned();
    let writer = create(
        &call,
        "acme",
        r#"{"name": "w", "permissions": ["read", "update-data", "delete-model"]}"#,
    );
    let writer = writer.body["rawKey"].as_str().unwrap().to_owned();
    let gone = create(&call, "acme", r#"{"name": "g", "permissions": ["read"]}"#);
    let gone_id = gone.body["id"].as_str().unwrap().to_owned();
    let gone = gone.body["rawKey"].as_str().unwrap().to_owned();
    let off = call.reply(
        "POST",
        &format!("/api/v1/api-keys/{gone_id}/deactivate"),
        &[("authorization", &bearer)],
        "",
    );
    assert_eq!(off.status, 200);

    let credentials: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("x-sigma-apikey", &reader)],
        vec![("x-sigma-apikey", &writer)],
        vec![("x-sigma-apikey", &gone)],
        vec![("x-sigma-apikey", "sigma_sk_live_nope")],
        vec![("authorization", &bearer)],
        vec![("authorization", "Basic abc")],
        vec![("x-sigma-apikey", &reader), ("authorization", &bearer)],
        vec![("x-sigma-apikey", &reader), ("x-sigma-apikey", &writer)],
        // A client's identity headers change nothing.
        vec![
            ("x-sigma-apikey", &reader),
            ("x-sigma-tenant", "other"),
            ("x-sigma-permission", "delete-model"),
        ],
    ];
    let methods = ["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "get"];
    let paths = [
        "/api/v1/records",
        "/api/v1/records/1?x=1",
        "/api/v1/schemas/s/attributes/a",
        "/api/v1/nothing",
        "/api/v1/records/%2e%2e/schemas",
        "/api/v1/records/a;b",
        "/api/v1/records?_method=DELETE",
        "/api/v1/api-keys",
        "/elsewhere",
    ];
    let mut allowed = 0;
    for creds in &credentials {
        for method in methods {
            for path in paths {
                let gateway = call.run(method, path, creds, "").0;
                let forward_headers: Vec<(&str, &str)> = creds
                    .iter()
                    .copied()
                    .chain([("x-forwarded-method", method), ("x-forwarded-uri", path)])
                    .collect();
                let nginx_headers: Vec<(&str, &str)> = creds
                    .iter()
                    .copied()
                    .chain([("x-original-method", method), ("x-original-uri", path)])
                    .collect();
                let forward = call.reply("GET", "/_sigma/auth/forward", &forward_headers, "");
                let envoy = call.reply(method, &format!("/_sigma/auth/envoy{path}"), creds, "");
                let nginx = call.reply("GET", "/_sigma/auth/nginx", &nginx_headers, "");
                let case = format!("{method} {path} {creds:?}");
                match gateway {
                    Outcome::Forward(plan) => {
                        allowed += 1;
                        let client: Vec<(&str, &[u8])> =
                            creds.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
                        let expected = identity_of(
                            plan.headers(&client)
                                .into_iter()
                                .map(|(n, v)| (n, String::from_utf8(v).unwrap())),
                        );
                        assert!(!expected.is_empty(), "{case}");
                        for answer in [&forward, &envoy, &nginx] {
                            assert_eq!(answer.status, 200, "{case}");
                            assert_eq!(answer.body, Value::Null, "{case}");
                            let set: Vec<_> = identity_of(answer.headers.iter().cloned())
                                .into_iter()
                                .filter(|(_, v)| !v.is_empty())
                                .collect();
                            assert_eq!(set, expected, "{case}");
                        }
                        // The forward endpoint names every identity header,
                        // the unset ones empty; the others only those set.
                        let named = identity_of(forward.headers.iter().cloned());
                        assert_eq!(named.len(), IDENTITY_HEADERS.len(), "{case}");
                        assert_eq!(
                            identity_of(envoy.headers.iter().cloned()),
                            expected,
                            "{case}"
                        );
                        assert_eq!(
                            identity_of(nginx.headers.iter().cloned()),
                            expected,
                            "{case}"
                        );
                        assert_eq!(header(&nginx, STATUS_HEADER), Some("200"), "{case}");
                        // Envoy removes the key and every identity header we did not set.
                        let removed = header(&envoy, "x-envoy-auth-headers-to-remove").unwrap();
                        let removed: Vec<&str> = removed.split(", ").collect();
                        assert!(removed.contains(&"x-sigma-apikey"), "{case}");
                        for name in IDENTITY_HEADERS {
                            let set = expected.iter().any(|(n, _)| n == name);
                            assert_eq!(removed.contains(&name), !set, "{case} {name}");
                        }
                        assert_eq!(header(&forward, "x-envoy-auth-headers-to-remove"), None);
                        assert_eq!(header(&nginx, ERROR_HEADER), None, "{case}");
                    }
                    Outcome::Reply(refused) => {
                        // The management API is ours, never a resource
                        // behind someone's proxy: always refused there.
                        if path == "/api/v1/api-keys" {
                            for answer in [&forward, &envoy, &nginx] {
                                assert!(answer.status >= 400, "{case}");
                            }
                            continue;
                        }
                        let (status, expected) = (refused.status, code(&refused));
                        for answer in [&forward, &envoy] {
                            assert_eq!((answer.status, code(answer)), (status, expected), "{case}");
                            assert!(
                                identity_of(answer.headers.iter().cloned()).is_empty(),
                                "{case}"
                            );
                        }
                        let nginx_status = if status == 401 { 401 } else { 403 };
                        assert_eq!(nginx.status, nginx_status, "{case}");
                        assert_eq!(
                            header(&nginx, STATUS_HEADER),
                            Some(status.to_string().as_str()),
                            "{case}"
                        );
                        assert_eq!(header(&nginx, ERROR_HEADER), Some(expected), "{case}");
                        assert!(
                            identity_of(nginx.headers.iter().cloned()).is_empty(),
                            "{case}"
                        );
                        assert_eq!(
                            header(&forward, "www-authenticate").is_some(),
                            header(&refused, "www-authenticate").is_some(),
                            "{case}"
                        );
                    }
                }
            }
        }
    }
    // Readers, writers and Bearer tokens each got through somewhere.
    assert!(allowed >= 20, "{allowed}");
}

#[test]
fn a_proxy_that_does_not_say_what_it_asks_about_gets_400() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let created = create(&call, "acme", r#"{"name": "r", "permissions": ["read"]}"#);
    let raw = created.body["rawKey"].as_str().unwrap().to_owned();
    let key = ("x-sigma-apikey", raw.as_str());
    for headers in [
        vec![key],
        vec![key, ("x-forwarded-method", "GET")],
        vec![key, ("x-forwarded-uri", "/api/v1/records")],
        vec![
            key,
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/api/v1/records"),
            ("x-forwarded-uri", "/api/v1/schemas"),
        ],
        // nginx's names on the forward endpoint.
        vec![
            key,
            ("x-original-method", "GET"),
            ("x-original-uri", "/api/v1/records"),
        ],
    ] {
        let r = call.reply("GET", "/_sigma/auth/forward", &headers, "");
        assert_eq!(
            (r.status, code(&r)),
            (400, "invalid_request"),
            "{headers:?}"
        );
    }
    let r = call.reply("GET", "/_sigma/auth/nginx", &[key], "");
    assert_eq!(r.status, 403);
    assert_eq!(header(&r, STATUS_HEADER), Some("400"));
    assert_eq!(header(&r, ERROR_HEADER), Some("invalid_request"));
    for path in ["/_sigma/auth/envoy", "/_sigma/auth/envoy?x=/api/v1/records"] {
        let r = call.reply("GET", path, &[key], "");
        assert_eq!((r.status, code(&r)), (400, "invalid_request"), "{path}");
    }
    let r = call.reply("GET", "/_sigma/auth/traefik", &[key], "");
    assert_eq!((r.status, code(&r)), (404, "unknown_resource"));
}

#[test]
fn an_allowed_request_reports_its_caller_and_marks_the_key_used() {
    let store = MemoryStore::default();
    let call = Call {
        store: &store,
        settings: settings(),
    };
    let created = create(&call, "acme", r#"{"name": "r", "permissions": ["read"]}"#);
    let raw = created.body["rawKey"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    let (outcome, caller) = call.run(
        "GET",
        "/_sigma/auth/forward",
        &[
            ("x-sigma-apikey", &raw),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/api/v1/records"),
        ],
        "",
    );
    assert!(matches!(outcome, Outcome::Reply(Reply { status: 200, .. })));
    assert_eq!(caller.key_id.as_deref(), Some(id.as_str()));
    assert_eq!(caller.tenant.as_deref(), Some("acme"));
    let auth = format!("Bearer {}", token("acme"));
    let key = call.reply(
        "GET",
        &format!("/api/v1/api-keys/{id}"),
        &[("authorization", &auth)],
        "",
    );
    assert!(key.body["lastUsedAt"].is_string(), "{:?}", key.body);
}

#[test]
fn with_auth_listen_each_listener_serves_its_own_endpoints() {
    let store = MemoryStore::default();
    let mut call = Call {
        store: &store,
        settings: settings(),
    };
    let created = create(&call, "acme", r#"{"name": "r", "permissions": ["read"]}"#);
    let raw = created.body["rawKey"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {}", token("acme"));
    let ask = [
        ("x-sigma-apikey", raw.as_str()),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/api/v1/records"),
    ];
    call.settings.endpoints = Endpoints::Public;
    let r = call.reply("GET", "/_sigma/auth/forward", &ask, "");
    assert_eq!((r.status, code(&r)), (404, "unknown_resource"));
    call.forward("GET", "/api/v1/records", &[("x-sigma-apikey", &raw)]);
    call.settings.endpoints = Endpoints::Auth;
    assert_eq!(
        call.reply("GET", "/_sigma/auth/forward", &ask, "").status,
        200
    );
    for (method, path, headers) in [
        (
            "GET",
            "/api/v1/records",
            vec![("x-sigma-apikey", raw.as_str())],
        ),
        (
            "GET",
            "/api/v1/api-keys",
            vec![("authorization", auth.as_str())],
        ),
        ("POST", "/api/v1/api-keys/verify", vec![]),
    ] {
        let r = call.reply(method, path, &headers, "{}");
        assert_eq!((r.status, code(&r)), (404, "unknown_resource"), "{path}");
    }
    assert_eq!(Endpoints::parse(None), Endpoints::All);
    assert_eq!(Endpoints::parse(Some("public")), Endpoints::Public);
    assert_eq!(Endpoints::parse(Some("auth")), Endpoints::Auth);
    assert_eq!(Endpoints::parse(Some("bogus")), Endpoints::Auth);
}

#[test]
fn an_empty_answer_has_no_body_and_no_content_type() {
    let (status, headers, body) = Reply {
        status: 200,
        headers: vec![],
        body: Value::Null,
    }
    .to_http();
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(headers, vec![("content-length".to_owned(), b"0".to_vec())]);
}
