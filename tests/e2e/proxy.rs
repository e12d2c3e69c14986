//! Forwarding authorized requests upstream.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Server, Upstream, read_reply};

#[test]
fn spoofed_identity_and_hop_by_hop_headers_never_reach_the_upstream() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let (id, raw) = server.create_key("acme", "k", &["read", "update-data"]);
    let r = server.send(
        "PATCH",
        "/api/v1/catalogs/c1/assignments/a1?dry=1&x=%20y",
        &[
            ("X-Sigma-ApiKey", &raw),
            ("X-Sigma-Tenant", "globex"),
            ("x-sigma-key-id", "apikey-forged"),
            ("X-Sigma-Permission", "delete-model"),
            ("X-Sigma-Subject", "root"),
            ("Connection", "X-Hop"),
            ("X-Hop", "drop me"),
            ("Keep-Alive", "timeout=5"),
            ("X-Custom", "kept"),
            ("Content-Type", "text/plain"),
            // Every copy of a name goes, whatever its case.
            ("x-SIGMA-tenant", "initech"),
            ("x-hop", "drop me too"),
            ("connection", "x-OTHER"),
            ("X-Other", "drop me as well"),
            ("x-custom", "kept too"),
        ],
        Some(b"payload"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["method"], "PATCH");
    assert_eq!(
        echo["path"],
        "/pim/api/v1/catalogs/c1/assignments/a1?dry=1&x=%20y"
    );
    assert_eq!(echo["body"], "payload");
    let h = &echo["headers"];
    assert_eq!(h["x-sigma-tenant"], json!(["acme"]));
    assert_eq!(h["x-sigma-key-id"], json!([id]));
    assert_eq!(h["x-sigma-permission"], json!(["update-data"]));
    assert_eq!(h["x-custom"], json!(["kept", "kept too"]));
    assert_eq!(h["content-type"], json!(["text/plain"]));
    for gone in [
        "x-sigma-subject",
        "x-sigma-apikey",
        "x-hop",
        "x-other",
        "keep-alive",
        "authorization",
        "connection",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
}

#[test]
fn connection_specific_response_headers_are_dropped() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    let r = server.send(
        "GET",
        "/api/v1/records/hop",
        &[("X-Sigma-ApiKey", &raw)],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("echo"));
    assert_eq!(r.header("x-up-hop"), None, "{:?}", r.headers);
}

#[test]
fn bearer_requests_are_forwarded_with_tenant_and_subject() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let auth = server.bearer("acme");
    let r = server.send(
        "DELETE",
        "/api/v1/schemas/s1",
        &[("Authorization", &auth), ("X-Sigma-Tenant", "globex")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(h["authorization"], json!([auth]));
    assert_eq!(h["x-sigma-tenant"], json!(["acme"]));
    assert_eq!(h["x-sigma-subject"], json!(["e2e"]));
    assert!(h.get("x-sigma-key-id").is_none());
    let r = server.send("GET", "/api/v1/widgets", &[("Authorization", &auth)], None);
    assert_eq!(r.error(), (404, "unknown_resource".into()));
}

#[test]
fn checks_run_credential_then_route_then_permission() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    let cases: Vec<crate::support::Case<'_, &str>> = vec![
        ("GET", "/api/v1/records", vec![], 401, "unauthenticated"),
        ("GET", "/api/v1/widgets", vec![], 401, "unauthenticated"),
        (
            "GET",
            "/api/v1/widgets",
            vec![("X-Sigma-ApiKey", "sigma_sk_live_abc123def456ghi789")],
            401,
            "invalid_api_key",
        ),
        (
            "GET",
            "/api/v1/records",
            vec![("X-Sigma-ApiKey", "")],
            401,
            "invalid_api_key",
        ),
        (
            "GET",
            "/api/v1/widgets",
            vec![("X-Sigma-ApiKey", &raw)],
            404,
            "unknown_resource",
        ),
        (
            "GET",
            "/api/v1/records//r1",
            vec![("X-Sigma-ApiKey", &raw)],
            404,
            "unknown_resource",
        ),
        (
            "GET",
            "/api/v1/schemas/s1/records/..",
            vec![("X-Sigma-ApiKey", &raw)],
            404,
            "unknown_resource",
        ),
        (
            "GET",
            "/other",
            vec![("X-Sigma-ApiKey", &raw)],
            404,
            "unknown_resource",
        ),
        (
            "OPTIONS",
            "/api/v1/records",
            vec![("X-Sigma-ApiKey", &raw)],
            405,
            "method_not_allowed",
        ),
        (
            "DELETE",
            "/api/v1/records/schemas",
            vec![("X-Sigma-ApiKey", &raw)],
            403,
            "insufficient_permission",
        ),
        (
            "POST",
            "/api/v1/schemas/s1/attributes",
            vec![("X-Sigma-ApiKey", &raw)],
            403,
            "insufficient_permission",
        ),
    ];
    for (method, path, headers, status, code) in cases {
        let r = server.send(method, path, &headers, None);
        assert_eq!(r.error(), (status, code.to_string()), "{method} {path}");
    }
    assert_eq!(upstream.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Trailing slash and HEAD are fine.
    assert_eq!(
        server
            .send("GET", "/api/v1/records/", &[("X-Sigma-ApiKey", &raw)], None)
            .status,
        200
    );
    let head = server.send(
        "HEAD",
        "/api/v1/records/r1",
        &[("X-Sigma-ApiKey", &raw)],
        None,
    );
    assert_eq!(head.status, 200);
}

#[test]
fn large_bodies_pass_through_intact() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let (_, raw) = server.create_key("acme", "k", &["update-data"]);
    let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let r = server.send(
        "POST",
        "/api/v1/records",
        &[("X-Sigma-ApiKey", &raw)],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["bodyLength"], body.len());
    assert_eq!(r.json()["bodySha256"], digest);
}

#[test]
fn response_bodies_are_streamed_not_buffered() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let request = format!(
        "GET /api/v1/records/drip HTTP/1.1\r\nHost: x\r\nX-Sigma-ApiKey: {raw}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    // The first half must arrive well before the upstream sends the second.
    while !String::from_utf8_lossy(&seen).contains("first;") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let first_at = started.elapsed();
    assert!(!String::from_utf8_lossy(&seen).contains("second"));
    stream.read_to_end(&mut seen).unwrap();
    let all_at = started.elapsed();
    assert!(String::from_utf8_lossy(&seen).contains("second"));
    assert!(
        all_at - first_at >= Duration::from_millis(400),
        "first {first_at:?}, all {all_at:?}"
    );
}

#[test]
fn upstream_failures_are_502_and_504() {
    // Nothing listens on this port once the listener is dropped.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = Server::start(&["--upstream", &format!("http://{closed}")]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    let r = server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None);
    assert_eq!(r.error(), (502, "upstream_unavailable".into()));

    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &["--upstream-timeout", "1s"]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    let started = Instant::now();
    let r = server.send(
        "GET",
        "/api/v1/records/slow",
        &[("X-Sigma-ApiKey", &raw)],
        None,
    );
    assert_eq!(r.error(), (504, "upstream_timeout".into()));
    assert!(started.elapsed() < Duration::from_secs(4));

    let server = Server::start(&[]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    let r = server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None);
    assert_eq!(r.error(), (502, "no_upstream".into()));
}

#[test]
fn upstream_connections_are_reused() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let (_, raw) = server.create_key("acme", "k", &["read", "update-data"]);
    for i in 0..10 {
        // Each client request on its own connection, with and without a body.
        let body = format!("body {i}");
        let r = if i % 2 == 0 {
            server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None)
        } else {
            server.send(
                "POST",
                "/api/v1/records",
                &[("X-Sigma-ApiKey", &raw)],
                Some(body.as_bytes()),
            )
        };
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let hits = upstream.hits.load(std::sync::atomic::Ordering::SeqCst);
    let connections = upstream
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(hits, 10);
    assert!(
        connections <= 2,
        "{connections} upstream connections for 10 sequential requests"
    );
}

#[test]
fn keep_alive_connections_serve_many_requests() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let (_, raw) = server.create_key("acme", "k", &["read"]);
    let stream = TcpStream::connect(server.addr).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for i in 0..5 {
        let path = if i % 2 == 0 {
            "/api/v1/records"
        } else {
            "/api/v1/widgets"
        };
        write!(
            writer,
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Sigma-ApiKey: {raw}\r\n\r\n"
        )
        .unwrap();
        let r = read_reply(&mut reader, false);
        assert_eq!(r.status, if i % 2 == 0 { 200 } else { 404 });
    }
}

#[test]
fn a_reused_instance_never_carries_one_request_into_the_next() {
    let upstream = Upstream::start();
    let server = Server::with_upstream(&upstream, &[]);
    let (id, raw) = server.create_key("acme", "k", &["read"]);
    for _ in 0..5 {
        let ok = server.send("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &raw)], None);
        assert_eq!(ok.json()["headers"]["x-sigma-key-id"], json!([id]));
        // Sequential requests run on warm instances: no credential must stay no credential.
        let anonymous = server.send("GET", "/api/v1/records", &[], None);
        assert_eq!(anonymous.error(), (401, "unauthenticated".into()));
    }
    std::thread::sleep(Duration::from_millis(200));
    let logs = server.logs();
    let anonymous: Vec<&str> = logs.lines().filter(|l| l.contains("status=401")).collect();
    assert_eq!(anonymous.len(), 5, "{logs}");
    for line in anonymous {
        assert!(
            line.contains(r#"key_id="-""#) && line.contains(r#"tenant="-""#),
            "{line}"
        );
    }
}
