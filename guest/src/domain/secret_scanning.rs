//! GitHub secret scanning's partner alerts: GitHub finds one of our keys in
//! a public place, posts it here signed with one of its keys, and we
//! deactivate it at once.
//!
//! The protocol (GitHub's "Secret scanning partner program"): the body is a
//! JSON array of `{"token", "type", "url", "source"}`; the header
//! `Github-Public-Key-Signature` is the base64 of an ASN.1 DER ECDSA P-256
//! SHA-256 signature of the exact body bytes, made with the key that
//! `Github-Public-Key-Identifier` names in GitHub's published list
//! (`{"public_keys": [{"key_identifier", "key", "is_current"}]}`).

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorCode};
use super::events::{Actor, Details, Event, EventKind, Via};
use super::keys::KeyStore;
use super::raw_key::RawKey;
use super::time::now_millis;

/// The header that names the key a request was signed with.
pub const KEY_IDENTIFIER_HEADER: &str = "github-public-key-identifier";
/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
/// Longest text kept from a report's `type`, `url` and `source`.
const FIELD_MAX_CHARS: usize = 2048;

/// GitHub's public keys, by identifier.
#[derive(Clone, Debug)]
pub struct PublicKeys(Vec<(String, VerifyingKey)>);

#[derive(Deserialize)]
struct PublishedKeys {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

impl PublicKeys {
    /// Reads the list in the format GitHub publishes at
    /// `https://api.github.com/meta/public_keys/secret_scanning`.
    pub fn parse(text: &str) -> Result<PublicKeys, String> {
        let published: PublishedKeys =
            serde_json::from_str(text).map_err(|e| format!("not GitHub's key list: {e}"))?;
        if published.public_keys.is_empty() {
            return Err("the key list holds no keys".into());
        }
        let keys = published
            .public_keys
            .into_iter()
            .map(|k| {
                VerifyingKey::from_public_key_pem(&k.key)
                    .map(|key| (k.key_identifier.clone(), key))
                    .map_err(|e| {
                        format!(
                            "key {:?} is not a P-256 public key in PEM: {e}",
                            k.key_identifier
                        )
                    })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(PublicKeys(keys))
    }

    fn named(&self, identifier: &str) -> Option<&VerifyingKey> {
        self.0
            .iter()
            .find(|(id, _)| id == identifier)
            .map(|(_, k)| k)
    }
}

fn invalid_signature(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidSignature,
        format!("The request is not signed by a known GitHub secret scanning key: {why}."),
    )
}

/// Checks that `body` was signed by the key `identifier` names.
pub fn verify(
    keys: &PublicKeys,
    identifier: Option<&[u8]>,
    signature: Option<&[u8]>,
    body: &[u8],
) -> Result<(), ApiError> {
    let identifier = identifier
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .ok_or_else(|| invalid_signature("Github-Public-Key-Identifier is missing"))?;
    let signature =
        signature.ok_or_else(|| invalid_signature("Github-Public-Key-Signature is missing"))?;
    let key = keys
        .named(identifier)
        .ok_or_else(|| invalid_signature("the key identifier is unknown"))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(signature.trim_ascii())
        .map_err(|_| invalid_signature("the signature is not base64"))?;
    let signature = Signature::from_der(&der)
        .map_err(|_| invalid_signature("the signature is not an ASN.1 DER ECDSA signature"))?;
    key.verify(body, &signature)
        .map_err(|_| invalid_signature("the signature does not match the body"))
}

/// One token GitHub found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub token: String,
    pub token_type: String,
    pub url: String,
    pub source: String,
}

/// The reports in a (verified) body.
pub fn parse_alerts(body: &[u8]) -> Result<Vec<Alert>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("The request body is not valid JSON ({e})."),
        )
    })?;
    let Value::Array(items) = value else {
        return Err(ApiError::invalid_request(
            "the body must be a JSON array of {token, type, url, source}",
        ));
    };
    items
        .iter()
        .map(|item| {
            let text = |field: &str, required: bool| match item.get(field) {
                Some(Value::String(s)) => Ok(s.chars().take(FIELD_MAX_CHARS).collect()),
                None | Some(Value::Null) if !required => Ok(String::new()),
                _ => Err(ApiError::invalid_request(format!(
                    "each report must have {field} as a string"
                ))),
            };
            Ok(Alert {
                token: match item.get("token") {
                    Some(Value::String(s)) => s.clone(),
                    _ => {
                        return Err(ApiError::invalid_request(
                            "each report must have token as a string",
                        ));
                    }
                },
                token_type: text("type", true)?,
                url: text("url", false)?,
                source: text("source", false)?,
            })
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deactivates each reported token that is one of our keys (recording a
/// `key.leaked` event) and labels every report, in order.
pub fn process(store: &dyn KeyStore, alerts: &[Alert]) -> Result<Value, ApiError> {
    let actor = Actor {
        via: Via::SecretScanning,
        subject: None,
    };
    let mut labels = Vec::with_capacity(alerts.len());
    for alert in alerts {
        let found = match RawKey::parse(&alert.token) {
            Ok(raw) => store.find_by_hash(&raw.hash())?,
            Err(_) => None,
        };
        let label = match found {
            None => "false_positive",
            Some(key) => {
                eprintln!(
                    "sigma-keys component: key {} of tenant {} reported leaked at {:?} (source {:?})",
                    key.id, key.tenant, alert.url, alert.source
                );
                if key.deactivated_at.is_none() {
                    let now = now_millis();
                    let event = Event::new(
                        &key.tenant,
                        &key.id,
                        now,
                        EventKind::Leaked,
                        &actor,
                        Details::Leaked {
                            url: alert.url.clone(),
                            source: alert.source.clone(),
                        },
                    )?;
                    store.deactivate(&key.tenant, &key.id, now, &event)?;
                }
                "true_positive"
            }
        };
        labels.push(json!({
            "token_hash": hex(&Sha256::digest(alert.token.as_bytes())),
            "token_type": alert.token_type,
            "label": label,
        }));
    }
    Ok(Value::Array(labels))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::domain::keys::{self, NewKey};
    use crate::domain::memory::MemoryStore;
    use crate::domain::permission::Permission;
    use crate::domain::random;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};

    /// A fresh key pair and its published list, as GitHub's file would hold it.
    pub fn key_pair(identifier: &str) -> (SigningKey, String) {
        let mut bytes = [0u8; 32];
        let signing = loop {
            random::fill(&mut bytes).unwrap();
            if let Ok(k) = SigningKey::from_slice(&bytes) {
                break k;
            }
        };
        let pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let list = json!({"public_keys": [
            {"key_identifier": identifier, "key": pem, "is_current": true}
        ]});
        (signing, list.to_string())
    }

    pub fn sign(key: &SigningKey, body: &[u8]) -> String {
        let signature: Signature = key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn only_the_named_key_signing_the_exact_body_passes() {
        let (signing, list) = key_pair("kid-1");
        let keys = PublicKeys::parse(&list).unwrap();
        let body = br#"[{"token":"x","type":"sigma_api_key","url":"u","source":"content"}]"#;
        let good = sign(&signing, body);
        verify(&keys, Some(b"kid-1"), Some(good.as_bytes()), body).unwrap();

        let (other, _) = key_pair("kid-2");
        let forged = sign(&other, body);
        let mut tampered = body.to_vec();
        tampered[12] = b'y';
        for (identifier, signature, body) in [
            (Some(&b"kid-1"[..]), Some(forged.as_bytes()), &body[..]),
            (Some(b"kid-1"), Some(good.as_bytes()), &tampered[..]),
            (Some(b"kid-2"), Some(good.as_bytes()), &body[..]),
            (None, Some(good.as_bytes()), &body[..]),
            (Some(b"kid-1"), None, &body[..]),
            (Some(b"kid-1"), Some(b"not base64!"), &body[..]),
            (Some(b"kid-1"), Some(b"AAAA"), &body[..]),
        ] {
            assert_eq!(
                verify(&keys, identifier, signature, body).unwrap_err().code,
                ErrorCode::InvalidSignature
            );
        }
    }

    #[test]
    fn key_lists_must_hold_p256_keys() {
        assert!(PublicKeys::parse("{}").is_err());
        assert!(PublicKeys::parse(r#"{"public_keys": []}"#).is_err());
        assert!(
            PublicKeys::parse(
                r#"{"public_keys": [{"key_identifier": "a", "key": "nope", "is_current": true}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn our_keys_are_deactivated_and_labelled_true_positive() {
        let store = MemoryStore::default();
        let new = NewKey {
            name: "ci",
            permissions: &[Permission::Read],
            expires_at: None,
        };
        let (key, raw) = keys::create(&store, "acme", &new, &Actor::cli(), 10).unwrap();
        let body = json!([
            {"token": raw.expose(), "type": "sigma_api_key", "url": "https://github.com/o/r/blob/main/.env", "source": "content"},
            {"token": "sigma_sk_live_notours", "type": "sigma_api_key", "url": "u", "source": "commit"},
            {"token": raw.expose(), "type": "sigma_api_key", "url": "u2", "source": "commit"},
        ])
        .to_string();
        let alerts = parse_alerts(body.as_bytes()).unwrap();
        let labels = process(&store, &alerts).unwrap();
        let hash = hex(&raw.hash().0);
        assert_eq!(
            labels,
            json!([
                {"token_hash": hash, "token_type": "sigma_api_key", "label": "true_positive"},
                {"token_hash": hex(&Sha256::digest(b"sigma_sk_live_notours")), "token_type": "sigma_api_key", "label": "false_positive"},
                {"token_hash": hash, "token_type": "sigma_api_key", "label": "true_positive"},
            ])
        );
        assert!(!keys::get(&store, "acme", &key.id).unwrap().active());
        let page = keys::events(&store, "acme", Some(&key.id), None, 10).unwrap();
        let kinds: Vec<_> = page.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Leaked, EventKind::Created]);
        assert_eq!(page.events[0].actor.via, Via::SecretScanning);
        assert_eq!(
            page.events[0].details.to_json(),
            json!({"url": "https://github.com/o/r/blob/main/.env", "source": "content"})
        );
        assert!(!page.events[0].to_json().to_string().contains(raw.expose()));
    }

    #[test]
    fn malformed_reports_are_refused() {
        for bad in [
            &b"{}"[..],
            b"[1]",
            b"[{\"type\": \"t\"}]",
            b"[{\"token\": 5, \"type\": \"t\"}]",
            b"[{\"token\": \"x\"}]",
        ] {
            assert_eq!(
                parse_alerts(bad).unwrap_err().code,
                ErrorCode::InvalidRequest,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_alerts(b"[").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(parse_alerts(b"[]").unwrap(), vec![]);
    }
}
