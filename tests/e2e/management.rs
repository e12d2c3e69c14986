//! Management endpoints: credentials, bad input, the verify endpoint.

use serde_json::json;

use crate::support::Server;

pub(crate) fn jwt(secret: &[u8], alg: &str, claims: serde_json::Value) -> String {
    let alg = match alg {
        "HS256" => jsonwebtoken::Algorithm::HS256,
        "HS384" => jsonwebtoken::Algorithm::HS384,
        _ => jsonwebtoken::Algorithm::HS512,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn bearer_tokens_are_checked_strictly() {
    let server = Server::start(&[]);
    let secret = std::fs::read_to_string(server.db.with_extension("db.secret")).unwrap();
    let secret = secret.trim().as_bytes();
    let list = |token: &str| {
        let auth = format!("Bearer {token}");
        server.send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
    };
    let exp = now() + 300;
    assert_eq!(
        list(&jwt(secret, "HS256", json!({"tenant": "acme", "exp": exp}))).status,
        200
    );
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(json!({"tenant": "acme", "exp": exp}).to_string().as_bytes())
    );
    let bad = [
        none,
        jwt(secret, "HS384", json!({"tenant": "acme", "exp": exp})),
        jwt(secret, "HS512", json!({"tenant": "acme", "exp": exp})),
        jwt(
            b"a-different-secret-of-32-bytes-or-more",
            "HS256",
            json!({"tenant": "acme", "exp": exp}),
        ),
        jwt(
            secret,
            "HS256",
            json!({"tenant": "acme", "exp": now() - 120}),
        ),
        jwt(
            secret,
            "HS256",
            json!({"tenant": "acme", "exp": exp, "nbf": now() + 120}),
        ),
        jwt(secret, "HS256", json!({"tenant": "acme"})),
        jwt(secret, "HS256", json!({"exp": exp})),
        jwt(secret, "HS256", json!({"tenant": "", "exp": exp})),
        "not.a.jwt".into(),
    ];
    for token in bad {
        let r = list(&token);
        assert_eq!(r.error(), (401, "invalid_token".into()), "{token}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
}

#[test]
fn credentials_and_methods() {
    let server = Server::start(&[]);
    let auth = server.bearer("acme");
    let (id, raw) = server.create_key("acme", "k", &["read"]);
    let cases: Vec<crate::support::Case<'_, String>> = vec![
        (
            "GET",
            "/api/v1/api-keys".into(),
            vec![],
            401,
            "unauthenticated",
        ),
        (
            "POST",
            "/api/v1/api-keys".into(),
            vec![],
            401,
            "unauthenticated",
        ),
        (
            "GET",
            "/api/v1/api-keys".into(),
            vec![("Authorization", "Basic dTpw")],
            401,
            "invalid_token",
        ),
        (
            "GET",
            "/api/v1/api-keys".into(),
            vec![("X-Sigma-ApiKey", &raw)],
            403,
            "api_key_not_allowed",
        ),
        (
            "DELETE",
            format!("/api/v1/api-keys/{id}"),
            vec![("X-Sigma-ApiKey", &raw)],
            403,
            "api_key_not_allowed",
        ),
        (
            "GET",
            "/api/v1/api-keys".into(),
            vec![("X-Sigma-ApiKey", &raw), ("Authorization", &auth)],
            400,
            "ambiguous_credentials",
        ),
        (
            "GET",
            "/api/v1/records".into(),
            vec![("X-Sigma-ApiKey", &raw), ("Authorization", &auth)],
            400,
            "ambiguous_credentials",
        ),
        (
            "PUT",
            "/api/v1/api-keys".into(),
            vec![("Authorization", &auth)],
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            format!("/api/v1/api-keys/{id}"),
            vec![("Authorization", &auth)],
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/api/v1/api-keys/apikey-doesnotexist0000".into(),
            vec![("Authorization", &auth)],
            404,
            "not_found",
        ),
        (
            "GET",
            format!("/api/v1/api-keys/{id}/deactivate"),
            vec![("Authorization", &auth)],
            405,
            "method_not_allowed",
        ),
        (
            "DELETE",
            "/api/v1/api-keys/apikey-doesnotexist0000".into(),
            vec![("Authorization", &auth)],
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/api-keys/apikey-doesnotexist0000/deactivate".into(),
            vec![("Authorization", &auth)],
            404,
            "not_found",
        ),
    ];
    for (method, path, headers, status, code) in cases {
        let r = server.send(method, &path, &headers, None);
        assert_eq!(
            r.error(),
            (status, code.to_string()),
            "{method} {path} {headers:?}"
        );
        if status == 405 {
            assert!(r.header("allow").is_some(), "{method} {path}: no Allow");
        }
    }
    // Still exactly one key, still active.
    let list = server
        .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["active"], true);
}

/// `GET /api-keys/:id`: the record as listed, for the owning tenant only.
#[test]
fn one_key_by_id() {
    let server = Server::start(&[]);
    let auth = server.bearer("acme");
    let (id, raw) = server.create_key("acme", "one", &["read", "update-data"]);
    server.create_key("acme", "another", &["read"]);
    let path = format!("/api/v1/api-keys/{id}");
    let one = server.send("GET", &path, &[("Authorization", &auth)], None);
    assert_eq!(one.status, 200, "{}", one.text());
    let list = server
        .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
        .json();
    assert_eq!(one.json(), list[0]);
    assert!(!one.text().contains(&raw));

    let other = server.bearer("globex");
    let r = server.send("GET", &path, &[("Authorization", &other)], None);
    assert_eq!(r.error(), (404, "not_found".into()), "another tenant's id");
    let r = server.send("GET", &path, &[("X-Sigma-ApiKey", &raw)], None);
    assert_eq!(r.error(), (403, "api_key_not_allowed".into()));

    let off = format!("{path}/deactivate");
    assert_eq!(
        server
            .send("POST", &off, &[("Authorization", &auth)], None)
            .status,
        200
    );
    let after = server
        .send("GET", &path, &[("Authorization", &auth)], None)
        .json();
    assert_eq!(after["active"], false);
    assert!(after["deactivatedAt"].is_string());

    // The CLI shows the same record.
    let out = crate::support::cli()
        .args(["keys", "get", "--tenant", "acme", "--db"])
        .arg(&server.db)
        .arg(&id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown, after);
}

#[test]
fn bad_create_requests_name_the_field_and_change_nothing() {
    let server = Server::start(&[]);
    let auth = server.bearer("acme");
    let long_name = "x".repeat(201);
    let cases: Vec<(String, &str, &str)> = vec![
        ("{".into(), "invalid_json", "JSON"),
        ("".into(), "invalid_json", "JSON"),
        ("[1]".into(), "invalid_request", "object"),
        (
            json!({"permissions": ["read"]}).to_string(),
            "invalid_request",
            "name",
        ),
        (
            json!({"name": 1, "permissions": ["read"]}).to_string(),
            "invalid_request",
            "name",
        ),
        (
            json!({"name": "   ", "permissions": ["read"]}).to_string(),
            "invalid_request",
            "name",
        ),
        (
            json!({"name": long_name, "permissions": ["read"]}).to_string(),
            "invalid_request",
            "name",
        ),
        (
            json!({"name": "k"}).to_string(),
            "invalid_request",
            "permissions",
        ),
        (
            json!({"name": "k", "permissions": []}).to_string(),
            "invalid_request",
            "permissions",
        ),
        (
            json!({"name": "k", "permissions": "read"}).to_string(),
            "invalid_request",
            "permissions",
        ),
        (
            json!({"name": "k", "permissions": ["read", "admin"]}).to_string(),
            "invalid_request",
            "admin",
        ),
        (
            json!({"name": "k", "permissions": ["read", null]}).to_string(),
            "invalid_request",
            "permissions",
        ),
        (
            json!({"name": "k", "permissions": ["read", "read"]}).to_string(),
            "invalid_request",
            "read",
        ),
        (
            json!({"name": "k", "permissions": ["read"], "tenant": "globex"}).to_string(),
            "invalid_request",
            "tenant",
        ),
    ];
    for (body, code, mentions) in cases {
        let r = server.send(
            "POST",
            "/api/v1/api-keys",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body.as_bytes()),
        );
        assert_eq!(r.error(), (400, code.to_string()), "{body}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(mentions), "{body}: {message}");
    }
    assert_eq!(
        server
            .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
            .json(),
        json!([])
    );

    // Names are trimmed; 200 characters (not bytes) is the limit.
    let name = format!("  {}  ", "é".repeat(200));
    let body = json!({"name": name, "permissions": ["delete-model", "read"]}).to_string();
    let r = server.send(
        "POST",
        "/api/v1/api-keys",
        &[("Authorization", &auth)],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "é".repeat(200));
    assert_eq!(r.json()["permissions"], json!(["read", "delete-model"]));
}

#[test]
fn the_verify_endpoint_needs_no_token() {
    let server = Server::start(&[]);
    let (id, raw) = server.create_key("acme", "k", &["read", "update-model"]);
    let verify = |body: serde_json::Value| {
        server.send(
            "POST",
            "/api/v1/api-keys/verify",
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    };

    let ok = verify(json!({"key": raw, "permission": "update-model"}));
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.json(),
        json!({"valid": true, "keyId": id, "tenant": "acme", "permissions": ["read", "update-model"], "permission": "update-model"})
    );
    let ok = verify(json!({"key": raw, "method": "POST", "path": "/api/v1/schemas/s1/attributes"}));
    assert_eq!(
        (ok.json()["valid"].clone(), ok.json()["permission"].clone()),
        (json!(true), json!("update-model"))
    );

    let mut typo = raw.clone();
    typo.replace_range(20..21, if &raw[20..21] == "a" { "b" } else { "a" });
    for (body, code) in [
        (
            json!({"key": raw, "permission": "delete-data"}),
            "insufficient_permission",
        ),
        (
            json!({"key": raw, "method": "DELETE", "path": "/api/v1/records/r1"}),
            "insufficient_permission",
        ),
        (
            json!({"key": raw, "method": "GET", "path": "/api/v1/products"}),
            "unknown_resource",
        ),
        (
            json!({"key": typo, "permission": "read"}),
            "invalid_api_key",
        ),
        (
            json!({"key": "sigma_sk_live_abc123def456ghi789", "permission": "read"}),
            "invalid_api_key",
        ),
    ] {
        let r = verify(body.clone());
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"valid": false, "code": code})),
            "{body}"
        );
    }
    for body in [
        json!({"key": raw, "permission": "read", "method": "GET", "path": "/api/v1/records"}),
        json!({"key": raw}),
        json!({"permission": "read"}),
        json!({"key": raw, "permission": "all"}),
        json!({"key": raw, "path": "/api/v1/records"}),
        json!({"key": raw, "permission": "read", "tenant": "x"}),
    ] {
        assert_eq!(
            verify(body.clone()).error(),
            (400, "invalid_request".into()),
            "{body}"
        );
    }
}
