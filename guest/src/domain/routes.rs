//! Which permission a Sigma PIM request needs: the route table, as data.

use super::permission::Permission;

/// Whether a collection holds data (records) or model (schemas and friends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceClass {
    Data,
    Model,
}

/// What a method does to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read,
    Update,
    Delete,
}

/// The base path of every resource and management endpoint.
pub const API_BASE: &str = "/api/v1";

/// Every known collection and its class. An id never changes the class: the
/// last collection in the path decides.
pub const COLLECTIONS: &[(&str, ResourceClass)] = &[
    ("records", ResourceClass::Data),
    ("variants", ResourceClass::Data),
    ("assignments", ResourceClass::Data),
    ("catalog-assignments", ResourceClass::Data),
    ("schemas", ResourceClass::Model),
    ("attributes", ResourceClass::Model),
    ("catalogs", ResourceClass::Model),
    ("dimensions", ResourceClass::Model),
    ("option-lists", ResourceClass::Model),
    ("workflows", ResourceClass::Model),
    ("roles", ResourceClass::Model),
];

/// Every method a resource accepts and what it does.
pub const METHODS: &[(&str, Action)] = &[
    ("GET", Action::Read),
    ("HEAD", Action::Read),
    ("POST", Action::Update),
    ("PUT", Action::Update),
    ("PATCH", Action::Update),
    ("DELETE", Action::Delete),
];

/// The permission for an action on a class.
pub const fn permission_for(action: Action, class: ResourceClass) -> Permission {
    match (action, class) {
        (Action::Read, _) => Permission::Read,
        (Action::Update, ResourceClass::Data) => Permission::UpdateData,
        (Action::Delete, ResourceClass::Data) => Permission::DeleteData,
        (Action::Update, ResourceClass::Model) => Permission::UpdateModel,
        (Action::Delete, ResourceClass::Model) => Permission::DeleteModel,
    }
}

/// Why a request maps to no permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The path names no known resource.
    UnknownResource,
    /// The method is not one resources accept.
    MethodNotAllowed,
}

/// The value of the `Allow` header for resources.
pub fn allowed_methods() -> String {
    METHODS
        .iter()
        .map(|(m, _)| *m)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The permission `method` on `path` (as the client sends it, with `/api/v1`
/// and maybe a query) needs. The path is checked before the method, so an
/// unknown path is 404 whatever the method.
pub fn required_permission(method: &str, path: &str) -> Result<Permission, RouteError> {
    let class = resource_class(path)?;
    let action = METHODS
        .iter()
        .find(|(m, _)| *m == method)
        .map(|(_, a)| *a)
        .ok_or(RouteError::MethodNotAllowed)?;
    Ok(permission_for(action, class))
}

/// Longest path segment, in bytes.
pub const MAX_SEGMENT_LEN: usize = 256;

/// The class of the last collection in a resource path.
///
/// Paths are checked against an allowlist, so that an upstream that decodes,
/// normalises or strips parameters from paths can never see another resource
/// than the one checked: after `/api/v1/`, every segment is 1 to
/// [`MAX_SEGMENT_LEN`] RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`)
/// and is neither `.` nor `..`. One trailing slash is ignored. Anything else
/// (`%`, `;`, `:`, `\`, NUL, non-ASCII, empty segments) names no resource.
pub fn resource_class(path: &str) -> Result<ResourceClass, RouteError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path
        .strip_prefix(API_BASE)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or(RouteError::UnknownResource)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(RouteError::UnknownResource);
    }
    let mut class = None;
    for (i, segment) in rest.split('/').enumerate() {
        if !is_allowed_segment(segment) {
            return Err(RouteError::UnknownResource);
        }
        if i % 2 == 0 {
            let found = COLLECTIONS.iter().find(|(name, _)| *name == segment);
            class = Some(found.ok_or(RouteError::UnknownResource)?.1);
        }
    }
    class.ok_or(RouteError::UnknownResource)
}

/// Whether a byte is an RFC 3986 unreserved character.
pub const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A segment an upstream reads exactly as we do: unreserved characters only,
/// so nothing in it can be decoded, split off as a parameter or normalised.
fn is_allowed_segment(segment: &str) -> bool {
    (1..=MAX_SEGMENT_LEN).contains(&segment.len())
        && segment.bytes().all(is_unreserved)
        && segment != "."
        && segment != ".."
}

/// Query parameters that many frameworks read as the request's real method.
pub const METHOD_OVERRIDE_PARAMS: [&str; 1] = ["_method"];

/// Whether the query asks an upstream to treat the request as another method
/// (`?_method=DELETE`, in any case or percent-encoding of the name).
pub fn overrides_method(path_with_query: &str) -> bool {
    let Some((_, query)) = path_with_query.split_once('?') else {
        return false;
    };
    query.split(['&', ';']).any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        // Decoding changes only names with `%` or `+`; the rest (nearly
        // every query) are compared as they are, without allocating.
        if !name.contains(['%', '+']) {
            return METHOD_OVERRIDE_PARAMS
                .iter()
                .any(|p| name.trim().eq_ignore_ascii_case(p));
        }
        let name = percent_decode(name).to_ascii_lowercase();
        METHOD_OVERRIDE_PARAMS.iter().any(|p| name.trim() == *p)
    })
}

/// `%XX` decoded (repeatedly, so double encoding is seen through); other bytes as they are.
fn percent_decode(text: &str) -> String {
    let mut current = text.as_bytes().to_vec();
    for _ in 0..4 {
        let mut out = Vec::with_capacity(current.len());
        let mut i = 0;
        while i < current.len() {
            let hex = |b: u8| char::from(b).to_digit(16);
            match (current.get(i), current.get(i + 1), current.get(i + 2)) {
                (Some(b'%'), Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                    let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                    out.push(u8::try_from(value).unwrap_or(0));
                    i += 3;
                }
                (Some(&b), _, _) => {
                    out.push(if b == b'+' { b' ' } else { b });
                    i += 1;
                }
                (None, _, _) => break,
            }
        }
        if out == current {
            break;
        }
        current = out;
    }
    String::from_utf8_lossy(&current).into_owned()
}

#[cfg(test)]
mod tests {
    use super::Permission::*;
    use super::*;

    fn need(method: &str, path: &str) -> Result<Permission, RouteError> {
        required_permission(method, path)
    }

    #[test]
    fn every_collection_and_method_maps_as_documented() {
        for (collection, class) in COLLECTIONS {
            for (method, action) in METHODS {
                let expected = permission_for(*action, *class);
                for path in [
                    format!("/api/v1/{collection}"),
                    format!("/api/v1/{collection}/"),
                    format!("/api/v1/{collection}/x1"),
                    format!("/api/v1/{collection}/x1?expand=all"),
                ] {
                    assert_eq!(need(method, &path), Ok(expected), "{method} {path}");
                }
            }
        }
    }

    #[test]
    fn the_documented_examples() {
        assert_eq!(need("GET", "/api/v1/records"), Ok(Read));
        assert_eq!(need("HEAD", "/api/v1/schemas/s1"), Ok(Read));
        assert_eq!(
            need("PUT", "/api/v1/records/r1/variants/v1"),
            Ok(UpdateData)
        );
        assert_eq!(
            need("POST", "/api/v1/schemas/s1/attributes"),
            Ok(UpdateModel)
        );
        assert_eq!(need("DELETE", "/api/v1/records/schemas"), Ok(DeleteData));
        assert_eq!(
            need("POST", "/api/v1/catalogs/c1/assignments"),
            Ok(UpdateData)
        );
        assert_eq!(need("DELETE", "/api/v1/catalogs/c1"), Ok(DeleteModel));
        assert_eq!(
            need("PATCH", "/api/v1/catalog-assignments/a1"),
            Ok(UpdateData)
        );
        assert_eq!(need("DELETE", "/api/v1/option-lists/o1"), Ok(DeleteModel));
        assert_eq!(need("POST", "/api/v1/workflows"), Ok(UpdateModel));
        assert_eq!(need("DELETE", "/api/v1/roles/admin"), Ok(DeleteModel));
        assert_eq!(need("GET", "/api/v1/dimensions"), Ok(Read));
    }

    #[test]
    fn unknown_or_malformed_paths_are_unknown_resources() {
        for path in [
            "/api/v1",
            "/api/v1/",
            "/api/v1//",
            "/api/v2/records",
            "/records",
            "/api/v1records",
            "/api/v1/products",
            "/api/v1/api-keys",
            "/api/v1/records//variants",
            "/api/v1//records",
            "/api/v1/records/r1//",
            "/api/v1/records/r1/unknown",
            "/api/v1/records/r1/unknown/x",
            "/api/v1/Records",
            "/api/v1/records/..",
            "/api/v1/schemas/s1/records/..",
            "/api/v1/schemas/s1/records/%2E%2e",
            "/api/v1/records/.",
            "/api/v1/records/a%2Fb",
            "/api/v1/records/a%5cb",
            "/api/v1/records/a\\b",
            // Path parameters, encodings and look-alikes an upstream may resolve.
            "/api/v1/schemas/s1/records/..;",
            "/api/v1/schemas/s1/records/..;jsessionid=x",
            "/api/v1/schemas/s1/records/%2e%2e;",
            "/api/v1/records/r1;x=1",
            "/api/v1/records/r1%00",
            "/api/v1/records/r1%3Fx",
            "/api/v1/records/r1%23x",
            "/api/v1/records/%252e%252e",
            "/api/v1/records/a%252fb",
            "/api/v1/records/%c0%ae%c0%ae",
            "/api/v1/records/\u{ff0e}\u{ff0e}",
            "/api/v1/records/r\u{e9}",
            "/api/v1/records/r1:x",
            "/api/v1/records/r 1",
            "/api/v1/records/r\u{0}1",
            "/api/v1/records/a@b",
            "/api/v1/records/a+b",
        ] {
            for method in ["GET", "DELETE", "TRACE"] {
                assert_eq!(
                    need(method, path),
                    Err(RouteError::UnknownResource),
                    "{method} {path}"
                );
            }
        }
    }

    #[test]
    fn segments_are_bounded_and_unreserved() {
        let long = "a".repeat(MAX_SEGMENT_LEN);
        assert_eq!(need("GET", &format!("/api/v1/records/{long}")), Ok(Read));
        assert_eq!(
            need("GET", &format!("/api/v1/records/{long}a")),
            Err(RouteError::UnknownResource)
        );
        assert_eq!(need("GET", "/api/v1/records/A-z_0.9~"), Ok(Read));
        assert_eq!(need("GET", "/api/v1/records/...."), Ok(Read));
        for b in 0u8..=255 {
            let path = format!("/api/v1/records/a{}b", char::from(b));
            let expected = if is_unreserved(b) {
                Ok(Read)
            } else if b == b'/' {
                Err(RouteError::UnknownResource) // "b" is not a collection
            } else if b == b'?' {
                Ok(Read) // the query starts there
            } else {
                Err(RouteError::UnknownResource)
            };
            assert_eq!(need("GET", &path), expected, "byte {b}");
        }
    }

    #[test]
    fn method_overrides_in_the_query_are_seen() {
        for path in [
            "/api/v1/records?_method=DELETE",
            "/api/v1/records?a=1&_method=DELETE",
            "/api/v1/records?a=1;_METHOD=delete",
            "/api/v1/records?%5Fmethod=DELETE",
            "/api/v1/records?%255Fmethod=DELETE",
            "/api/v1/records?_method",
            "/api/v1/records?_method+=x",
            "/api/v1/records?a=1& _Method =x",
            "/api/v1/records?%20_method=x",
        ] {
            assert!(overrides_method(path), "{path}");
        }
        for path in [
            "/api/v1/records",
            "/api/v1/records?method=x",
            "/api/v1/records?x=_method",
            "/api/v1/records?__method=x",
            "/api/v1/_method",
        ] {
            assert!(!overrides_method(path), "{path}");
        }
    }

    #[test]
    fn other_methods_are_not_allowed() {
        for method in ["OPTIONS", "TRACE", "CONNECT", "get", "PURGE", ""] {
            assert_eq!(
                need(method, "/api/v1/records"),
                Err(RouteError::MethodNotAllowed)
            );
        }
        assert_eq!(allowed_methods(), "GET, HEAD, POST, PUT, PATCH, DELETE");
    }
}
