//! The seed documentation's whole story, in order.

use std::time::Duration;

use serde_json::json;

use crate::support::{Server, Upstream};

fn rfc3339_millis(v: &serde_json::Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 24
        && s.ends_with('Z')
        && s.as_bytes()[19] == b'.'
        && humantime::parse_rfc3339(s).is_ok()
}

#[test]
fn create_list_use_deactivate_delete() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let auth = server.bearer("acme");

    // Generate: the raw key is shown once, with exactly the documented fields.
    let body =
        br#"{ "name": "Shopify Sync - Production", "permissions": ["read", "update-data"] }"#;
    let created = server.send(
        "POST",
        "/api/v1/api-keys",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    );
    assert_eq!(created.status, 201);
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let c = created.json();
    let fields: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields, ["id", "name", "rawKey", "permissions", "createdAt"]);
    let id = c["id"].as_str().unwrap().to_owned();
    let raw = c["rawKey"].as_str().unwrap().to_owned();
    assert!(
        id.starts_with("apikey-")
            && id.len() >= 23
            && id[7..]
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    );
    assert!(raw.len() == 50 && raw.starts_with("sigma_sk_live_"));
    assert!(
        raw[14..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    );
    assert_eq!(c["name"], "Shopify Sync - Production");
    assert_eq!(c["permissions"], json!(["read", "update-data"]));
    assert!(rfc3339_millis(&c["createdAt"]));

    // List: hashes hidden, never the raw key, lastUsedAt null until first use.
    let list = server.send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None);
    assert_eq!(list.status, 200);
    let l = list.json();
    assert_eq!(
        l,
        json!([{
            "id": id, "name": "Shopify Sync - Production", "permissions": ["read", "update-data"],
            "active": true, "createdAt": c["createdAt"], "lastUsedAt": null,
            // Beyond the seed: every record shows its expiry (#10).
            "expiresAt": null
        }])
    );
    assert!(!list.text().contains(&raw));

    // Use: forwarded upstream with our identity headers, the key removed.
    let used = server.send(
        "GET",
        "/api/v1/records?limit=5",
        &[("X-Sigma-ApiKey", &raw)],
        None,
    );
    assert_eq!(used.status, 200, "{}", used.text());
    assert_eq!(used.header("x-upstream"), Some("echo"));
    let echo = used.json();
    assert_eq!(echo["path"], "/pim/api/v1/records?limit=5");
    assert_eq!(echo["headers"]["x-sigma-tenant"], json!(["acme"]));
    assert_eq!(echo["headers"]["x-sigma-key-id"], json!([id]));
    assert_eq!(echo["headers"]["x-sigma-permission"], json!(["read"]));
    assert!(echo["headers"].get("x-sigma-apikey").is_none());

    // lastUsedAt is set by the use.
    let l = server
        .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
        .json();
    assert!(rfc3339_millis(&l[0]["lastUsedAt"]), "{l}");
    assert!(l[0]["lastUsedAt"].as_str() >= l[0]["createdAt"].as_str());

    // A permission the key lacks.
    let denied = server.send(
        "DELETE",
        "/api/v1/records/r1",
        &[("X-Sigma-ApiKey", &raw)],
        None,
    );
    assert_eq!(denied.error(), (403, "insufficient_permission".into()));
    assert!(
        denied.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delete-data")
    );

    // Deactivate: the documented response; again returns the same record.
    let path = format!("/api/v1/api-keys/{id}/deactivate");
    let off = server.send("POST", &path, &[("Authorization", &auth)], None);
    assert_eq!(off.status, 200);
    let o = off.json();
    let fields: Vec<&str> = o.as_object().unwrap().keys().map(String::as_str).collect();
    for f in [
        "id",
        "name",
        "permissions",
        "active",
        "createdAt",
        "deactivatedAt",
    ] {
        assert!(fields.contains(&f), "{f} missing in {o}");
    }
    assert_eq!(o["active"], false);
    assert!(rfc3339_millis(&o["deactivatedAt"]));
    let again = server
        .send("POST", &path, &[("Authorization", &auth)], None)
        .json();
    assert_eq!(again, o);

    // Deactivated keys are rejected on all endpoints.
    let hits_before = upstream.hits.load(std::sync::atomic::Ordering::SeqCst);
    for (method, p) in [
        ("GET", "/api/v1/records"),
        ("PUT", "/api/v1/records/r1"),
        ("GET", "/api/v1/schemas/s1"),
        ("GET", "/api/v1/nothing"),
    ] {
        let r = server.send(method, p, &[("X-Sigma-ApiKey", &raw)], None);
        assert_eq!(
            r.error(),
            (401, "api_key_deactivated".into()),
            "{method} {p}"
        );
    }
    let v = server.verify(json!({"key": raw, "permission": "read"}));
    assert_eq!(
        v.json(),
        json!({"valid": false, "code": "api_key_deactivated"})
    );
    assert_eq!(
        upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits_before,
        "nothing reached the upstream"
    );
    let l = server
        .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
        .json();
    assert_eq!(l[0]["active"], false);
    assert_eq!(l[0]["deactivatedAt"], o["deactivatedAt"]);

    // Delete: gone for good.
    let gone = server.send(
        "DELETE",
        &format!("/api/v1/api-keys/{id}"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!((gone.status, gone.json()), (200, json!({"deleted": true})));
    let again = server.send(
        "DELETE",
        &format!("/api/v1/api-keys/{id}"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(again.error(), (404, "not_found".into()));
    let r = server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None);
    assert_eq!(r.error(), (401, "invalid_api_key".into()));
    assert_eq!(
        server
            .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
            .json(),
        json!([])
    );

    // The log names keys and tenants, never a raw key, hash or token.
    let logs = server.logs();
    assert!(logs.contains(&id) && logs.contains("acme"), "{logs}");
    assert!(!logs.contains(&raw));
    assert!(!logs.contains(auth.trim_start_matches("Bearer ")));
}

#[test]
fn last_used_at_is_throttled_to_once_a_second_and_counts_denied_uses() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let auth = server.bearer("acme");
    let (_, raw) = server.create_key("acme", "sync", &["read"]);
    let last_used = || {
        server
            .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
            .json()[0]["lastUsedAt"]
            .clone()
    };

    // A use whose permission is refused still authenticated the key.
    assert_eq!(
        server
            .send(
                "DELETE",
                "/api/v1/records/r1",
                &[("X-Sigma-ApiKey", &raw)],
                None
            )
            .status,
        403
    );
    let first = last_used();
    assert!(first.is_string());
    // Within a second: not written again.
    assert_eq!(
        server
            .send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None)
            .status,
        200
    );
    assert_eq!(last_used(), first);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        server
            .send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None)
            .status,
        200
    );
    let later = last_used();
    assert!(later.as_str() > first.as_str(), "{later} after {first}");
}

#[test]
fn tenants_are_isolated() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let (id, raw) = server.create_key("acme", "acme key", &["read"]);
    let globex = server.bearer("globex");
    assert_eq!(
        server
            .send(
                "GET",
                "/api/v1/api-keys",
                &[("Authorization", &globex)],
                None
            )
            .json(),
        json!([])
    );
    for (method, path) in [
        ("POST", format!("/api/v1/api-keys/{id}/deactivate")),
        ("DELETE", format!("/api/v1/api-keys/{id}")),
    ] {
        let r = server.send(method, &path, &[("Authorization", &globex)], None);
        assert_eq!(r.error(), (404, "not_found".into()), "{method} {path}");
    }
    // Still active and still acme's.
    let used = server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None);
    assert_eq!(used.json()["headers"]["x-sigma-tenant"], json!(["acme"]));
    let acme = server.bearer("acme");
    assert_eq!(
        server
            .send("GET", "/api/v1/api-keys", &[("Authorization", &acme)], None)
            .json()[0]["active"],
        true
    );
}
