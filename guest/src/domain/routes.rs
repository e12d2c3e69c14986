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

/// The class of the last collection in a resource path.
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
        if !is_safe_segment(segment) {
            return Err(RouteError::UnknownResource);
        }
        if i % 2 == 0 {
            let found = COLLECTIONS.iter().find(|(name, _)| *name == segment);
            class = Some(found.ok_or(RouteError::UnknownResource)?.1);
        }
    }
    class.ok_or(RouteError::UnknownResource)
}

/// A segment must be non-empty and must not let an upstream that decodes or
/// normalises paths see a different route than we checked: no dot segments
/// (plain or percent-encoded) and no encoded or backslash separators.
fn is_safe_segment(segment: &str) -> bool {
    if segment.is_empty() || segment.contains('\\') {
        return false;
    }
    let lower = segment.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return false;
    }
    let decoded_dots = lower.replace("%2e", ".");
    decoded_dots != "." && decoded_dots != ".."
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
