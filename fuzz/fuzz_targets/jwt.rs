//! The Bearer token parser: never a panic; an accepted token names a tenant
//! that is safe to send upstream as a header. Tokens are checked as the
//! server does with `--jwt-jwks`: HS256 with the secret, or against a key
//! set (one public P-256 key, whose private half nobody kept).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sigma_keys_guest::domain::key_set::{KeySet, KeySetSource};
use sigma_keys_guest::domain::{jwt, keys};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const KEY_SET: &str = r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "xbbIFQi9CRb1lUzxgm54eRCoHg3G1uvnUDxD1ubWpQ8", "y": "0n4ZFJ7GJXkAWyWz81ZbptrmL3T5RXWRfNL-5nTqPbQ", "kid": "fuzz", "alg": "ES256"}]}"#;

static SOURCE: LazyLock<KeySetSource> =
    LazyLock::new(|| KeySetSource::fixed(KeySet::parse(KEY_SET).expect("the fuzz key set parses")));

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let rules = jwt::TokenRules {
        key_set: &SOURCE,
        issuer: Some("https://idp.fuzz/"),
        audience: Some("sigma"),
        ..jwt::TokenRules::hs256(SECRET, 86_400)
    };
    if let Ok(principal) = jwt::verify(token, &rules) {
        assert!(keys::is_valid_tenant(&principal.tenant));
    }
});
