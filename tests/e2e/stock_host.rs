//! The component on a host nobody here wrote: the stock `wasmtime serve`,
//! with the service composed with the `wasi:keyvalue` store adapter so that
//! it imports only standard WASI. Needs `scripts/tools.sh` (run by the test
//! command) for the wasmtime CLI and wac.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::Digest;

use crate::support::{Upstream, request};

const WASMTIME: &str = "tools/wasmtime-48.0.8/bin/wasmtime";
const WAC: &str = "tools/wac-0.12.0/bin/wac";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn tool(rel: &str) -> PathBuf {
    let path = repo().join(rel);
    assert!(
        path.exists(),
        "{} is missing: run scripts/tools.sh first",
        path.display()
    );
    path
}

/// A raw key with a valid checksum, built the documented way.
fn raw_key(random: &str) -> String {
    assert_eq!(random.len(), 29);
    let body = format!("sigma_sk_live_{random}");
    let mut n = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; 7];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
    }
    format!("{body}{}", String::from_utf8(digits.to_vec()).unwrap())
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_composed_component_runs_under_wasmtime_serve() {
    let dir = tempfile::tempdir().unwrap();
    let composed = dir.path().join("sigma_keys_keyvalue.wasm");
    let status = Command::new(tool(WAC))
        .arg("plug")
        .arg(env!("SIGMA_KEYS_COMPONENT_WASM"))
        .arg("--plug")
        .arg(env!("SIGMA_KEYS_KEYVALUE_ADAPTER_WASM"))
        .arg("-o")
        .arg(&composed)
        .status()
        .unwrap();
    assert!(status.success(), "wac plug failed");

    // Seed one key the way an operator would: the record under its hash, and the id index.
    let raw = raw_key("abc123def456ghi789jkl012mno34");
    let hash: String = sha2::Sha256::digest(raw.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let record = "id=apikey-seeded0000000000&tenant=acme&name=Seeded&permissions=read+update-data&created-at=1772971200000&last-used-at=&deactivated-at=";
    let upstream = Upstream::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(tool(WASMTIME))
        .arg("serve")
        .args(["-Scli", "-Skeyvalue", "-Sconfig"])
        .arg(format!(
            "-Skeyvalue-in-memory-data=sigma-keys/key/{hash}={record}"
        ))
        .arg(format!(
            "-Skeyvalue-in-memory-data=sigma-keys/id/apikey-seeded0000000000={hash}"
        ))
        .arg(format!("-Sconfig-var=upstream={}", upstream.url()))
        .arg("-Sconfig-var=jwt-secret=0123456789abcdef0123456789abcdef")
        .arg("--addr")
        .arg(addr.to_string())
        .arg(&composed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Serve(child);
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "wasmtime serve did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let verify = |body: serde_json::Value| {
        request(
            addr,
            "POST",
            "/api/v1/api-keys/verify",
            &[],
            Some(body.to_string().as_bytes()),
        )
    };
    let ok = verify(json!({"key": raw, "permission": "update-data"}));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.json(),
        json!({"valid": true, "keyId": "apikey-seeded0000000000", "tenant": "acme", "permissions": ["read", "update-data"], "permission": "update-data"})
    );
    let denied = verify(json!({"key": raw, "permission": "delete-model"}));
    assert_eq!(
        denied.json(),
        json!({"valid": false, "code": "insufficient_permission"})
    );

    let forwarded = request(
        addr,
        "GET",
        "/api/v1/records?x=1",
        &[
            ("X-Sigma-ApiKey", &raw),
            ("X-Sigma-Tenant", "globex"),
            ("X-Custom", "kept"),
        ],
        None,
    );
    assert_eq!(forwarded.status, 200, "{}", forwarded.text());
    let echo = forwarded.json();
    assert_eq!(echo["path"], "/pim/api/v1/records?x=1");
    assert_eq!(echo["headers"]["x-sigma-tenant"], json!(["acme"]));
    assert_eq!(echo["headers"]["x-custom"], json!(["kept"]));
    assert!(echo["headers"].get("x-sigma-apikey").is_none());
    assert_eq!(
        echo["headers"]["x-sigma-key-id"],
        json!(["apikey-seeded0000000000"])
    );

    let bad = request(
        addr,
        "GET",
        "/api/v1/records",
        &[("X-Sigma-ApiKey", &raw_key("zzz123def456ghi789jkl012mno34"))],
        None,
    );
    assert_eq!(bad.error(), (401, "invalid_api_key".into()));
    let management = request(addr, "GET", "/api/v1/api-keys", &[], None);
    assert_eq!(management.error(), (401, "unauthenticated".into()));
}
