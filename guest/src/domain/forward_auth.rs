//! Answers for the proxies that ask "may this request pass?" before they
//! proxy it: nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `ForwardAuth` and Envoy's HTTP `ext_authz`. The decision is the
//! gateway's own (see `api`); what differs per proxy, and lives here as
//! data, is where the original method and URI come from and how a refusal
//! must be said for the proxy to understand it.

use super::error::{ApiError, ErrorCode};
use super::headers::HeaderRef;

/// Every authorization endpoint lives under this path.
pub const AUTH_BASE: &str = "/_sigma/auth";

/// The nginx endpoint's header with the decision's real status.
pub const STATUS_HEADER: &str = "x-sigma-status";
/// The nginx endpoint's header with the refusal's error code.
pub const ERROR_HEADER: &str = "x-sigma-error";

/// How a proxy family asks, and what answers it understands.
#[derive(Debug, PartialEq, Eq)]
pub struct Convention {
    /// The endpoint's path; for a family with no `uri_header`, the prefix
    /// that the original path and query follow.
    pub path: &'static str,
    /// The header with the original method; `None`: the request's own.
    pub method_header: Option<&'static str>,
    /// The header with the original path and query; `None`: what follows `path`.
    pub uri_header: Option<&'static str>,
    /// The proxy turns any status but 2xx, 401 and 403 into a 500, so
    /// refusals are 401 or 403 with the real status in [`STATUS_HEADER`].
    pub only_401_403: bool,
    /// A header of an allowing answer that names client headers for the
    /// proxy to remove from the request it passes on: the key and every
    /// identity header the answer does not set.
    pub remove_header: Option<&'static str>,
    /// An allowing answer names every identity header, those it does not
    /// set with an empty value: Caddy 2.6's `copy_headers` otherwise copies
    /// its own placeholder text upstream for a header the answer lacks.
    pub name_every_identity: bool,
}

/// Traefik `ForwardAuth` and Caddy `forward_auth`.
pub const FORWARD: Convention = Convention {
    path: "/_sigma/auth/forward",
    method_header: Some("x-forwarded-method"),
    uri_header: Some("x-forwarded-uri"),
    only_401_403: false,
    remove_header: None,
    name_every_identity: true,
};

/// nginx `auth_request`, with the documented `proxy_set_header`s.
pub const NGINX: Convention = Convention {
    path: "/_sigma/auth/nginx",
    method_header: Some("x-original-method"),
    uri_header: Some("x-original-uri"),
    only_401_403: true,
    remove_header: None,
    name_every_identity: false,
};

/// Envoy HTTP `ext_authz` with `path_prefix: /_sigma/auth/envoy`.
pub const ENVOY: Convention = Convention {
    path: "/_sigma/auth/envoy",
    method_header: None,
    uri_header: None,
    only_401_403: false,
    remove_header: Some("x-envoy-auth-headers-to-remove"),
    name_every_identity: false,
};

/// Every convention, each with its endpoint.
pub const CONVENTIONS: [&Convention; 3] = [&FORWARD, &NGINX, &ENVOY];

/// Whether a path (without query) is one of the authorization endpoints'.
pub fn is_auth_path(path: &str) -> bool {
    path.strip_prefix(AUTH_BASE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The convention of the endpoint a request reached, from its path and query.
pub fn convention(path_with_query: &str) -> Result<&'static Convention, ApiError> {
    let path = path_with_query
        .split_once('?')
        .map_or(path_with_query, |(p, _)| p);
    CONVENTIONS
        .into_iter()
        .find(|c| match c.uri_header {
            Some(_) => path == c.path,
            None => path_with_query
                .strip_prefix(c.path)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?'])),
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownResource,
                format!(
                    "No authorization endpoint lives at this path. They are {}, {} and {}/<original path>.",
                    FORWARD.path, NGINX.path, ENVOY.path
                ),
            )
        })
}

/// The request the proxy asks about.
#[derive(Debug, PartialEq, Eq)]
pub struct Original<'a> {
    pub method: &'a str,
    pub path_with_query: &'a str,
}

/// Reads the original request as `convention` carries it. A missing,
/// repeated or unreadable value is 400, never a guess: a proxy that does not
/// say what it asks about gets no answer that could let it through.
pub fn original<'a>(
    convention: &Convention,
    method: &'a str,
    path_with_query: &'a str,
    headers: &[HeaderRef<'a>],
) -> Result<Original<'a>, ApiError> {
    let one = |name: &str| -> Result<&'a str, ApiError> {
        let mut values = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v);
        match (values.next(), values.next()) {
            (Some(value), None) => std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.is_ascii())
                .ok_or_else(|| {
                    ApiError::invalid_request(format!("{name} must be a non-empty ASCII value"))
                }),
            (None, _) => Err(ApiError::invalid_request(format!(
                "the {name} header is required: it names the request to authorize"
            ))),
            (Some(_), Some(_)) => Err(ApiError::invalid_request(format!(
                "the {name} header is given more than once"
            ))),
        }
    };
    let method = match convention.method_header {
        Some(name) => one(name)?,
        None => method,
    };
    let path_with_query = match convention.uri_header {
        Some(name) => one(name)?,
        None => path_with_query
            .strip_prefix(convention.path)
            .filter(|rest| rest.starts_with('/'))
            .ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "the original path must follow {}: {}/api/v1/records",
                    convention.path, convention.path
                ))
            })?,
    };
    Ok(Original {
        method,
        path_with_query,
    })
}

/// The status a refusal is sent with: its own, or for a proxy that
/// understands only 401 and 403, 401 for a missing or bad credential and
/// 403 for every other refusal (the real one goes in [`STATUS_HEADER`]).
pub fn refusal_status(convention: &Convention, error: &ApiError) -> u16 {
    let status = error.code.status();
    if !convention.only_401_403 || status == 401 {
        status
    } else {
        403
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(list: &[(&'a str, &'a str)]) -> Vec<HeaderRef<'a>> {
        list.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    #[test]
    fn each_endpoint_has_one_convention() {
        assert_eq!(convention("/_sigma/auth/forward"), Ok(&FORWARD));
        assert_eq!(convention("/_sigma/auth/forward?x=1"), Ok(&FORWARD));
        assert_eq!(convention("/_sigma/auth/nginx"), Ok(&NGINX));
        assert_eq!(convention("/_sigma/auth/envoy/api/v1/records"), Ok(&ENVOY));
        assert_eq!(convention("/_sigma/auth/envoy"), Ok(&ENVOY));
        for other in [
            "/_sigma/auth",
            "/_sigma/auth/",
            "/_sigma/auth/forward/",
            "/_sigma/auth/nginx/x",
            "/_sigma/auth/envoyx/api/v1/records",
            "/_sigma/auth/traefik",
        ] {
            assert_eq!(
                convention(other).map_err(|e| e.code),
                Err(ErrorCode::UnknownResource),
                "{other}"
            );
        }
        assert!(is_auth_path("/_sigma/auth") && is_auth_path("/_sigma/auth/x"));
        assert!(!is_auth_path("/_sigma/authx") && !is_auth_path("/api/v1/records"));
    }

    #[test]
    fn the_original_request_comes_from_each_familys_place() {
        let h = headers(&[
            ("X-Forwarded-Method", "DELETE"),
            ("x-forwarded-uri", "/api/v1/records/1?x=1"),
            ("x-original-method", "PUT"),
            ("x-original-uri", "/api/v1/schemas/s"),
        ]);
        let path = "/_sigma/auth/forward";
        assert_eq!(
            original(&FORWARD, "GET", path, &h),
            Ok(Original {
                method: "DELETE",
                path_with_query: "/api/v1/records/1?x=1"
            })
        );
        assert_eq!(
            original(&NGINX, "GET", "/_sigma/auth/nginx", &h),
            Ok(Original {
                method: "PUT",
                path_with_query: "/api/v1/schemas/s"
            })
        );
        assert_eq!(
            original(&ENVOY, "PATCH", "/_sigma/auth/envoy/api/v1/records?a=b", &h),
            Ok(Original {
                method: "PATCH",
                path_with_query: "/api/v1/records?a=b"
            })
        );
    }

    #[test]
    fn a_missing_repeated_or_empty_original_is_invalid() {
        let code = |c: &Convention, path: &str, list: &[(&str, &str)]| {
            original(c, "GET", path, &headers(list))
                .map(|_| ())
                .map_err(|e| e.code)
        };
        let invalid = Err(ErrorCode::InvalidRequest);
        let uri = ("x-forwarded-uri", "/api/v1/records");
        let method = ("x-forwarded-method", "GET");
        let forward = "/_sigma/auth/forward";
        assert_eq!(code(&FORWARD, forward, &[uri]), invalid);
        assert_eq!(code(&FORWARD, forward, &[method]), invalid);
        assert_eq!(code(&FORWARD, forward, &[method, uri, uri]), invalid);
        assert_eq!(
            code(&FORWARD, forward, &[method, ("x-forwarded-uri", "")]),
            invalid
        );
        assert_eq!(
            code(&FORWARD, forward, &[("x-forwarded-method", "\u{ff}"), uri]),
            invalid
        );
        // nginx's names, not the forward family's.
        assert_eq!(code(&NGINX, "/_sigma/auth/nginx", &[method, uri]), invalid);
        assert_eq!(code(&ENVOY, "/_sigma/auth/envoy", &[]), invalid);
        assert_eq!(code(&ENVOY, "/_sigma/auth/envoy?x=1", &[]), invalid);
    }

    #[test]
    fn nginx_hears_only_401_and_403() {
        for (code, forward, nginx) in [
            (ErrorCode::InvalidApiKey, 401, 401),
            (ErrorCode::Unauthenticated, 401, 401),
            (ErrorCode::InsufficientPermission, 403, 403),
            (ErrorCode::UnknownResource, 404, 403),
            (ErrorCode::MethodNotAllowed, 405, 403),
            (ErrorCode::InvalidRequest, 400, 403),
            (ErrorCode::StoreUnavailable, 503, 403),
        ] {
            let e = ApiError::new(code, "x");
            assert_eq!(refusal_status(&FORWARD, &e), forward, "{code:?}");
            assert_eq!(refusal_status(&ENVOY, &e), forward, "{code:?}");
            assert_eq!(refusal_status(&NGINX, &e), nginx, "{code:?}");
        }
    }
}
