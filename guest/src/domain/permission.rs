//! The five permissions and the names the API uses for them.

use std::fmt;

/// A fine-grained permission carried by an API key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    Read,
    UpdateData,
    DeleteData,
    UpdateModel,
    DeleteModel,
}

impl Permission {
    /// Every permission, in canonical order (the order keys list them in).
    pub const ALL: [Permission; 5] = [
        Permission::Read,
        Permission::UpdateData,
        Permission::DeleteData,
        Permission::UpdateModel,
        Permission::DeleteModel,
    ];

    /// The name used in JSON, WIT and storage.
    pub const fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::UpdateData => "update-data",
            Permission::DeleteData => "delete-data",
            Permission::UpdateModel => "update-model",
            Permission::DeleteModel => "delete-model",
        }
    }

    /// Parses a permission name exactly as the API spells it.
    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The list of valid names, for error messages.
    pub fn names() -> String {
        Permission::ALL.map(Permission::name).join(", ")
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.name()), Some(p));
        }
        assert_eq!(Permission::parse("READ"), None);
        assert_eq!(Permission::parse("delete"), None);
        assert_eq!(Permission::parse(""), None);
    }

    #[test]
    fn canonical_order_is_the_documented_one() {
        assert_eq!(
            Permission::names(),
            "read, update-data, delete-data, update-model, delete-model"
        );
    }
}
