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

/// 100 rounds of `kill -9` while clients create and deactivate keys: every
/// write the server acknowledged is there after the restart.
#[test]
fn acknowledged_writes_survive_a_crash_loop() {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const ROUNDS: usize = 100;
    const CLIENTS: usize = 3;
    let mut server = Server::start(&[]);
    let auth = server.bearer("acme");
    let created: Arc<Mutex<Vec<String>>> = Arc::default();
    let deactivated: Arc<Mutex<Vec<String>>> = Arc::default();
    let body = json!({"name": "crash", "permissions": ["read"]}).to_string();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let addr = server.addr;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (auth, body) = (auth.clone(), body.clone());
                let (created, deactivated) = (created.clone(), deactivated.clone());
                std::thread::spawn(move || {
                    let headers = [("Authorization", auth.as_str())];
                    for _ in 0..1000 {
                        let Some(r) = crate::support::try_request(
                            addr,
                            "POST",
                            "/api/v1/api-keys",
                            &headers,
                            Some(body.as_bytes()),
                        ) else {
                            return;
                        };
                        if r.status != 201 {
                            continue;
                        }
                        let id = r.json()["id"].as_str().unwrap().to_owned();
                        created.lock().unwrap().push(id.clone());
                        if (round + client) % 2 == 0 {
                            let path = format!("/api/v1/api-keys/{id}/deactivate");
                            match crate::support::try_request(addr, "POST", &path, &headers, None) {
                                Some(r) if r.status == 200 => deactivated.lock().unwrap().push(id),
                                Some(_) => {}
                                None => return,
                            }
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(40 + (round as u64 * 7) % 60));
        server.kill9_and_restart();
        for c in clients {
            c.join().unwrap();
        }
    }
    let list = server
        .send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
        .json();
    let stored: std::collections::HashMap<&str, bool> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap(), k["active"].as_bool().unwrap()))
        .collect();
    let created = created.lock().unwrap();
    let deactivated = deactivated.lock().unwrap();
    assert!(
        created.len() >= ROUNDS,
        "too few writes to mean anything: {}",
        created.len()
    );
    for id in created.iter() {
        assert!(
            stored.contains_key(id.as_str()),
            "acknowledged create of {id} was lost"
        );
    }
    for id in deactivated.iter() {
        assert_eq!(
            stored.get(id.as_str()),
            Some(&false),
            "acknowledged deactivation of {id} was lost"
        );
    }
    eprintln!(
        "crash loop: {ROUNDS} rounds, {} creates and {} deactivations acknowledged, {:?}",
        created.len(),
        deactivated.len(),
        started.elapsed()
    );
}
