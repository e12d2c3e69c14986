//! How a request's body is delimited. A proxy and an upstream that read the
//! same bytes two ways (one sees a body, the other the next request) let a
//! client smuggle a request past every check, so only unambiguous framing
//! is accepted.

use super::error::ApiError;
use super::headers::HeaderRef;

/// Methods whose requests must not carry a body: many upstreams do not read
/// one, and would take it for the next request on the connection.
pub const BODYLESS_METHODS: [&str; 4] = ["GET", "HEAD", "DELETE", "OPTIONS"];

/// Whether the request's body framing is unambiguous and fits its method:
/// no body, one `Content-Length` of digits, or `Transfer-Encoding: chunked`
/// alone; and no body at all for [`BODYLESS_METHODS`].
pub fn check(method: &str, headers: &[HeaderRef<'_>]) -> Result<(), ApiError> {
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    let lengths: Vec<&[u8]> = values("content-length").collect();
    let encodings: Vec<&[u8]> = values("transfer-encoding").collect();
    if lengths.len() > 1 {
        return Err(ApiError::invalid_request(
            "send at most one Content-Length header",
        ));
    }
    let length = match lengths.first() {
        None => None,
        Some(v) => Some(parse_length(v).ok_or_else(|| {
            ApiError::invalid_request("Content-Length must be a decimal number of bytes")
        })?),
    };
    if !encodings.is_empty() {
        if length.is_some() {
            return Err(ApiError::invalid_request(
                "send either Content-Length or Transfer-Encoding, not both",
            ));
        }
        let chunked_alone = encodings.len() == 1
            && std::str::from_utf8(encodings[0])
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        if !chunked_alone {
            return Err(ApiError::invalid_request(
                "the only Transfer-Encoding accepted is a single `chunked`",
            ));
        }
    }
    let has_body = !encodings.is_empty() || length.is_some_and(|n| n > 0);
    if has_body && BODYLESS_METHODS.contains(&method) {
        return Err(ApiError::invalid_request(format!(
            "a {method} request must not have a body"
        )));
    }
    Ok(())
}

fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error::ErrorCode;

    fn run(method: &str, headers: &[(&str, &str)]) -> Result<(), ErrorCode> {
        let headers: Vec<HeaderRef<'_>> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        check(method, &headers).map_err(|e| e.code)
    }

    #[test]
    fn bodyless_methods_carry_no_body() {
        for method in BODYLESS_METHODS {
            assert_eq!(run(method, &[]), Ok(()));
            assert_eq!(run(method, &[("content-length", "0")]), Ok(()));
            for framing in [
                ("content-length", "1"),
                ("content-length", "70"),
                ("transfer-encoding", "chunked"),
                ("Transfer-Encoding", "chunked"),
            ] {
                assert_eq!(
                    run(method, &[framing]),
                    Err(ErrorCode::InvalidRequest),
                    "{method} {framing:?}"
                );
            }
        }
        for method in ["POST", "PUT", "PATCH"] {
            assert_eq!(run(method, &[("content-length", "70")]), Ok(()));
            assert_eq!(run(method, &[("transfer-encoding", "chunked")]), Ok(()));
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for headers in [
            vec![("content-length", "5"), ("transfer-encoding", "chunked")],
            vec![("content-length", "5"), ("content-length", "5")],
            vec![("content-length", "5"), ("content-length", "6")],
            vec![("content-length", "+5")],
            vec![("content-length", "5 ")],
            vec![("content-length", "0x5")],
            vec![("content-length", "")],
            vec![("content-length", "99999999999999999999")],
            vec![("transfer-encoding", "gzip")],
            vec![("transfer-encoding", "gzip, chunked")],
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            vec![("transfer-encoding", "chunked, identity")],
        ] {
            assert_eq!(
                run("POST", &headers),
                Err(ErrorCode::InvalidRequest),
                "{headers:?}"
            );
        }
    }
}
