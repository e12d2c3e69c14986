//! Bearer tokens for the management endpoints: HS256 only, `tenant` and `exp` required.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde_json::Value;

use super::error::{ApiError, ErrorCode};
use super::keys::{TENANT_MAX_CHARS, is_valid_tenant};

/// Leeway on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// The shortest secret the server accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub subject: Option<String>,
}

/// Verifies an HS256 token with `secret`, whatever algorithm its header names;
/// a token whose `exp` is more than `max_lifetime_secs` ahead is refused, so
/// a leaked token cannot be good for centuries.
pub fn verify(token: &str, secret: &[u8], max_lifetime_secs: u64) -> Result<Principal, ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    let data = decode::<Value>(token, &DecodingKey::from_secret(secret), &validation)
        .map_err(|e| invalid(describe(e.kind())))?;
    let claims = data.claims;
    let now = super::time::now_millis() / 1000;
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
    let tenant = match claims.get("tenant") {
        Some(Value::String(t)) if is_valid_tenant(t) => t.clone(),
        Some(_) => {
            return Err(invalid(&format!(
                "the tenant claim must be 1 to {TENANT_MAX_CHARS} characters of A-Z a-z 0-9 . _ : -"
            )));
        }
        None => return Err(invalid("the token has no tenant claim")),
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
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "only HS256 tokens are accepted",
        K::MissingRequiredClaim(_) => "the token has no exp claim",
        K::InvalidClaimFormat(_) => "a claim has the wrong type",
        _ => "it is not a well-formed HS256 JWT",
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
