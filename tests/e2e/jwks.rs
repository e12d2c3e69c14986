//! Bearer tokens from an identity provider: RS256, ES256 and EdDSA tokens
//! signed by keys of a JWK Set served over HTTP (or read from a file), key
//! rotation, and every way a token could try to get past the rules.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::jwt_keys::generate;
use crate::support::Server;

const ISSUER: &str = "https://idp.test/";
const AUDIENCE: &str = "sigma-keys";

/// A JWK Set over HTTP, whose keys the test changes; counts its fetches.
struct Provider {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl Provider {
    fn start(keys: Vec<Value>) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), fetches.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                        break;
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let body = json!({"keys": *served.lock().unwrap()}).to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Provider {
            addr,
            keys,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(tenant: &str) -> Value {
    json!({"tenant": tenant, "sub": "alice@idp", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300})
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, key).expect("sign")
}

fn list(server: &Server, token: &str) -> crate::support::Reply {
    let auth = format!("Bearer {token}");
    server.send("GET", "/api/v1/api-keys", &[("Authorization", &auth)], None)
}

#[test]
fn identity_provider_tokens_from_a_key_set_url() {
    let (rsa, rsa_jwk) = generate(Algorithm::RS256, "rsa-1");
    let (ec, ec_jwk) = generate(Algorithm::ES256, "ec-1");
    let (ed, ed_jwk) = generate(Algorithm::EdDSA, "ed-1");
    let provider = Provider::start(vec![rsa_jwk.clone(), ec_jwk, ed_jwk]);
    let url = provider.url();
    let server = Server::start(&[
        "--jwt-jwks",
        &url,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]);
    assert_eq!(
        provider.fetches.load(Ordering::SeqCst),
        1,
        "fetched at start"
    );

    // Each algorithm, and a key created by such a token is attributed to its subject.
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", &rsa),
        (Algorithm::ES256, "ec-1", &ec),
        (Algorithm::EdDSA, "ed-1", &ed),
    ] {
        let r = list(&server, &token(alg, kid, key, &claims("acme")));
        assert_eq!(r.status, 200, "{alg:?}: {}", r.text());
    }
    let auth = format!(
        "Bearer {}",
        token(Algorithm::ES256, "ec-1", &ec, &claims("acme"))
    );
    let body = br#"{"name": "from the IdP", "permissions": ["read"]}"#;
    let r = server.send(
        "POST",
        "/api/v1/api-keys",
        &[("Authorization", &auth)],
        Some(body),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let events = server.send(
        "GET",
        "/api/v1/api-keys/events",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(events.json()["events"][0]["actor"]["subject"], "alice@idp");
    // The server's own HS256 tokens keep working beside the set.
    assert_eq!(list(&server, &server.token("acme")).status, 200);

    // Rotation: a new key at the provider works with its first token.
    let (rotated, rotated_jwk) = generate(Algorithm::RS256, "rsa-2");
    provider.keys.lock().unwrap().push(rotated_jwk);
    let r = list(
        &server,
        &token(Algorithm::RS256, "rsa-2", &rotated, &claims("acme")),
    );
    assert_eq!(r.status, 200, "rotated key: {}", r.text());
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 2);

    // Refused, each with 401 invalid_token.
    let mut wrong_issuer = claims("acme");
    wrong_issuer["iss"] = "https://evil.test/".into();
    let mut wrong_audience = claims("acme");
    wrong_audience["aud"] = "another-api".into();
    let (stranger, _) = generate(Algorithm::ES256, "ec-1");
    let public_as_secret = EncodingKey::from_secret(rsa_jwk["n"].as_str().unwrap().as_bytes());
    for (why, t) in [
        (
            "wrong issuer",
            token(Algorithm::RS256, "rsa-1", &rsa, &wrong_issuer),
        ),
        (
            "wrong audience",
            token(Algorithm::RS256, "rsa-1", &rsa, &wrong_audience),
        ),
        (
            "HS256 with the public key as secret",
            token(
                Algorithm::HS256,
                "rsa-1",
                &public_as_secret,
                &claims("acme"),
            ),
        ),
        (
            "ES256 header on an RSA key",
            token(Algorithm::ES256, "rsa-1", &ec, &claims("acme")),
        ),
        (
            "signed by another key with a known kid",
            token(Algorithm::ES256, "ec-1", &stranger, &claims("acme")),
        ),
        (
            "unknown kid",
            token(Algorithm::ES256, "ec-9", &ec, &claims("acme")),
        ),
    ] {
        let r = list(&server, &t);
        assert_eq!(r.error(), (401, "invalid_token".to_owned()), "{why}");
    }
    // The unknown kid came within a minute of the last such fetch: no new fetch.
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 2);
    assert!(!server.logs().contains(&auth[7..]), "a token was logged");
}

#[test]
fn a_key_set_from_a_file_and_a_bad_source_stops_the_start() {
    let (ed, ed_jwk) = generate(Algorithm::EdDSA, "ed-file");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": [ed_jwk]}).to_string()).expect("write");
    let file = path.display().to_string();
    let server = Server::start(&["--jwt-jwks", &file, "--tenant-claim", "org"]);
    let mut c = claims("ignored");
    c["org"] = "globex".into();
    let r = list(&server, &token(Algorithm::EdDSA, "ed-file", &ed, &c));
    assert_eq!(r.status, 200, "{}", r.text());
    // The tenant comes from the configured claim: globex sees none of acme's keys.
    assert_eq!(r.json(), json!([]));

    std::fs::write(&path, "<html>not a key set</html>").expect("write");
    for source in [
        file.as_str(),
        "/nonexistent/jwks.json",
        "http://127.0.0.1:9/jwks.json",
    ] {
        let out = crate::support::cli()
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("k.db"))
            .args(["--jwt-jwks", source])
            .output()
            .expect("run");
        assert!(!out.status.success(), "{source} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--jwt-jwks"), "{source}: {err}");
    }
}
