//! Key pairs for tests, made by `openssl` (Debian's `openssl` package), so
//! that no test carries a private key: the signing key, and its public JWK.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl (Debian's openssl package) makes the tests' key pairs");
    if let Some(input) = input {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed");
    out.stdout
}

/// A new key pair for `alg`: the signing key, and its public JWK with `kid`.
pub fn generate(alg: Algorithm, kid: &str) -> (EncodingKey, serde_json::Value) {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let pem = match alg {
        Algorithm::RS256 => openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            None,
        ),
        Algorithm::ES256 => openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            None,
        ),
        Algorithm::EdDSA => openssl(&["genpkey", "-algorithm", "ED25519"], None),
        other => panic!("no test keys for {other:?}"),
    };
    // The public key's SubjectPublicKeyInfo ends with the point (EC: 0x04,
    // x, y) or the key (Ed25519: x).
    let public = openssl(&["pkey", "-pubout", "-outform", "DER"], Some(&pem));
    let pkcs8 = || {
        openssl(
            &["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"],
            Some(&pem),
        )
    };
    let (key, mut jwk) = match alg {
        Algorithm::RS256 => {
            let der = openssl(&["rsa", "-traditional", "-outform", "DER"], Some(&pem));
            let key = EncodingKey::from_rsa_der(&der);
            let jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
            (key, jwk)
        }
        Algorithm::ES256 => {
            let xy = &public[public.len() - 64..];
            let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&xy[..32]), "y": b64(&xy[32..]), "alg": "ES256", "use": "sig"});
            (EncodingKey::from_ec_der(&pkcs8()), jwk)
        }
        _ => {
            let x = &public[public.len() - 32..];
            let jwk =
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(x), "alg": "EdDSA", "use": "sig"});
            (EncodingKey::from_ed_der(&pkcs8()), jwk)
        }
    };
    jwk["kid"] = kid.into();
    (key, jwk)
}
