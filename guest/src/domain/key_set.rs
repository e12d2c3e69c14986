//! An identity provider's public keys (a JWK Set, RFC 7517), for Bearer
//! tokens signed with RS256, ES256 or EdDSA. Which key checks a token, and
//! with which algorithm, is decided here from the key alone: a token's
//! header only picks a key by `kid`, and must then name the algorithm that
//! key's type (and its `alg`, when it declares one) allows.

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The algorithms a key set's keys sign with, one per key type.
pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// One usable key.
pub struct SetKey {
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The usable signing keys of a JWK Set.
pub struct KeySet {
    keys: Vec<SetKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<Option<&str>> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Reads a JWK Set. Keys for encryption, symmetric keys (`oct`: a
    /// published secret would let anyone sign) and other curves are left
    /// out; a usable key that does not parse fails the whole set, as does a
    /// set with no usable key.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_str(text).map_err(|e| format!("it is not a JWK Set ({e})"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Algorithm::EdDSA
                }
                _ => continue,
            };
            // A key that declares its algorithm is used with that one only.
            if let Some(declared) = &jwk.common.key_algorithm
                && !declares(declared, alg)
            {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                format!(
                    "key {} is not a valid {alg:?} key ({e})",
                    jwk.common.key_id.as_deref().unwrap_or("without kid")
                )
            })?;
            keys.push(SetKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("it has no RS256, ES256 or EdDSA signing key".into());
        }
        Ok(KeySet { keys })
    }

    /// The key that checks a token whose header names `kid` and `alg`: the
    /// key with that `kid` (a token without one only when the set has one
    /// key), and only if `alg` is the algorithm that key verifies.
    pub fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<&SetKey, &'static str> {
        let key = match (kid, self.keys.as_slice()) {
            (Some(kid), keys) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or("its kid names no key of the identity provider")?,
            (None, [only]) => only,
            (None, _) => return Err("it names no key (kid), and the key set has several"),
        };
        if key.alg != alg {
            return Err("its alg does not fit the key its kid names");
        }
        Ok(key)
    }
}

fn declares(declared: &KeyAlgorithm, alg: Algorithm) -> bool {
    matches!(
        (declared, alg),
        (KeyAlgorithm::RS256, Algorithm::RS256)
            | (KeyAlgorithm::ES256, Algorithm::ES256)
            | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
    )
}

/// Where the current key set comes from: asked each time a token needs it,
/// since the host may replace the set at any time (rotation).
#[derive(Clone, Default)]
pub struct KeySetSource(Option<Arc<dyn Fn() -> Option<Arc<KeySet>> + Send + Sync>>);

impl KeySetSource {
    /// No key set.
    pub const NONE: KeySetSource = KeySetSource(None);

    pub fn new(current: impl Fn() -> Option<Arc<KeySet>> + Send + Sync + 'static) -> KeySetSource {
        KeySetSource(Some(Arc::new(current)))
    }

    /// Always the same set.
    pub fn fixed(set: KeySet) -> KeySetSource {
        let set = Arc::new(set);
        KeySetSource::new(move || Some(set.clone()))
    }

    /// The set to check a token with now; `None`: no key set is configured
    /// (or the configured one is unusable), so only HS256 tokens pass.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.0.as_ref().and_then(|current| current())
    }
}

impl std::fmt::Debug for KeySetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "KeySetSource(configured)"
        } else {
            "KeySetSource(none)"
        })
    }
}

/// Key pairs for tests (shared with the host's end-to-end tests).
#[cfg(test)]
#[path = "../../../tests/jwt_keys.rs"]
pub(crate) mod test_keys;

#[cfg(test)]
mod tests {
    use super::test_keys::generate;
    use super::*;
    use crate::domain::error::ErrorCode;
    use crate::domain::jwt::{Principal, TokenRules, verify};
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        crate::domain::time::now_millis() / 1000
    }

    fn token(
        alg: Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
        claims: serde_json::Value,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, &claims, key).unwrap()
    }

    fn claims() -> serde_json::Value {
        json!({"tenant": "acme", "sub": "idp-user", "exp": now() + 300, "iss": "https://idp.example/", "aud": "sigma"})
    }

    fn rules<'a>(source: &'a KeySetSource) -> TokenRules<'a> {
        TokenRules {
            secret: Some(SECRET),
            key_set: source,
            issuer: Some("https://idp.example/"),
            audience: Some("sigma"),
            tenant_claim: "tenant",
            max_lifetime_secs: 86_400,
        }
    }

    fn set_of(jwks: &[&serde_json::Value]) -> KeySetSource {
        KeySetSource::fixed(KeySet::parse(&json!({ "keys": jwks }).to_string()).unwrap())
    }

    #[test]
    fn rs256_es256_and_eddsa_tokens_pass_with_the_key_their_kid_names() {
        let keys: Vec<_> = [
            (Algorithm::RS256, "r"),
            (Algorithm::ES256, "e"),
            (Algorithm::EdDSA, "d"),
        ]
        .into_iter()
        .map(|(alg, kid)| (alg, kid, generate(alg, kid)))
        .collect();
        let source = set_of(&keys.iter().map(|(_, _, (_, jwk))| jwk).collect::<Vec<_>>());
        for (alg, kid, (key, _)) in &keys {
            let t = token(*alg, Some(kid), key, claims());
            assert_eq!(
                verify(&t, &rules(&source)),
                Ok(Principal {
                    tenant: "acme".into(),
                    subject: Some("idp-user".into())
                }),
                "{alg:?}"
            );
            // Another key's kid: refused, whatever the header says.
            for (_, other, _) in keys.iter().filter(|(_, k, _)| k != kid) {
                let t = token(*alg, Some(other), key, claims());
                assert_eq!(
                    verify(&t, &rules(&source)).map_err(|e| e.code),
                    Err(ErrorCode::InvalidToken)
                );
            }
        }
        // HS256 tokens with the server's secret keep working beside the set.
        let hs = token(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(SECRET),
            json!({"tenant": "acme", "exp": now() + 60}),
        );
        assert!(verify(&hs, &rules(&source)).is_ok());
    }

    #[test]
    fn a_token_cannot_choose_its_algorithm() {
        let (rsa, rsa_jwk) = generate(Algorithm::RS256, "r");
        let source = set_of(&[&rsa_jwk]);
        let refused = |t: &str| {
            verify(t, &rules(&source)).map_err(|e| e.code) == Err(ErrorCode::InvalidToken)
        };
        // HS256 signed with the public key's bytes as the secret.
        for public in [rsa_jwk["n"].as_str().unwrap(), &rsa_jwk.to_string()] {
            let forged = token(
                Algorithm::HS256,
                Some("r"),
                &EncodingKey::from_secret(public.as_bytes()),
                claims(),
            );
            assert!(refused(&forged));
        }
        // An RSA key named by an ES256 or PS256 header.
        let (ec, _) = generate(Algorithm::ES256, "x");
        assert!(refused(&token(Algorithm::ES256, Some("r"), &ec, claims())));
        assert!(refused(&token(Algorithm::PS256, Some("r"), &rsa, claims())));
        assert!(refused(&token(Algorithm::RS384, Some("r"), &rsa, claims())));
        // Unknown kid; no kid is fine only with a one-key set.
        assert!(refused(&token(
            Algorithm::RS256,
            Some("nope"),
            &rsa,
            claims()
        )));
        assert!(
            verify(
                &token(Algorithm::RS256, None, &rsa, claims()),
                &rules(&source)
            )
            .is_ok()
        );
        let (_, other) = generate(Algorithm::ES256, "e");
        let two = set_of(&[&rsa_jwk, &other]);
        assert_eq!(
            verify(&token(Algorithm::RS256, None, &rsa, claims()), &rules(&two))
                .map_err(|e| e.code),
            Err(ErrorCode::InvalidToken)
        );
        // Without a key set, only HS256 passes.
        let none = KeySetSource::NONE;
        assert_eq!(
            verify(
                &token(Algorithm::RS256, Some("r"), &rsa, claims()),
                &rules(&none)
            )
            .map_err(|e| e.code),
            Err(ErrorCode::InvalidToken)
        );
    }

    #[test]
    fn a_key_that_declares_its_alg_is_used_with_it_only_and_one_without_by_its_type() {
        let (rsa, mut declared) = generate(Algorithm::RS256, "r");
        // Entra publishes RSA keys without alg: the type decides.
        declared.as_object_mut().unwrap().remove("alg");
        assert!(
            verify(
                &token(Algorithm::RS256, Some("r"), &rsa, claims()),
                &rules(&set_of(&[&declared]))
            )
            .is_ok()
        );
        // An RSA key that says ES256 is no usable key at all.
        declared["alg"] = "ES256".into();
        assert!(KeySet::parse(&json!({"keys": [declared]}).to_string()).is_err());
        // Symmetric and encryption keys are never used.
        let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "o"});
        assert!(KeySet::parse(&json!({"keys": [oct]}).to_string()).is_err());
        let (_, mut enc) = generate(Algorithm::ES256, "e");
        enc["use"] = "enc".into();
        assert!(KeySet::parse(&json!({"keys": [enc]}).to_string()).is_err());
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "RSA", "n": "!", "e": "AQAB", "kid": "r"}]}"#,
        ] {
            assert!(KeySet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issuer_audience_expiry_and_tenant_claim_are_checked() {
        let (key, jwk) = generate(Algorithm::ES256, "e");
        let source = set_of(&[&jwk]);
        let with = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims();
            change(&mut c);
            verify(
                &token(Algorithm::ES256, Some("e"), &key, c),
                &rules(&source),
            )
            .map_err(|e| e.code)
        };
        let invalid = Err(ErrorCode::InvalidToken);
        assert_eq!(
            with(&|c| c["iss"] = "https://evil.example/".into()),
            invalid
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            invalid
        );
        assert_eq!(with(&|c| c["aud"] = "other".into()), invalid);
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            invalid
        );
        assert_eq!(with(&|c| c["exp"] = (now() - 120).into()), invalid);
        assert_eq!(with(&|c| c["exp"] = (now() + 10 * 86_400).into()), invalid);
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("tenant");
            }),
            invalid
        );
        // A provider's own claim names the tenant.
        let mut custom = rules(&source);
        custom.tenant_claim = "https://sigma.example/tenant";
        let mut c = claims();
        c["https://sigma.example/tenant"] = "globex".into();
        let t = token(Algorithm::ES256, Some("e"), &key, c);
        assert_eq!(
            verify(&t, &custom).map(|p| p.tenant),
            Ok("globex".to_owned())
        );
        // Without issuer and audience configured, neither is required.
        let mut open = rules(&source);
        open.issuer = None;
        open.audience = None;
        let t = token(
            Algorithm::ES256,
            Some("e"),
            &key,
            json!({"tenant": "acme", "exp": now() + 60}),
        );
        assert!(verify(&t, &open).is_ok());
    }
}
