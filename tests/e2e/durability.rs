//! Nothing acknowledged is lost; nothing secret is stored.

use serde_json::json;
use sha2::Digest;

use crate::support::{Server, files_bytes};

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start(&[]);
    let auth = server.bearer("acme");
    let keys: Vec<(String, String)> = (0..20)
        .map(|i| server.create_key("acme", &format!("key {i}"), &["read"]))
        .collect();
    let deactivated = &keys[3].0;
    let r = server.send(
        "POST",
        &format!("/api/v1/api-keys/{deactivated}/deactivate"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200);
    let deleted = &keys[5].0;
    assert_eq!(
        server
            .send(
                "DELETE",
                &format!("/api/v1/api-keys/{deleted}"),
                &[("Authorization", &auth)],
                None
            )
            .status,
        200
    );
    let before = server
        .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
        .json();

    server.kill9_and_restart();

    // The same secret is used after the restart, so the old token still works.
    let after = server
        .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
        .json();
    assert_eq!(after, before);
    assert_eq!(after.as_array().unwrap().len(), 19);
    let names: Vec<&str> = after
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"key 0"), "oldest first");
    for (i, (_, raw)) in keys.iter().enumerate() {
        let v = server
            .verify(json!({"key": raw, "permission": "read"}))
            .json();
        let expected = match i {
            3 => json!({"valid": false, "code": "api_key_deactivated"}),
            5 => json!({"valid": false, "code": "invalid_api_key"}),
            _ => json!(true),
        };
        if expected == json!(true) {
            assert_eq!(v["valid"], true, "key {i}: {v}");
        } else {
            assert_eq!(v, expected, "key {i}");
        }
    }
}

#[test]
fn only_the_sha256_of_a_key_is_stored() {
    let mut server = Server::start(&[]);
    let keys: Vec<String> = (0..5)
        .map(|i| server.create_key("acme", &format!("k{i}"), &["read"]).1)
        .collect();
    // Both while running (WAL) and after the WAL is folded into the database.
    for round in 0..2 {
        let bytes = files_bytes(server.dir.path(), "keys.db");
        let logs = server.logs();
        for raw in &keys {
            let hash = sha2::Sha256::digest(raw.as_bytes());
            assert!(
                !contains(&bytes, raw.as_bytes()),
                "raw key found in the database files (round {round})"
            );
            assert!(!logs.contains(raw.as_str()), "raw key found in the log");
            assert!(
                contains(&bytes, &hash),
                "the key's SHA-256 is not stored (round {round})"
            );
        }
        server.kill9_and_restart();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
