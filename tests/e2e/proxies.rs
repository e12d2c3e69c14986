//! sigma-keys behind the real nginx and Caddy, each started with the config
//! `docs/proxies.md` documents (only the addresses changed), and the
//! Traefik and Envoy contracts tested directly over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Case, Server, Upstream, request};

/// The addresses the documented configs use, replaced by the tests' own.
const DOC_SIGMA: &str = "127.0.0.1:8081";
const DOC_UPSTREAM: &str = "127.0.0.1:9000";

/// The first fenced block of `lang` in `docs/proxies.md`.
fn documented(lang: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/proxies.md");
    let doc = std::fs::read_to_string(&path).expect("docs/proxies.md");
    let start = doc
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("no ```{lang} block in docs/proxies.md"));
    let body = &doc[start + lang.len() + 4..];
    body[..body.find("```").expect("closing fence")].to_owned()
}

/// The documented config with the tests' addresses; every placeholder must
/// be there, so the doc cannot drift from what is tested.
fn localize(
    config: &str,
    listen: (&str, String),
    sigma: SocketAddr,
    upstream: SocketAddr,
) -> String {
    for placeholder in [listen.0, DOC_SIGMA, DOC_UPSTREAM] {
        assert!(
            config.contains(placeholder),
            "the documented config lost {placeholder:?}"
        );
    }
    config
        .replace(listen.0, &listen.1)
        .replace(DOC_SIGMA, &sigma.to_string())
        .replace(DOC_UPSTREAM, &upstream.to_string())
}

fn free_port() -> SocketAddr {
    // The proxies take a port, not port 0: take a free one and let it go.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A proxy process serving the documented config from a temp dir.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Proxy {
    fn nginx(sigma: SocketAddr, upstream: SocketAddr) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_port();
        let server = localize(
            &documented("nginx"),
            ("listen 8000;", format!("listen {addr};")),
            sigma,
            upstream,
        );
        let root = dir.path().display();
        let conf = format!(
            "worker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n client_body_temp_path {root}/body;\n proxy_temp_path {root}/proxy;\n\
             fastcgi_temp_path {root}/fastcgi;\n uwsgi_temp_path {root}/uwsgi;\n scgi_temp_path {root}/scgi;\n\
             {server}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run /usr/sbin/nginx (scripts/proxies.sh installs it)");
        Proxy { child, addr, dir }.started("error.log")
    }

    fn caddy(sigma: SocketAddr, upstream: SocketAddr) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_port();
        let site = localize(
            &documented("caddyfile"),
            (":8000 {", format!("http://{addr} {{")),
            sigma,
            upstream,
        );
        // No admin endpoint, no certificates: only the documented site.
        let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}");
        let path = dir.path().join("Caddyfile");
        std::fs::write(&path, conf).expect("Caddyfile");
        let log = std::fs::File::create(dir.path().join("caddy.log")).expect("log");
        let child = Command::new("/usr/bin/caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run /usr/bin/caddy (scripts/proxies.sh installs it)");
        Proxy { child, addr, dir }.started("caddy.log")
    }

    fn started(mut self, log: &str) -> Proxy {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_err() {
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
                panic!("the proxy did not start on {}: {log}", self.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM lets nginx's master stop its workers; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// What the echo upstream saw of one request.
fn seen(body: &Value, header: &str) -> Vec<String> {
    body["headers"][header]
        .as_array()
        .map(|values| {
            values
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The story every proxy must tell the same way.
fn protects_an_api(name: &str, start: fn(SocketAddr, SocketAddr) -> Proxy) {
    let upstream = Upstream::start();
    let server = Server::start(&["--auth-listen", "127.0.0.1:0"]);
    assert_ne!(server.auth_addr, server.addr);
    let proxy = start(server.auth_addr, upstream.addr);
    let (id, reader) = server.create_key("acme", "reader", &["read"]);
    let go = |method: &str, path: &str, headers: &[(&str, &str)]| {
        request(proxy.addr, method, path, headers, None)
    };
    let hits = || upstream.hits.load(Ordering::SeqCst);

    // Allowed: the upstream gets the URI as sent and our identity, not the key.
    let r = go(
        "GET",
        "/api/v1/records/42?q=a%20b",
        &[
            ("X-Sigma-ApiKey", &reader),
            ("X-Sigma-Tenant", "evil"),
            ("X-Sigma-Subject", "evil"),
            ("X-Sigma-Permission", "delete-model"),
            ("X_Sigma_Tenant", "evil"),
        ],
    );
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    let body = r.json();
    assert_eq!(body["path"], "/api/v1/records/42?q=a%20b", "{name}");
    assert_eq!(seen(&body, "x-sigma-tenant"), ["acme"], "{name}: {body}");
    assert_eq!(seen(&body, "x-sigma-key-id"), [id.as_str()], "{name}");
    assert_eq!(seen(&body, "x-sigma-permission"), ["read"], "{name}");
    for gone in ["x-sigma-subject", "x-sigma-apikey", "x_sigma_tenant"] {
        assert!(
            seen(&body, gone).is_empty(),
            "{name} passed on {gone}: {body}"
        );
    }

    // A Bearer token: tenant and subject, and the token is kept.
    let bearer = server.bearer("acme");
    let r = go(
        "DELETE",
        "/api/v1/schemas/s",
        &[("Authorization", &bearer), ("X-Sigma-Key-Id", "evil")],
    );
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    let body = r.json();
    assert_eq!(seen(&body, "x-sigma-tenant"), ["acme"], "{name}");
    assert_eq!(seen(&body, "x-sigma-subject"), ["e2e"], "{name}");
    assert!(seen(&body, "x-sigma-key-id").is_empty(), "{name}: {body}");

    // A write with a body: the proxy asks about it and passes the body on.
    let (_, writer) = server.create_key("acme", "writer", &["update-data"]);
    let body = br#"{"sku": "A-1"}"#;
    let r = request(
        proxy.addr,
        "POST",
        "/api/v1/records",
        &[
            ("X-Sigma-ApiKey", &writer),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    );
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    let seen_body = r.json();
    assert_eq!(seen_body["body"], r#"{"sku": "A-1"}"#, "{name}");
    assert_eq!(
        seen(&seen_body, "x-sigma-permission"),
        ["update-data"],
        "{name}"
    );

    // Refusals: the real status and code, and nothing reaches the upstream.
    let before = hits();
    let cases: Vec<Case<'_, &str>> = vec![
        ("GET", "/api/v1/records", vec![], 401, "unauthenticated"),
        (
            "GET",
            "/api/v1/records",
            vec![
                ("X-Sigma-ApiKey", "sigma_sk_live_nope"),
                ("X-Sigma-Tenant", "acme"),
            ],
            401,
            "invalid_api_key",
        ),
        (
            "POST",
            "/api/v1/records",
            vec![("X-Sigma-ApiKey", &reader)],
            403,
            "insufficient_permission",
        ),
        (
            "GET",
            "/api/v1/nothing",
            vec![("X-Sigma-ApiKey", &reader)],
            404,
            "unknown_resource",
        ),
        (
            "GET",
            "/api/v1/records?_method=DELETE",
            vec![("X-Sigma-ApiKey", &reader)],
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/api/v1/records",
            vec![("X-Sigma-ApiKey", &reader), ("Authorization", &bearer)],
            400,
            "ambiguous_credentials",
        ),
    ];
    for (method, path, headers, status, code) in cases {
        let r = go(method, path, &headers);
        assert_eq!(
            r.error(),
            (status, code.to_owned()),
            "{name} {method} {path}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"), "{name}");
        if code == "unauthenticated" {
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer"),
                "{name} {path}"
            );
        }
    }
    assert_eq!(
        hits(),
        before,
        "{name}: a refused request reached the upstream"
    );

    // A deactivated key is refused through the proxy at once.
    let off = server.send(
        "POST",
        &format!("/api/v1/api-keys/{id}/deactivate"),
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(off.status, 200);
    let r = go("GET", "/api/v1/records", &[("X-Sigma-ApiKey", &reader)]);
    assert_eq!(r.error(), (401, "api_key_deactivated".to_owned()), "{name}");
    assert_eq!(hits(), before, "{name}");

    // The proxy's requests were checked and logged as the gateway's are.
    let key = server.send(
        "GET",
        &format!("/api/v1/api-keys/{id}"),
        &[("Authorization", &bearer)],
        None,
    );
    assert!(
        key.json()["lastUsedAt"].is_string(),
        "{name}: {}",
        key.text()
    );
    assert!(
        server.logs().contains(&id),
        "{name}: the request log names no key"
    );
}

#[test]
fn nginx_protects_an_api_with_the_documented_config() {
    protects_an_api("nginx", Proxy::nginx);
}

#[test]
fn caddy_protects_an_api_with_the_documented_config() {
    protects_an_api("caddy", Proxy::caddy);
}

#[test]
fn auth_listen_keeps_the_endpoints_apart() {
    let server = Server::start(&["--auth-listen", "127.0.0.1:0"]);
    let (_, key) = server.create_key("acme", "k", &["read"]);
    let ask = [
        ("X-Sigma-ApiKey", key.as_str()),
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Uri", "/api/v1/records"),
    ];
    let public = request(server.addr, "GET", "/_sigma/auth/forward", &ask, None);
    assert_eq!(public.error(), (404, "unknown_resource".to_owned()));
    let private = request(server.auth_addr, "GET", "/_sigma/auth/forward", &ask, None);
    assert_eq!((private.status, private.body.len()), (200, 0));
    let bearer = server.bearer("acme");
    let listing = request(
        server.auth_addr,
        "GET",
        "/api/v1/api-keys",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(listing.error(), (404, "unknown_resource".to_owned()));
    // Without the flag, one listener serves both.
    let together = Server::start(&[]);
    assert_eq!(together.auth_addr, together.addr);
    let (_, key) = together.create_key("acme", "k", &["read"]);
    let ask = [
        ("X-Sigma-ApiKey", key.as_str()),
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Uri", "/api/v1/records"),
    ];
    let r = request(together.addr, "GET", "/_sigma/auth/forward", &ask, None);
    assert_eq!(r.status, 200);
}

/// Traefik's ForwardAuth, as its documentation describes the request: GET
/// to the address, the client's headers, and X-Forwarded-Method, -Proto,
/// -Host, -Uri and -For.
#[test]
fn traefik_forward_auth_contract() {
    let server = Server::start(&[]);
    let (id, key) = server.create_key("acme", "k", &["read", "update-data"]);
    let traefik = |method: &str, uri: &str, key: &str| {
        request(
            server.addr,
            "GET",
            "/_sigma/auth/forward",
            &[
                ("X-Sigma-ApiKey", key),
                ("Accept", "application/json"),
                ("X-Forwarded-Method", method),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "pim.example"),
                ("X-Forwarded-Uri", uri),
                ("X-Forwarded-For", "203.0.113.9"),
            ],
            None,
        )
    };
    let ok = traefik("PATCH", "/api/v1/records/7", &key);
    assert_eq!((ok.status, ok.body.len()), (200, 0));
    assert_eq!(ok.header("x-sigma-tenant"), Some("acme"));
    assert_eq!(ok.header("x-sigma-key-id"), Some(id.as_str()));
    assert_eq!(ok.header("x-sigma-permission"), Some("update-data"));
    // Named, and empty: Traefik removes the client's copy and sends it empty.
    assert_eq!(ok.header("x-sigma-subject"), Some(""));
    let refused = traefik("DELETE", "/api/v1/records/7", &key);
    assert_eq!(refused.error(), (403, "insufficient_permission".to_owned()));
    assert_eq!(refused.header("x-sigma-tenant"), None);
    let bad = traefik("GET", "/api/v1/records", "sigma_sk_live_nope");
    assert_eq!(bad.error(), (401, "invalid_api_key".to_owned()));
    let none = traefik("GET", "/api/v1/records", "");
    assert_eq!(none.error(), (401, "invalid_api_key".to_owned()));
    // Traefik without X-Forwarded-Uri is misconfigured: never an allow.
    let missing = request(
        server.addr,
        "GET",
        "/_sigma/auth/forward",
        &[("X-Sigma-ApiKey", &key), ("X-Forwarded-Method", "GET")],
        None,
    );
    assert_eq!(missing.error(), (400, "invalid_request".to_owned()));
}

/// Envoy's HTTP ext_authz, as its documentation describes the request: the
/// original method, `path_prefix` + the original path, the allowed headers
/// and `Content-Length: 0`.
#[test]
fn envoy_ext_authz_contract() {
    let server = Server::start(&[]);
    let (id, key) = server.create_key("acme", "k", &["read", "delete-model"]);
    let envoy = |method: &str, path: &str, key: &str| {
        request(
            server.addr,
            method,
            &format!("/_sigma/auth/envoy{path}"),
            &[
                ("X-Sigma-ApiKey", key),
                ("X-Forwarded-Proto", "https"),
                ("X-Envoy-Expected-Rq-Timeout-Ms", "1000"),
                ("Content-Length", "0"),
            ],
            None,
        )
    };
    let ok = envoy("DELETE", "/api/v1/schemas/s?force=1", &key);
    assert_eq!((ok.status, ok.body.len()), (200, 0));
    assert_eq!(ok.header("x-sigma-tenant"), Some("acme"));
    assert_eq!(ok.header("x-sigma-key-id"), Some(id.as_str()));
    assert_eq!(ok.header("x-sigma-permission"), Some("delete-model"));
    assert_eq!(
        ok.header("x-envoy-auth-headers-to-remove"),
        Some("x-sigma-apikey, x-sigma-subject")
    );
    let refused = envoy("DELETE", "/api/v1/records/1", &key);
    assert_eq!(refused.error(), (403, "insufficient_permission".to_owned()));
    assert_eq!(refused.header("x-envoy-auth-headers-to-remove"), None);
    let unknown = envoy("GET", "/api/v1/nothing", &key);
    assert_eq!(unknown.error(), (404, "unknown_resource".to_owned()));
    let nothing = envoy("GET", "", &key);
    assert_eq!(nothing.error(), (400, "invalid_request".to_owned()));
}

/// nginx's endpoint keeps to 200, 401 and 403 and says the rest in headers.
#[test]
fn nginx_auth_request_contract() {
    let server = Server::start(&[]);
    let (_, key) = server.create_key("acme", "k", &["read"]);
    let nginx = |uri: Option<&str>, key: &str| {
        let mut headers = vec![("X-Sigma-ApiKey", key), ("X-Original-Method", "GET")];
        if let Some(uri) = uri {
            headers.push(("X-Original-URI", uri));
        }
        request(server.addr, "GET", "/_sigma/auth/nginx", &headers, None)
    };
    let ok = nginx(Some("/api/v1/records"), &key);
    assert_eq!((ok.status, ok.header("x-sigma-status")), (200, Some("200")));
    for (uri, key, status, real, code) in [
        (
            Some("/api/v1/records"),
            "sigma_sk_live_nope",
            401,
            "401",
            "invalid_api_key",
        ),
        (
            Some("/api/v1/nothing"),
            key.as_str(),
            403,
            "404",
            "unknown_resource",
        ),
        (None, key.as_str(), 403, "400", "invalid_request"),
    ] {
        let r = nginx(uri, key);
        assert_eq!(r.status, status, "{uri:?}");
        assert_eq!(r.header("x-sigma-status"), Some(real), "{uri:?}");
        assert_eq!(r.header("x-sigma-error"), Some(code), "{uri:?}");
    }
}
