//! Several `sigma-keys` nodes on one PostgreSQL, started by the tests: they
//! agree on every key, a deactivation is refused everywhere within the
//! staleness bound (measured and printed), a dead listener or database
//! fails closed, and service resumes when the database returns.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::pg_cluster::{self, PASSWORD, PgCluster};
use crate::support::{Reply, Server, cli};

/// Every node of a deployment shares this secret.
const SECRET: &str = "e2e-shared-secret-for-every-node-0123456789";
/// The documented default bound.
const BOUND: Duration = Duration::from_secs(1);

fn node(url: &str) -> Server {
    Server::start_on(Some(url), &[("SIGMA_JWT_SECRET", SECRET)], &[])
}

fn verify(node: &Server, raw: &str) -> Reply {
    node.verify(json!({"key": raw, "permission": "read"}))
}

fn is_valid(node: &Server, raw: &str) -> bool {
    let r = verify(node, raw);
    assert_eq!(r.status, 200, "verify failed: {}", r.text());
    r.json()["valid"] == true
}

fn manage(node: &Server, method: &str, path: &str) -> Reply {
    let auth = node.bearer("acme");
    node.send(method, path, &[("Authorization", &auth)], None)
}

/// Deactivates key `id` on `node`; when the 200 arrived.
fn deactivate(node: &Server, id: &str) -> Instant {
    let r = manage(node, "POST", &format!("/api/v1/api-keys/{id}/deactivate"));
    assert_eq!(r.status, 200, "{}", r.text());
    Instant::now()
}

/// How long until `node` first refuses `raw` (polling every millisecond),
/// failing if a check sent after `limit` still accepts it. (Sent, not
/// answered: on a busy machine an answer decided in time may arrive late.)
fn refused_after(node: &Server, raw: &str, since: Instant, limit: Duration) -> Duration {
    loop {
        let sent = since.elapsed();
        if !is_valid(node, raw) {
            return since.elapsed();
        }
        assert!(
            sent <= limit,
            "a check sent {sent:?} after the deactivation was acknowledged still accepted the key"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn three_nodes_agree_and_a_deactivation_is_refused_everywhere_within_the_bound() {
    let url = pg_cluster::database_url();
    let (a, b, c) = (node(&url), node(&url), node(&url));

    // Created on A, used on B and C (and cached there).
    let (id, raw) = a.create_key("acme", "shared", &["read"]);
    for n in [&a, &b, &c] {
        for _ in 0..3 {
            assert!(is_valid(n, &raw));
        }
    }
    // A key created on A works on B at once (B holds no stale answer).
    let (_, fresh) = a.create_key("acme", "fresh", &["read"]);
    assert!(is_valid(&b, &fresh));

    // Deactivated on B: A and C refuse it within the bound.
    let acknowledged = deactivate(&b, &id);
    assert!(
        !is_valid(&b, &raw),
        "refused at once by the node that wrote"
    );
    let on_a = refused_after(&a, &raw, acknowledged, BOUND);
    let on_c = refused_after(&c, &raw, acknowledged, BOUND);
    eprintln!("deactivation on B refused by A after {on_a:?}, by C after {on_c:?}");
    assert_eq!(
        verify(&a, &raw).json(),
        json!({"valid": false, "code": "api_key_deactivated"})
    );
    let one = manage(&c, "GET", &format!("/api/v1/api-keys/{id}"));
    assert_eq!(one.json()["active"], false, "{}", one.text());

    // Deleted on C: gone everywhere.
    let (gone_id, gone) = a.create_key("acme", "to delete", &["read"]);
    assert!(is_valid(&b, &gone));
    let r = manage(&c, "DELETE", &format!("/api/v1/api-keys/{gone_id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let acknowledged = Instant::now();
    let on_b = refused_after(&b, &gone, acknowledged, BOUND);
    eprintln!("delete on C refused by B after {on_b:?}");

    // Every node lists the same keys, uses included (written within a second).
    std::thread::sleep(Duration::from_millis(1500));
    let lists: Vec<Value> = [&a, &b, &c]
        .iter()
        .map(|n| manage(n, "GET", "/api/v1/api-keys").json())
        .collect();
    assert_eq!(lists[0], lists[1]);
    assert_eq!(lists[1], lists[2]);
    let shared = lists[0]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert!(shared["lastUsedAt"].is_string(), "{shared}");
    assert_eq!(shared["active"], false);
}

/// The database kills each node's listening connection while a
/// deactivation happens: the nodes still refuse the key within the bound.
#[test]
fn a_listener_killed_by_the_database_still_refuses_within_the_bound() {
    let url = pg_cluster::database_url();
    let cluster = pg_cluster::shared();
    let (a, b) = (node(&url), node(&url));
    let db = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    for round in 0..3 {
        let (id, raw) = a.create_key("acme", &format!("round {round}"), &["read"]);
        assert!(is_valid(&b, &raw));
        assert!(is_valid(&b, &raw));
        let killed = cluster.psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = '{db}' AND application_name = 'sigma-keys listener'"
            ),
        );
        assert_eq!(killed, "2", "both listeners were connected");
        let acknowledged = deactivate(&a, &id);
        let took = refused_after(&b, &raw, acknowledged, BOUND);
        eprintln!("round {round}: listener killed, refused after {took:?}");
        // Let the listeners come back before the next round.
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        b.logs().contains("change feed connection failed"),
        "{}",
        b.logs()
    );
}

/// Resumes stopped processes, even when the test fails.
struct Resume(Vec<String>);

impl Drop for Resume {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", pid])
                .status();
        }
    }
}

/// The listeners' database sessions stop answering without closing (their
/// server processes get SIGSTOP: a network that drops packets): no
/// notification, no heartbeat. The node stops trusting its cache within the
/// bound and refuses the key all the same.
#[test]
fn a_stalled_listener_still_refuses_within_the_bound() {
    let cluster = PgCluster::start(); // its processes are ours to signal
    let url = cluster.new_database();
    let db = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let (a, b) = (node(&url), node(&url));
    let (id, raw) = a.create_key("acme", "stalled", &["read"]);
    assert!(is_valid(&b, &raw));
    assert!(is_valid(&b, &raw));
    let pids = cluster.psql(
        "postgres",
        &format!(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = '{db}' AND application_name = 'sigma-keys listener'"
        ),
    );
    let pids: Vec<String> = pids.lines().map(str::to_owned).collect();
    assert_eq!(pids.len(), 2, "both listeners were connected");
    let _resume = Resume(pids.clone());
    for pid in &pids {
        let stopped = std::process::Command::new("kill")
            .args(["-STOP", pid])
            .status()
            .unwrap();
        assert!(stopped.success());
    }
    let acknowledged = deactivate(&a, &id);
    assert!(
        !is_valid(&a, &raw),
        "refused at once by the node that wrote"
    );
    let took = refused_after(&b, &raw, acknowledged, BOUND);
    eprintln!("listeners stalled: refused after {took:?}");
    // Still refused while the listeners stay stalled (lookups go to the database).
    std::thread::sleep(Duration::from_millis(1200));
    assert!(!is_valid(&b, &raw));
    let (_, after) = a.create_key("acme", "after", &["read"]);
    assert!(is_valid(&b, &after));
}

/// PostgreSQL stopped with `-m immediate`: every key check and management
/// call fails closed with 503 (cached keys once the bound has passed), no
/// node crashes, and all serve again when it returns, without a restart.
#[test]
fn a_database_outage_fails_closed_and_heals_by_itself() {
    let cluster = PgCluster::start();
    let url = cluster.new_database();
    let (a, b) = (node(&url), node(&url));
    let (_, cached) = a.create_key("acme", "cached", &["read"]);
    let (_, uncached) = a.create_key("acme", "uncached", &["read"]);
    assert!(is_valid(&b, &cached));
    assert!(is_valid(&b, &cached));
    let auth = b.bearer("acme");

    cluster.stop_immediate();
    let stopped = Instant::now();
    let r = verify(&b, &uncached);
    assert_eq!(r.error(), (503, "store_unavailable".into()), "uncached key");
    let r = b.send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None);
    assert_eq!(r.error(), (503, "store_unavailable".into()), "management");
    let r = b.send(
        "GET",
        "/api/v1/records",
        &[("X-Sigma-ApiKey", &uncached)],
        None,
    );
    assert_eq!(r.error(), (503, "store_unavailable".into()), "gateway");
    std::thread::sleep(BOUND.saturating_sub(stopped.elapsed()) + Duration::from_millis(50));
    let r = verify(&b, &cached);
    assert_eq!(
        r.error(),
        (503, "store_unavailable".into()),
        "a cached key after the bound"
    );
    let body = r.json();
    assert!(!body.to_string().contains(PASSWORD));

    cluster.restart();
    let back = Instant::now();
    for n in [&a, &b] {
        loop {
            let r = verify(n, &cached);
            if r.status == 200 {
                assert_eq!(r.json()["valid"], true);
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "no service {:?} after the database returned: {}",
                back.elapsed(),
                r.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "served again {:?} after the database returned",
        back.elapsed()
    );
    let (_, after) = b.create_key("acme", "after", &["read"]);
    assert!(is_valid(&a, &after));
    for n in [&a, &b] {
        assert!(!n.logs().contains(PASSWORD));
    }
}

/// `kill -9` of a node in the middle of creates and deactivations: every
/// acknowledged write is in the database, as another node sees it.
#[test]
fn kill_9_during_a_burst_loses_nothing_acknowledged() {
    let url = pg_cluster::database_url();
    let mut a = node(&url);
    let b = node(&url);
    let auth = a.bearer("acme");
    let addr = a.addr;
    let burst = std::thread::spawn(move || {
        let mut created = Vec::new();
        let mut deactivated = Vec::new();
        let body = json!({"name": "burst", "permissions": ["read"]}).to_string();
        for i in 0.. {
            let r = crate::support::try_request(
                addr,
                "POST",
                "/api/v1/api-keys",
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                Some(body.as_bytes()),
            );
            let Some(r) = r.filter(|r| r.status == 201) else {
                break;
            };
            let id = r.json()["id"].as_str().unwrap().to_owned();
            created.push((id.clone(), r.json()["rawKey"].as_str().unwrap().to_owned()));
            if i % 2 == 0 {
                let r = crate::support::try_request(
                    addr,
                    "POST",
                    &format!("/api/v1/api-keys/{id}/deactivate"),
                    &[("Authorization", &auth)],
                    None,
                );
                match r {
                    Some(r) if r.status == 200 => deactivated.push(id),
                    _ => break,
                }
            }
        }
        (created, deactivated)
    });
    std::thread::sleep(Duration::from_millis(1500));
    a.kill9();
    let (created, deactivated) = burst.join().unwrap();
    assert!(
        created.len() > 10,
        "the burst made only {} keys",
        created.len()
    );
    let listed = manage(&b, "GET", "/api/v1/api-keys").json();
    let listed = listed.as_array().unwrap();
    for (id, raw) in &created {
        let key = listed.iter().find(|k| k["id"] == id.as_str());
        assert!(key.is_some(), "acknowledged key {id} lost");
        if deactivated.contains(id) {
            assert_eq!(
                key.unwrap()["active"],
                false,
                "acknowledged deactivation of {id} lost"
            );
            assert!(!is_valid(&b, raw));
        }
    }
    eprintln!(
        "{} creates and {} deactivations acknowledged before kill -9; none lost",
        created.len(),
        deactivated.len()
    );
}

#[test]
fn a_node_on_postgres_needs_the_shared_secret_and_never_shows_the_password() {
    let url = pg_cluster::database_url();
    let out = cli()
        .args(["serve", "--listen", "127.0.0.1:0", "--db", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SIGMA_JWT_SECRET") && err.contains("--jwt-secret-file"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // From the environment; --help does not show it.
    let help = cli()
        .args(["serve", "--help"])
        .env("SIGMA_DATABASE_URL", &url)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("SIGMA_DATABASE_URL"), "{help}");
    assert!(!help.contains(PASSWORD), "{help}");

    // A bad URL: the error does not repeat it.
    let bad = url.replace("sslmode=disable", "sslmode=sometimes");
    let out = cli()
        .args(["keys", "list", "--tenant", "acme", "--db", &bad])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sslmode") && !err.contains(PASSWORD), "{err}");

    // Wrong password: the error names the database without the password.
    let wrong = url.replace(PASSWORD, "not-the-password");
    let out = cli()
        .args(["keys", "list", "--tenant", "acme", "--db", &wrong])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("not-the-password") && err.contains("***"),
        "{err}"
    );

    // Started from the environment: the banner shows the URL without it.
    let mut server = Server::start_on(Some(&url), &[("SIGMA_JWT_SECRET", SECRET)], &[]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    assert!(is_valid(&server, &raw));
    server.terminate();
    let listed = cli()
        .args(["keys", "list", "--tenant", "acme"])
        .env("SIGMA_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let keys: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert!(
        keys[0]["lastUsedAt"].is_string(),
        "the use was written when the node shut down cleanly: {keys}"
    );
    assert!(!server.logs().contains(PASSWORD));
}

/// `sigma-keys migrate` copies keys in every state, can be repeated, and
/// every key keeps working on PostgreSQL.
#[test]
fn migrate_from_sqlite_keeps_every_key_working() {
    let sqlite = Server::start_on(None, &[("SIGMA_JWT_SECRET", SECRET)], &[]);
    let (active_id, active) = sqlite.create_key("acme", "active", &["read"]);
    let (off_id, off) = sqlite.create_key("acme", "off", &["read"]);
    let (gone_id, gone) = sqlite.create_key("acme", "gone", &["read"]);
    let (_, other) = sqlite.create_key("globex", "other tenant", &["read", "delete-model"]);
    assert!(is_valid(&sqlite, &active));
    deactivate(&sqlite, &off_id);
    assert_eq!(
        manage(&sqlite, "DELETE", &format!("/api/v1/api-keys/{gone_id}")).status,
        200
    );
    std::thread::sleep(Duration::from_millis(1200)); // lastUsedAt written
    let before = manage(&sqlite, "GET", "/api/v1/api-keys").json();
    let trail = manage(&sqlite, "GET", "/api/v1/api-keys/events").json();
    let mut sqlite = sqlite;
    sqlite.terminate();

    let url = pg_cluster::database_url();
    let migrate = || {
        let out = cli()
            .args(["migrate", "--from"])
            .arg(&sqlite.db)
            .args(["--to", &url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains(PASSWORD));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(
        migrate(),
        json!({"keys": 3, "copied": 3, "alreadyThere": 0, "deactivated": 1, "events": 6, "eventsCopied": 6})
    );
    assert_eq!(
        migrate(),
        json!({"keys": 3, "copied": 0, "alreadyThere": 3, "deactivated": 1, "events": 6, "eventsCopied": 0})
    );

    let pg = node(&url);
    assert_eq!(manage(&pg, "GET", "/api/v1/api-keys").json(), before);
    assert_eq!(
        manage(&pg, "GET", "/api/v1/api-keys/events").json(),
        trail,
        "the audit trail moves too, in order"
    );
    assert!(before[0]["lastUsedAt"].is_string());
    assert!(is_valid(&pg, &active));
    assert!(is_valid(&pg, &other));
    assert_eq!(
        verify(&pg, &off).json(),
        json!({"valid": false, "code": "api_key_deactivated"})
    );
    assert_eq!(
        verify(&pg, &gone).json(),
        json!({"valid": false, "code": "invalid_api_key"})
    );
    deactivate(&pg, &active_id);
    assert!(!is_valid(&pg, &active));
}

/// TLS to the database as the URL asks: `require` encrypts, `verify-full`
/// checks the chain and the host name, `verify-ca` the chain only; a wrong
/// CA or name is refused at start, and a server without TLS fails `require`.
#[test]
fn tls_to_the_database_as_the_url_asks() {
    let cluster = PgCluster::start_tls();
    cluster.psql("postgres", "CREATE DATABASE keys");
    let ca = cluster.ca_file().display().to_string();
    let other = cluster.other_ca_file().display().to_string();
    let by_ip = cluster.base_url("127.0.0.1", "keys");
    let by_name = cluster.base_url("localhost", "keys");
    let starts = |url: &str| {
        cli()
            .args(["keys", "list", "--tenant", "acme", "--db", url])
            .output()
            .unwrap()
    };
    for url in [
        format!("{by_ip}?sslmode=require"),
        format!("{by_ip}?sslmode=verify-ca&sslrootcert={ca}"),
        format!("{by_name}?sslmode=verify-full&sslrootcert={ca}"),
    ] {
        let out = starts(&url);
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (url, why) in [
        (
            format!("{by_ip}?sslmode=verify-full&sslrootcert={ca}"),
            "the certificate is for localhost only",
        ),
        (
            format!("{by_name}?sslmode=verify-full&sslrootcert={other}"),
            "another CA",
        ),
        (
            format!("{by_ip}?sslmode=verify-ca&sslrootcert={other}"),
            "another CA",
        ),
        (
            format!("{by_ip}?sslmode=require&sslrootcert={other}"),
            "require with a root checks it, as libpq",
        ),
    ] {
        let out = starts(&url);
        assert!(!out.status.success(), "{why}: {url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains(PASSWORD), "{err}");
    }

    // A node's connections really are encrypted.
    let server = Server::start_on(
        Some(&format!("{by_name}?sslmode=verify-full&sslrootcert={ca}")),
        &[("SIGMA_JWT_SECRET", SECRET)],
        &[],
    );
    let (_, raw) = server.create_key("acme", "over tls", &["read"]);
    assert!(is_valid(&server, &raw));
    let plain = cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE datname = 'keys' AND application_name LIKE 'sigma-keys%' AND NOT ssl",
    );
    let encrypted = cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE datname = 'keys' AND application_name = 'sigma-keys listener' AND ssl",
    );
    assert_eq!((plain.as_str(), encrypted.as_str()), ("0", "1"));

    // `require` against a server without TLS fails.
    let no_tls = pg_cluster::shared();
    let url = no_tls
        .new_database()
        .replace("sslmode=disable", "sslmode=require");
    let out = starts(&url);
    assert!(!out.status.success());
}

/// A roll (grace 0) on one node is refused on the others within the bound,
/// like a deactivation; a key's own expiry needs no write, so every node
/// refuses it at the instant; every node reads the same audit trail.
#[test]
fn a_key_rolled_or_expired_on_one_node_is_refused_on_the_others() {
    let url = pg_cluster::database_url();
    let (a, b, c) = (node(&url), node(&url), node(&url));
    let (id, raw) = a.create_key("acme", "to roll", &["read"]);
    for n in [&a, &b, &c] {
        for _ in 0..3 {
            assert!(is_valid(n, &raw));
        }
    }
    let r = manage(&b, "POST", &format!("/api/v1/api-keys/{id}/roll"));
    assert_eq!(r.status, 201, "{}", r.text());
    let acknowledged = Instant::now();
    let new = r.json()["rawKey"].as_str().unwrap().to_owned();
    assert!(
        !is_valid(&b, &raw),
        "refused at once by the node that rolled"
    );
    let on_a = refused_after(&a, &raw, acknowledged, BOUND);
    let on_c = refused_after(&c, &raw, acknowledged, BOUND);
    eprintln!("roll on B refused by A after {on_a:?}, by C after {on_c:?}");
    assert_eq!(
        verify(&c, &raw).json(),
        json!({"valid": false, "code": "api_key_expired"})
    );
    for n in [&a, &b, &c] {
        assert!(is_valid(n, &new));
    }

    // Created on A to expire shortly: every node accepts it until then, none after.
    let expires = std::time::SystemTime::now() + Duration::from_millis(1_500);
    let at = humantime::format_rfc3339_millis(expires).to_string();
    let auth = a.bearer("acme");
    let body = json!({"name": "short", "permissions": ["read"], "expiresAt": at}).to_string();
    let r = a.send(
        "POST",
        "/api/v1/api-keys",
        &[("Authorization", &auth)],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let short = r.json()["rawKey"].as_str().unwrap().to_owned();
    for n in [&a, &b, &c] {
        assert!(is_valid(n, &short));
    }
    std::thread::sleep(
        expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            + Duration::from_millis(50),
    );
    for n in [&a, &b, &c] {
        assert_eq!(
            verify(n, &short).json(),
            json!({"valid": false, "code": "api_key_expired"})
        );
    }

    let trails: Vec<Value> = [&a, &b, &c]
        .iter()
        .map(|n| manage(n, "GET", "/api/v1/api-keys/events").json())
        .collect();
    assert_eq!(trails[0], trails[1]);
    assert_eq!(trails[1], trails[2]);
    let kinds: Vec<&str> = trails[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["key.created", "key.rolled", "key.created", "key.created"]
    );
}

/// `/readyz` says 503 with the reason while PostgreSQL is down (the change
/// feed falls behind its bound), and 200 again once it is back.
#[test]
fn readiness_follows_the_database() {
    let cluster = PgCluster::start();
    let url = cluster.new_database();
    let server = Server::start_on(
        Some(&url),
        &[("SIGMA_JWT_SECRET", SECRET)],
        &["--admin-listen", "127.0.0.1:0"],
    );
    let admin = server.admin_addr.expect("admin address");
    let ready = || crate::support::request(admin, "GET", "/readyz", &[], None);
    let wait_for = |status: u16, limit: Duration| {
        let started = Instant::now();
        loop {
            let r = ready();
            if r.status == status {
                return r;
            }
            assert!(
                started.elapsed() < limit,
                "readyz stayed {}: {}",
                r.status,
                r.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(200, Duration::from_secs(5));
    cluster.stop_immediate();
    let down = wait_for(503, BOUND + Duration::from_secs(3));
    let body = down.json();
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    assert!(!body.to_string().contains(PASSWORD));
    // Alive all along.
    let health = crate::support::request(admin, "GET", "/healthz", &[], None);
    assert_eq!(health.status, 200);
    cluster.restart();
    wait_for(200, Duration::from_secs(20));
    let scrape = crate::support::request(admin, "GET", "/metrics", &[], None).text();
    assert!(
        scrape.contains("sigma_keys_change_feed_lag_seconds"),
        "{scrape}"
    );
    assert!(
        scrape.contains("sigma_keys_change_feed_reconnects_total"),
        "{scrape}"
    );
}
