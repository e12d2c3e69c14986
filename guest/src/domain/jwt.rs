//! Bearer tokens for the management endpoints: HS256 with the server's
//! secret, or RS256, ES256 or EdDSA with a key of the identity provider's
//! key set; a tenant claim and `exp` required.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

use super::error::{ApiError, ErrorCode};
use super::key_set::{ALGORITHMS, KeySetSource};
use super::keys::{TENANT_MAX_CHARS, is_valid_tenant};

/// Leeway on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// The shortest secret the server accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// The claim that names the tenant, unless configured otherwise.
pub const DEFAULT_TENANT_CLAIM: &str = "tenant";

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub subject: Option<String>,
}

/// What a token must satisfy.
pub struct TokenRules<'a> {
    /// The HS256 secret (the server's own tokens); `None`: no HS256 token passes.
    pub secret: Option<&'a [u8]>,
    /// The identity provider's keys, asked only for a token that needs
    /// them; none: no RS256, ES256 or EdDSA token passes.
    pub key_set: &'a KeySetSource,
    /// Key-set tokens must have this `iss`, when given.
    pub issuer: Option<&'a str>,
    /// Key-set tokens must have this `aud`, when given.
    pub audience: Option<&'a str>,
    /// The claim that names the tenant in key-set tokens (HS256 tokens,
    /// which `sigma-keys token` makes, always use `tenant`).
    pub tenant_claim: &'a str,
    /// Tokens whose `exp` is further ahead are refused, so a leaked token
    /// cannot be good for centuries.
    pub max_lifetime_secs: u64,
}

impl<'a> TokenRules<'a> {
    /// The server's own tokens only.
    pub fn hs256(secret: &'a [u8], max_lifetime_secs: u64) -> TokenRules<'a> {
        TokenRules {
            secret: Some(secret),
            key_set: &KeySetSource::NONE,
            issuer: None,
            audience: None,
            tenant_claim: DEFAULT_TENANT_CLAIM,
            max_lifetime_secs,
        }
    }
}

/// Verifies a token. Its header picks the key: HS256 is checked with the
/// secret; RS256, ES256 and EdDSA with the key set's key that its `kid`
/// names, and only with the algorithm that key verifies. Any other `alg`
/// is refused.
pub fn verify(token: &str, rules: &TokenRules<'_>) -> Result<Principal, ApiError> {
    let header = decode_header(token).map_err(|_| invalid("it is not a well-formed JWT"))?;
    let secret_key;
    let key_set;
    let (key, mut validation, tenant_claim) = match header.alg {
        Algorithm::HS256 => {
            let secret = rules
                .secret
                .ok_or_else(|| invalid("this server accepts no HS256 token"))?;
            secret_key = DecodingKey::from_secret(secret);
            (
                &secret_key,
                Validation::new(Algorithm::HS256),
                DEFAULT_TENANT_CLAIM,
            )
        }
        alg if ALGORITHMS.contains(&alg) => {
            key_set = rules.key_set.current().ok_or_else(|| {
                invalid(
                    "this server has no identity provider key set, so it accepts only HS256 tokens",
                )
            })?;
            let key = key_set
                .key_for(header.kid.as_deref(), alg)
                .map_err(invalid)?;
            let mut validation = Validation::new(alg);
            let mut required = vec!["exp"];
            if let Some(issuer) = rules.issuer {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            if let Some(audience) = rules.audience {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            validation.set_required_spec_claims(&required);
            (&key.key, validation, rules.tenant_claim)
        }
        _ => {
            return Err(invalid(
                "only HS256, RS256, ES256 and EdDSA tokens are accepted",
            ));
        }
    };
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // Audiences are checked only where configured (never on HS256 tokens).
    validation.validate_aud = header.alg != Algorithm::HS256 && rules.audience.is_some();
    let data = decode::<Value>(token, key, &validation).map_err(|e| invalid(describe(e.kind())))?;
    let claims = data.claims;
    let now = super::time::now_millis() / 1000;
    let max_lifetime_secs = rules.max_lifetime_secs;
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .unwrap_or(f64::MAX);
    if exp
        > (now
            .saturating_add(max_lifetime_secs)
            .saturating_add(LEEWAY_SECS)) as f64
    {
        return Err(invalid(&format!(
            "it expires more than {max_lifetime_secs} seconds from now; ask for a shorter-lived token"
        )));
    }
    let tenant = match claims.get(tenant_claim) {
        Some(Value::String(t)) if is_valid_tenant(t) => t.clone(),
        Some(_) => {
            return Err(invalid(&format!(
                "the {tenant_claim} claim must be 1 to {TENANT_MAX_CHARS} characters of A-Z a-z 0-9 . _ : -"
            )));
        }
        None => return Err(invalid(&format!("the token has no {tenant_claim} claim"))),
    };
    let subject = match claims.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("the sub claim must be a string")),
    };
    Ok(Principal { tenant, subject })
}

fn invalid(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidToken,
        format!("The Bearer token is not valid: {why}. Get a new token and retry."),
    )
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "it has expired",
        K::ImmatureSignature => "it is not valid yet (nbf)",
        K::InvalidSignature => "its signature does not match",
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "its algorithm is not accepted",
        K::MissingRequiredClaim(_) => {
            "a required claim (exp, or the configured iss or aud) is missing"
        }
        K::InvalidClaimFormat(_) => "a claim has the wrong type",
        K::InvalidIssuer => "its issuer (iss) is not the configured one",
        K::InvalidAudience => "its audience (aud) is not the configured one",
        _ => "it is not a well-formed JWT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    /// The default `max_lifetime_secs`.
    const DAY: u64 = 24 * 60 * 60;

    fn now() -> u64 {
        crate::domain::time::now_millis() / 1000
    }

    fn sign(alg: Algorithm, claims: &Value) -> String {
        encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    /// HS256 tokens only, as before there were key sets.
    fn verify(token: &str, secret: &[u8], max_lifetime_secs: u64) -> Result<Principal, ApiError> {
        super::verify(token, &TokenRules::hs256(secret, max_lifetime_secs))
    }

    fn code_of(token: &str) -> Result<Principal, ErrorCode> {
        verify(token, SECRET, DAY).map_err(|e| e.code)
    }

    #[test]
    fn a_valid_token_names_its_tenant_and_subject() {
        let t = sign(
            Algorithm::HS256,
            &json!({"tenant": "acme", "sub": "ops", "exp": now() + 60}),
        );
        assert_eq!(
            verify(&t, SECRET, DAY),
            Ok(Principal {
                tenant: "acme".into(),
                subject: Some("ops".into())
            })
        );
        let t = sign(
            Algorithm::HS256,
            &json!({"tenant": "acme", "exp": now() + 60}),
        );
        assert_eq!(verify(&t, SECRET, DAY).unwrap().subject, None);
    }

    #[test]
    fn other_algorithms_are_refused() {
        let claims = json!({"tenant": "acme", "exp": now() + 60});
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            assert_eq!(
                code_of(&sign(alg, &claims)),
                Err(ErrorCode::InvalidToken),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64_url(format!(r#"{{"tenant":"acme","exp":{}}}"#, now() + 60).as_bytes());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert_eq!(code_of(&token), Err(ErrorCode::InvalidToken));
        }
        // An HS256 header over a forged (empty) signature.
        let header = base64_url(br#"{"alg":"HS256","typ":"JWT"}"#);
        assert_eq!(
            code_of(&format!("{header}.{body}.")),
            Err(ErrorCode::InvalidToken)
        );
    }

    fn base64_url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    #[test]
    fn wrong_secret_expiry_and_nbf_are_refused() {
        let claims = json!({"tenant": "acme", "exp": now() + 60});
        let t = sign(Algorithm::HS256, &claims);
        assert_eq!(
            verify(&t, b"another secret another secret 123", DAY).map_err(|e| e.code),
            Err(ErrorCode::InvalidToken)
        );
        let expired = sign(
            Algorithm::HS256,
            &json!({"tenant": "acme", "exp": now() - 61}),
        );
        assert_eq!(code_of(&expired), Err(ErrorCode::InvalidToken));
        let within_leeway = sign(
            Algorithm::HS256,
            &json!({"tenant": "acme", "exp": now() - 30}),
        );
        assert!(code_of(&within_leeway).is_ok());
        let future = sign(
            Algorithm::HS256,
            &json!({"tenant": "acme", "exp": now() + 600, "nbf": now() + 120}),
        );
        assert_eq!(code_of(&future), Err(ErrorCode::InvalidToken));
    }

    #[test]
    fn a_far_expiry_is_refused() {
        let at = |secs: u64| sign(Algorithm::HS256, &json!({"tenant": "acme", "exp": secs}));
        assert!(code_of(&at(now() + DAY)).is_ok());
        assert_eq!(
            code_of(&at(now() + DAY + LEEWAY_SECS + 5)),
            Err(ErrorCode::InvalidToken)
        );
        assert_eq!(
            code_of(&at(now() + 300 * 365 * DAY)),
            Err(ErrorCode::InvalidToken)
        );
        assert_eq!(code_of(&at(u64::MAX / 2)), Err(ErrorCode::InvalidToken));
        let short = sign(
            Algorithm::HS256,
            &json!({"tenant": "acme", "exp": now() + 300}),
        );
        assert_eq!(
            verify(&short, SECRET, 60).map_err(|e| e.code),
            Err(ErrorCode::InvalidToken)
        );
    }

    #[test]
    fn missing_or_bad_claims_are_refused() {
        let exp = now() + 60;
        for claims in [
            json!({"tenant": "acme"}),
            json!({"exp": exp}),
            json!({"tenant": "", "exp": exp}),
            json!({"tenant": 7, "exp": exp}),
            json!({"tenant": "acme", "exp": "tomorrow"}),
            json!({"tenant": "acme", "exp": exp, "sub": 5}),
            json!({"tenant": " ", "exp": exp}),
            json!({"tenant": "globex,acme", "exp": exp}),
            json!({"tenant": "a b", "exp": exp}),
            json!({"tenant": "x".repeat(129), "exp": exp}),
            json!({"tenant": "x".repeat(5000), "exp": exp}),
            json!({"tenant": "acme\n", "exp": exp}),
        ] {
            assert_eq!(
                code_of(&sign(Algorithm::HS256, &claims)),
                Err(ErrorCode::InvalidToken),
                "{claims}"
            );
        }
        for garbage in ["", "abc", "a.b.c", "eyJhbGciOiJIUzI1NiIs"] {
            assert_eq!(code_of(garbage), Err(ErrorCode::InvalidToken));
        }
    }
}
