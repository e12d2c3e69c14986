//! Running it in production: configuration from the environment, JSON
//! logs, and a graceful shutdown.

use std::time::Duration;

use crate::support::{Server, Upstream, request};

#[test]
fn every_serve_flag_can_come_from_the_environment_and_flags_win() {
    let upstream = Upstream::start();
    let url = upstream.url();
    let server = Server::start_on(
        None,
        &[
            ("SIGMA_UPSTREAM", url.as_str()),
            ("SIGMA_MAX_KEYS_PER_TENANT", "1"),
            ("SIGMA_AUTH_LISTEN", "127.0.0.1:0"),
        ],
        &[],
    );
    assert_ne!(server.auth_addr, server.addr, "SIGMA_AUTH_LISTEN");
    let (_, raw) = server.create_key("acme", "one", &["read"]);
    let r = server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None);
    assert_eq!(r.status, 200, "SIGMA_UPSTREAM: {}", r.text());
    let auth = server.bearer("acme");
    let body = br#"{"name": "two", "permissions": ["read"]}"#;
    let r = server.send(
        "POST",
        "/api/v1/api-keys",
        &[("Authorization", &auth)],
        Some(body),
    );
    assert_eq!(
        r.error(),
        (409, "key_limit_reached".to_owned()),
        "SIGMA_MAX_KEYS_PER_TENANT"
    );

    // A flag wins over its variable.
    let server = Server::start_on(
        None,
        &[("SIGMA_MAX_KEYS_PER_TENANT", "1")],
        &["--max-keys-per-tenant", "2"],
    );
    server.create_key("acme", "one", &["read"]);
    server.create_key("acme", "two", &["read"]);

    // A bad value is refused at start, naming the variable's flag.
    let out = crate::support::cli()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SIGMA_UPSTREAM_TIMEOUT", "soon")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream-timeout"), "{err}");

    // SIGMA_DB names the store; SIGMA_DATABASE_URL still works.
    let dir = tempfile::tempdir().expect("tempdir");
    for var in ["SIGMA_DB", "SIGMA_DATABASE_URL"] {
        let db = dir.path().join(format!("{var}.db"));
        let out = crate::support::cli()
            .args([
                "keys",
                "create",
                "--tenant",
                "acme",
                "--name",
                "k",
                "--permissions",
                "read",
            ])
            .env(var, &db)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{var}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(db.exists(), "{var} did not name the store");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let server = Server::start(&["--log-format", "json"]);
    let (id, raw) = server.create_key("acme", "k", &["read"]);
    let r = server.send("GET", "/api/v1/nothing", &[("X-Sigma-ApiKey", &raw)], None);
    assert_eq!(r.status, 404);
    std::thread::sleep(Duration::from_millis(200));
    let logs = server.logs();
    let mut objects = 0;
    let mut named = false;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(v.is_object() && v["level"].is_string(), "{line}");
        objects += 1;
        named |= v.to_string().contains(&id);
    }
    assert!(objects > 0 && named, "{logs}");
    assert!(!logs.contains(&raw), "a raw key was logged");
}

#[test]
fn sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0() {
    let upstream = Upstream::start();
    let mut server = Server::with_upstream(&upstream, &["--shutdown-timeout", "20s"]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    let addr = server.addr;
    // The echo upstream answers /slow after 5 s.
    let slow = std::thread::spawn(move || {
        request(
            addr,
            "GET",
            "/api/v1/records/slow",
            &[("X-Sigma-ApiKey", &raw)],
            None,
        )
    });
    std::thread::sleep(Duration::from_millis(700));
    server.send_sigterm();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "a new connection was accepted after SIGTERM"
    );
    let reply = slow.join().expect("slow request");
    assert_eq!(reply.status, 200, "the request in flight: {}", reply.text());
    let (status, took) = server
        .wait_exit(Duration::from_secs(15))
        .expect("the server did not exit well before its 20 s shutdown timeout");
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn the_shutdown_timeout_bounds_the_wait() {
    let upstream = Upstream::start();
    let mut server = Server::with_upstream(&upstream, &["--shutdown-timeout", "1s"]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        crate::support::try_request(
            addr,
            "GET",
            "/api/v1/records/slow",
            &[("X-Sigma-ApiKey", &raw)],
            None,
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    server.send_sigterm();
    let (status, took) = server
        .wait_exit(Duration::from_secs(4))
        .expect("the server waited past its 1 s shutdown timeout");
    assert!(status.success(), "exit status {status:?}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let _ = slow.join();
}

/// The sum of every series of `name` whose labels include all of `labels`
/// (`key="value"` pairs), in a Prometheus text scrape.
fn series(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, value)| value.parse::<f64>().expect("a number"))
        .sum()
}

#[test]
fn metrics_count_exactly_the_requests_made_and_stay_off_the_public_listener() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin_addr.expect("the admin address is printed");
    let (id, raw) = server.create_key("acme", "k", &["read"]);
    let scrape = || {
        let r = request(admin, "GET", "/metrics", &[], None);
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("text/plain"))
        );
        r.text()
    };
    // Warm: the first lookup of the key is a miss, later ones hit.
    server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None);
    let before = scrape();
    let key = [("X-Sigma-ApiKey", raw.as_str())];
    // (path, headers, status)
    type Mix<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);
    let mix: Vec<Mix<'_>> = vec![
        ("/api/v1/records", key.to_vec(), 200),
        ("/api/v1/records/1", key.to_vec(), 200),
        ("/api/v1/schemas", key.to_vec(), 200),
        ("/api/v1/records", vec![], 401),
        ("/api/v1/schemas", vec![], 401),
        (
            "/api/v1/records",
            vec![("X-Sigma-ApiKey", "sigma_sk_live_nope")],
            401,
        ),
        ("/api/v1/nothing", key.to_vec(), 404),
        ("/api/v1/openapi.json", vec![], 200),
        ("/api/v1/api-keys", key.to_vec(), 403),
    ];
    for (path, headers, status) in &mix {
        let r = server.send("GET", path, headers, None);
        assert_eq!(r.status, *status, "{path}");
    }
    let after = scrape();
    let delta =
        |name: &str, labels: &[&str]| series(&after, name, labels) - series(&before, name, labels);
    let requests = "sigma_keys_requests_total";
    assert_eq!(
        delta(
            requests,
            &[
                r#"route="resource""#,
                r#"decision="forward""#,
                r#"outcome="forwarded""#
            ]
        ),
        3.0
    );
    assert_eq!(delta(requests, &[r#"route="resource""#]), 7.0);
    assert_eq!(
        delta(
            requests,
            &[r#"route="api_description""#, r#"outcome="replied""#]
        ),
        1.0
    );
    assert_eq!(
        delta(
            requests,
            &[r#"route="management""#, r#"outcome="status_4xx""#]
        ),
        1.0
    );
    assert_eq!(delta(requests, &[r#"outcome="unauthenticated""#]), 2.0);
    assert_eq!(delta(requests, &[r#"outcome="invalid_api_key""#]), 1.0);
    assert_eq!(delta(requests, &[r#"outcome="unknown_resource""#]), 1.0);
    assert_eq!(delta(requests, &[]), 9.0, "{after}");
    assert_eq!(
        delta(
            "sigma_keys_request_duration_seconds_count",
            &[r#"decision="forward""#]
        ),
        3.0
    );
    assert_eq!(
        delta("sigma_keys_upstream_duration_seconds_count", &[]),
        3.0
    );
    // Four lookups of a cached key; the malformed key is refused before any.
    assert_eq!(
        delta("sigma_keys_cache_lookups_total", &[r#"result="hit""#]),
        4.0
    );
    assert_eq!(
        delta("sigma_keys_cache_lookups_total", &[r#"result="miss""#]),
        0.0
    );
    assert_eq!(delta("sigma_keys_component_traps_total", &[]), 0.0);
    assert!(
        after.contains("# HELP sigma_keys_requests_total"),
        "{after}"
    );
    assert!(after.contains("sigma_keys_open_connections"), "{after}");
    // Bounded labels: no tenant, key id or path.
    for private in ["acme", id.as_str(), "/api/v1", raw.as_str()] {
        assert!(!after.contains(private), "a label carries {private}");
    }

    // Health on the admin listener only.
    let health = request(admin, "GET", "/healthz", &[], None);
    assert_eq!(
        (health.status, health.json()["status"].clone()),
        (200, "ok".into())
    );
    let ready = request(admin, "GET", "/readyz", &[], None);
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, "ready".into())
    );
    for path in ["/metrics", "/healthz", "/readyz"] {
        // Without a key: 401 as for any request; with one: no such resource.
        let r = server.send("GET", path, &[], None);
        assert_eq!(r.error().0, 401, "{path} on the public listener");
        let r = server.send("GET", path, &key, None);
        assert_eq!(r.error(), (404, "unknown_resource".to_owned()), "{path}");
    }
    let r = request(admin, "POST", "/metrics", &[], None);
    assert_eq!(r.error(), (405, "method_not_allowed".to_owned()));
}

#[test]
fn without_admin_listen_there_is_no_admin_listener() {
    let server = Server::start(&[]);
    assert_eq!(server.admin_addr, None);
}
