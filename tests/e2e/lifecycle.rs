//! The lifecycle beyond the seed, through the real binary: keys that
//! expire, rolling with a grace period, the audit trail, and leaked keys
//! deactivated by a signed GitHub secret scanning alert.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{Reply, Server, Upstream, cli};

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn manage(server: &Server, tenant: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    let auth = server.bearer(tenant);
    let body = body.map(|b| b.to_string());
    server.send(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_deref().map(str::as_bytes),
    )
}

fn check(server: &Server, raw: &str) -> Value {
    let r = server.verify(json!({"key": raw, "permission": "read"}));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn roll(server: &Server, id: &str, body: Option<Value>) -> Value {
    let r = manage(
        server,
        "acme",
        "POST",
        &format!("/api/v1/api-keys/{id}/roll"),
        body,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    r.json()
}

/// Waits until `deadline` (an epoch millisecond) has passed on this clock.
fn sleep_past(deadline: u64) {
    let now = now_ms();
    if now <= deadline {
        std::thread::sleep(Duration::from_millis(deadline - now + 50));
    }
}

#[test]
fn a_key_that_expires_works_until_then_and_is_refused_everywhere_after() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let expires = now_ms() + 2_000;
    let r = manage(
        &server,
        "acme",
        "POST",
        "/api/v1/api-keys",
        Some(
            json!({"name": "short-lived", "permissions": ["read"], "expiresAt": rfc3339(expires)}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_eq!(created["expiresAt"], rfc3339(expires));
    let raw = created["rawKey"].as_str().unwrap().to_owned();
    assert_eq!(check(&server, &raw)["valid"], true);
    let through = server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None);
    assert_eq!(through.status, 200, "{}", through.text());

    sleep_past(expires);
    assert_eq!(
        check(&server, &raw),
        json!({"valid": false, "code": "api_key_expired"})
    );
    let refused = server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None);
    assert_eq!(refused.error(), (401, "api_key_expired".to_owned()));
    let listed = manage(&server, "acme", "GET", "/api/v1/api-keys", None).json();
    assert_eq!(listed[0]["active"], false);
    assert_eq!(listed[0]["expiresAt"], rfc3339(expires));
    assert!(listed[0].get("deactivatedAt").is_none());

    // Out-of-range expiries are refused, naming the field, and store nothing.
    for bad in [
        json!(rfc3339(now_ms() - 1_000)),
        json!(rfc3339(now_ms() + 11 * 366 * 86_400_000)),
        json!("2030-01-01T00:00:00+02:00"),
        json!(12),
    ] {
        let r = manage(
            &server,
            "acme",
            "POST",
            "/api/v1/api-keys",
            Some(json!({"name": "bad", "permissions": ["read"], "expiresAt": bad})),
        );
        assert_eq!(r.error(), (400, "invalid_request".to_owned()), "{bad}");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expiresAt")
        );
    }
    let listed = manage(&server, "acme", "GET", "/api/v1/api-keys", None).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[test]
fn a_roll_with_a_grace_period_keeps_both_keys_working_then_only_the_new_one() {
    let server = Server::start(&[]);
    let (id, old) = server.create_key("acme", "Shopify Sync", &["read", "update-data"]);
    let asked = now_ms();
    let rolled = roll(&server, &id, Some(json!({"gracePeriodSeconds": 3})));
    assert_eq!(rolled["rolledFrom"], id.as_str());
    assert_eq!(rolled["name"], "Shopify Sync");
    assert_eq!(rolled["permissions"], json!(["read", "update-data"]));
    let new = rolled["rawKey"].as_str().unwrap().to_owned();
    let new_id = rolled["id"].as_str().unwrap().to_owned();
    assert_eq!(check(&server, &old)["valid"], true);
    assert_eq!(check(&server, &new)["valid"], true);
    let old_record = manage(
        &server,
        "acme",
        "GET",
        &format!("/api/v1/api-keys/{id}"),
        None,
    )
    .json();
    assert_eq!(old_record["active"], true);
    // The grace ends 3 s after the roll: no sooner than 3 s after it was asked.
    let grace_end = humantime::parse_rfc3339(old_record["expiresAt"].as_str().unwrap()).unwrap();
    let grace_end =
        u64::try_from(grace_end.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    assert!(
        grace_end >= asked + 3_000 && grace_end <= now_ms() + 3_000,
        "{grace_end}"
    );

    sleep_past(grace_end);
    assert_eq!(
        check(&server, &old),
        json!({"valid": false, "code": "api_key_expired"})
    );
    assert_eq!(check(&server, &new)["valid"], true);

    // Grace 0 (no body at all): the old key stops at once.
    let next = roll(&server, &new_id, None);
    assert_eq!(
        check(&server, &new),
        json!({"valid": false, "code": "api_key_expired"})
    );
    assert_eq!(
        check(&server, next["rawKey"].as_str().unwrap())["valid"],
        true
    );

    // An expired or deactivated key cannot be rolled; another tenant's is not found.
    let r = manage(
        &server,
        "acme",
        "POST",
        &format!("/api/v1/api-keys/{new_id}/roll"),
        None,
    );
    assert_eq!(r.error(), (409, "api_key_inactive".to_owned()));
    let next_id = next["id"].as_str().unwrap();
    let r = manage(
        &server,
        "globex",
        "POST",
        &format!("/api/v1/api-keys/{next_id}/roll"),
        None,
    );
    assert_eq!(r.error(), (404, "not_found".to_owned()));
    let r = manage(
        &server,
        "acme",
        "POST",
        &format!("/api/v1/api-keys/{next_id}/roll"),
        Some(json!({"gracePeriodSeconds": 604_801})),
    );
    assert_eq!(r.error(), (400, "invalid_request".to_owned()));
    assert_eq!(
        manage(&server, "acme", "GET", "/api/v1/api-keys", None)
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn the_events_tell_the_whole_story_newest_first_in_pages() {
    let server = Server::start(&[]);
    let (id, raw) = server.create_key("acme", "story", &["read"]);
    let rolled = roll(&server, &id, Some(json!({"gracePeriodSeconds": 60})));
    let new_id = rolled["id"].as_str().unwrap().to_owned();
    let r = manage(
        &server,
        "acme",
        "POST",
        &format!("/api/v1/api-keys/{new_id}/deactivate"),
        None,
    );
    assert_eq!(r.status, 200);
    // Deactivating again records nothing.
    manage(
        &server,
        "acme",
        "POST",
        &format!("/api/v1/api-keys/{new_id}/deactivate"),
        None,
    );
    let r = manage(
        &server,
        "acme",
        "DELETE",
        &format!("/api/v1/api-keys/{id}"),
        None,
    );
    assert_eq!(r.status, 200);
    // A change from the command line is recorded as such.
    let out = cli()
        .args(["keys", "delete", "--tenant", "acme", "--db"])
        .arg(&server.db)
        .arg(&new_id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.create_key("globex", "theirs", &["read"]);

    let mut story = Vec::new();
    let mut path = "/api/v1/api-keys/events?limit=2".to_owned();
    loop {
        let r = manage(&server, "acme", "GET", &path, None);
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let events = page["events"].as_array().unwrap().clone();
        assert!(events.len() <= 2);
        story.extend(events);
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/api-keys/events?limit=2&cursor={next}"),
            None => break,
        }
    }
    let told: Vec<(String, String, String)> = story
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["keyId"].as_str().unwrap().to_owned(),
                e["actor"]["via"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let t = |kind: &str, key: &str, via: &str| (kind.to_owned(), key.to_owned(), via.to_owned());
    assert_eq!(
        told,
        [
            t("key.deleted", &new_id, "cli"),
            t("key.deleted", &id, "token"),
            t("key.deactivated", &new_id, "token"),
            t("key.rolled", &id, "token"),
            t("key.created", &new_id, "token"),
            t("key.created", &id, "token"),
        ]
    );
    assert_eq!(story[1]["actor"]["subject"], "e2e");
    assert_eq!(story[0]["actor"]["subject"], Value::Null);
    assert_eq!(
        story[3]["details"],
        json!({"newKeyId": new_id, "gracePeriodSeconds": 60})
    );
    for e in &story {
        assert!(e["id"].as_str().unwrap().starts_with("event-"));
        assert!(e["at"].as_str().unwrap().ends_with('Z'));
    }
    let text = serde_json::to_string(&story).unwrap();
    assert!(!text.contains(&raw) && !text.contains("sigma_sk_live_"));

    // Filtered by key; another tenant sees none of it.
    let mine = manage(
        &server,
        "acme",
        "GET",
        &format!("/api/v1/api-keys/events?keyId={id}"),
        None,
    )
    .json();
    assert_eq!(mine["events"].as_array().unwrap().len(), 3);
    let theirs = manage(&server, "globex", "GET", "/api/v1/api-keys/events", None).json();
    assert_eq!(theirs["events"].as_array().unwrap().len(), 1);
    assert_eq!(theirs["events"][0]["type"], "key.created");
    let r = manage(
        &server,
        "acme",
        "GET",
        "/api/v1/api-keys/events?limit=0",
        None,
    );
    assert_eq!(r.error(), (400, "invalid_request".to_owned()));
    let r = server.send("GET", "/api/v1/api-keys/events", &[], None);
    assert_eq!(r.error(), (401, "unauthenticated".to_owned()));

    // The command line reads the same trail.
    let out = cli()
        .args(["keys", "events", "--tenant", "acme", "--limit", "1", "--db"])
        .arg(&server.db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["events"][0], story[0]);
    assert!(page["next"].is_string());
}

/// GitHub's key list for one fresh key pair, written to a file.
pub(crate) fn github_keys(
    dir: &std::path::Path,
    identifier: &str,
) -> (SigningKey, std::path::PathBuf) {
    let signing = SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let path = dir.join("github-keys.json");
    let list = json!({"public_keys": [
        {"key_identifier": "an-older-key", "key": pem, "is_current": false},
        {"key_identifier": identifier, "key": pem, "is_current": true},
    ]});
    std::fs::write(&path, list.to_string()).unwrap();
    (signing, path)
}

fn sign(key: &SigningKey, body: &[u8]) -> String {
    let signature: Signature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

fn alert(server: &Server, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    server.send(
        "POST",
        "/api/v1/secret-scanning/github",
        &all,
        Some(body.as_bytes()),
    )
}

#[test]
fn a_signed_github_alert_deactivates_our_leaked_key_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let (signing, path) = github_keys(dir.path(), "kid-current");
    let server = Server::start(&["--github-scanning-keys", path.to_str().unwrap()]);
    let (id, raw) = server.create_key("acme", "leaky", &["read"]);
    let (_, safe) = server.create_key("acme", "safe", &["read"]);
    let url = "https://github.com/octo/repo/blob/main/.env";
    let body = json!([
        {"token": raw, "type": "sigma_api_key", "url": url, "source": "content"},
        {"token": "sigma_sk_live_notoursatall", "type": "sigma_api_key", "url": url, "source": "content"},
    ])
    .to_string();
    let signature = sign(&signing, body.as_bytes());
    let (other, _) = github_keys(tempfile::tempdir().unwrap().path(), "kid-current");
    let forged = sign(&other, body.as_bytes());

    // Refused, changing nothing: tampered, unknown identifier, forged, missing.
    let tampered = body.replace("content", "commit");
    for (headers, body) in [
        (
            vec![
                ("Github-Public-Key-Identifier", "kid-current"),
                ("Github-Public-Key-Signature", signature.as_str()),
            ],
            tampered.as_str(),
        ),
        (
            vec![
                ("Github-Public-Key-Identifier", "kid-unknown"),
                ("Github-Public-Key-Signature", signature.as_str()),
            ],
            body.as_str(),
        ),
        (
            vec![
                ("Github-Public-Key-Identifier", "kid-current"),
                ("Github-Public-Key-Signature", forged.as_str()),
            ],
            body.as_str(),
        ),
        (
            vec![("Github-Public-Key-Identifier", "kid-current")],
            body.as_str(),
        ),
    ] {
        let r = alert(&server, &headers, body);
        assert_eq!(r.error(), (401, "invalid_signature".to_owned()));
    }
    assert_eq!(check(&server, &raw)["valid"], true);
    let events = manage(&server, "acme", "GET", "/api/v1/api-keys/events", None).json();
    assert_eq!(events["events"].as_array().unwrap().len(), 2);

    let r = alert(
        &server,
        &[
            ("Github-Public-Key-Identifier", "kid-current"),
            ("Github-Public-Key-Signature", &signature),
        ],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let hex = |t: &str| {
        Sha256::digest(t.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(
        r.json(),
        json!([
            {"token_hash": hex(&raw), "token_type": "sigma_api_key", "label": "true_positive"},
            {"token_hash": hex("sigma_sk_live_notoursatall"), "token_type": "sigma_api_key", "label": "false_positive"},
        ])
    );
    assert_eq!(
        check(&server, &raw),
        json!({"valid": false, "code": "api_key_deactivated"})
    );
    assert_eq!(check(&server, &safe)["valid"], true);
    let events = manage(
        &server,
        "acme",
        "GET",
        &format!("/api/v1/api-keys/events?keyId={id}"),
        None,
    )
    .json();
    assert_eq!(
        events["events"][0],
        json!({
            "id": events["events"][0]["id"],
            "at": events["events"][0]["at"],
            "type": "key.leaked",
            "keyId": id,
            "actor": {"via": "secret-scanning", "subject": null},
            "details": {"url": url, "source": "content"},
        })
    );
    let logs = server.logs();
    assert!(logs.contains(&id) && logs.contains(url), "{logs}");
    assert!(!logs.contains(&raw), "the token reached the log");

    // Without the flag the endpoint does not exist.
    let plain = Server::start(&[]);
    let r = alert(
        &plain,
        &[
            ("Github-Public-Key-Identifier", "kid-current"),
            ("Github-Public-Key-Signature", &signature),
        ],
        &body,
    );
    assert_eq!(r.status, 404);
}

#[test]
fn a_scanning_key_file_that_is_not_githubs_list_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    std::fs::write(&path, "{\"keys\": []}").unwrap();
    let out = cli()
        .args(["serve", "--listen", "127.0.0.1:0", "--github-scanning-keys"])
        .arg(&path)
        .arg("--db")
        .arg(dir.path().join("k.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--github-scanning-keys"), "{stderr}");
}

#[test]
fn the_command_line_creates_expiring_keys_and_rolls_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let run = |args: &[&str]| {
        let out = cli().args(args).arg("--db").arg(&db).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let at = rfc3339(now_ms() + 3_600_000);
    let (ok, stdout, stderr) = run(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--name",
        "ci",
        "--permissions",
        "read",
        "--expires-at",
        &at,
    ]);
    assert!(ok, "{stderr}");
    let created: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(created["expiresAt"], at.as_str());
    let id = created["id"].as_str().unwrap();
    let (ok, stdout, stderr) = run(&[
        "keys",
        "roll",
        "--tenant",
        "acme",
        "--grace-period",
        "30",
        id,
    ]);
    assert!(ok, "{stderr}");
    let rolled: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rolled["rolledFrom"], id);
    assert_eq!(rolled["expiresAt"], at.as_str());
    assert!(
        rolled["rawKey"]
            .as_str()
            .unwrap()
            .starts_with("sigma_sk_live_")
    );
    let (ok, stdout, _) = run(&["keys", "get", "--tenant", "acme", id]);
    assert!(ok);
    let old: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(old["active"], true);
    assert_ne!(old["expiresAt"], at.as_str());

    for bad in ["yesterday", "2020-01-01T00:00:00Z"] {
        let (ok, _, stderr) = run(&[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--name",
            "x",
            "--permissions",
            "read",
            "--expires-at",
            bad,
        ]);
        assert!(!ok && stderr.contains("expires"), "{bad}: {stderr}");
    }
    let (ok, _, stderr) = run(&[
        "keys",
        "roll",
        "--tenant",
        "acme",
        "--grace-period",
        "700000",
        id,
    ]);
    assert!(!ok && stderr.contains("gracePeriodSeconds"), "{stderr}");
}
