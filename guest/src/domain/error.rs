//! The one error type of the component, and the table of codes and statuses.

use std::fmt;

/// Every error code the API returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    InvalidToken,
    InvalidApiKey,
    ApiKeyDeactivated,
    ApiKeyExpired,
    ApiKeyInactive,
    InvalidSignature,
    AmbiguousCredentials,
    ApiKeyNotAllowed,
    InsufficientPermission,
    NotFound,
    UnknownResource,
    MethodNotAllowed,
    InvalidJson,
    InvalidRequest,
    PayloadTooLarge,
    KeyLimitReached,
    StoreUnavailable,
    NoUpstream,
    UpstreamUnavailable,
    UpstreamTimeout,
    Internal,
}

/// The code's JSON name and HTTP status, in one place.
const TABLE: &[(ErrorCode, &str, u16)] = &[
    (ErrorCode::Unauthenticated, "unauthenticated", 401),
    (ErrorCode::InvalidToken, "invalid_token", 401),
    (ErrorCode::InvalidApiKey, "invalid_api_key", 401),
    (ErrorCode::ApiKeyDeactivated, "api_key_deactivated", 401),
    (ErrorCode::ApiKeyExpired, "api_key_expired", 401),
    (ErrorCode::ApiKeyInactive, "api_key_inactive", 409),
    (ErrorCode::InvalidSignature, "invalid_signature", 401),
    (
        ErrorCode::AmbiguousCredentials,
        "ambiguous_credentials",
        400,
    ),
    (ErrorCode::ApiKeyNotAllowed, "api_key_not_allowed", 403),
    (
        ErrorCode::InsufficientPermission,
        "insufficient_permission",
        403,
    ),
    (ErrorCode::NotFound, "not_found", 404),
    (ErrorCode::UnknownResource, "unknown_resource", 404),
    (ErrorCode::MethodNotAllowed, "method_not_allowed", 405),
    (ErrorCode::InvalidJson, "invalid_json", 400),
    (ErrorCode::InvalidRequest, "invalid_request", 400),
    (ErrorCode::PayloadTooLarge, "payload_too_large", 413),
    (ErrorCode::KeyLimitReached, "key_limit_reached", 409),
    (ErrorCode::StoreUnavailable, "store_unavailable", 503),
    (ErrorCode::NoUpstream, "no_upstream", 502),
    (ErrorCode::UpstreamUnavailable, "upstream_unavailable", 502),
    (ErrorCode::UpstreamTimeout, "upstream_timeout", 504),
    (ErrorCode::Internal, "internal", 500),
];

impl ErrorCode {
    fn row(self) -> (&'static str, u16) {
        TABLE
            .iter()
            .find(|(code, _, _)| *code == self)
            .map_or(("internal", 500), |(_, name, status)| (*name, *status))
    }

    /// The code as the JSON body spells it.
    pub fn name(self) -> &'static str {
        self.row().0
    }

    /// The HTTP status of the code.
    pub fn status(self) -> u16 {
        self.row().1
    }

    /// Every code's JSON name.
    pub fn names() -> impl Iterator<Item = &'static str> {
        TABLE.iter().map(|(_, name, _)| *name)
    }
}

/// An error with a message for people; the message never contains a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    /// A 500 whose details go to the server log only.
    pub fn internal(detail: impl fmt::Display) -> ApiError {
        eprintln!("sigma-keys component: internal error: {detail}");
        ApiError::new(
            ErrorCode::Internal,
            "An internal error occurred; the details are in the server log. Retry later.",
        )
    }

    /// The JSON body `{"error": {"code", "message"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.name(), "message": self.message}})
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_row() {
        for (code, name, status) in TABLE {
            assert_eq!(TABLE.iter().filter(|(c, _, _)| c == code).count(), 1);
            assert_eq!(code.name(), *name);
            assert_eq!(code.status(), *status);
        }
        assert_eq!(TABLE.len(), 22);
    }

    #[test]
    fn body_shape() {
        let e = ApiError::new(ErrorCode::NotFound, "No API key with id x.");
        assert_eq!(
            e.to_json(),
            serde_json::json!({"error": {"code": "not_found", "message": "No API key with id x."}})
        );
    }
}
