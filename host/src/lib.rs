//! sigma-keys: the API-key service of the Sigma PIM platform, as a library.
//!
//! The key logic lives in a WebAssembly component (embedded in this crate at
//! build time); this crate runs it with wasmtime, stores keys in SQLite or
//! PostgreSQL ([`store`]) and serves the REST API. Rust services can call
//! the component directly:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sigma_keys::{Permission, Service, Settings};
//! let service = Service::open("keys.db".as_ref(), &Settings::default())?;
//! let created = service.create("acme", "sync", &[Permission::Read]).await??;
//! let verified = service.verify(&created.raw_key, Permission::Read).await??;
//! assert_eq!(verified.tenant, "acme");
//! # Ok(()) }
//! ```

pub mod bindings {
    //! Host bindings for the `sigma:api-keys/typed` world.
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sigma:api-keys/typed",
        exports: { default: async },
        // Store calls may wait for SQLite's lock: they run on a blocking
        // thread, so an async worker never waits.
        imports: { "sigma:api-keys/store": async },
        additional_derives: [PartialEq, Eq],
    });
}

pub mod admin;
mod component_log;
pub mod engine;
mod hop_by_hop;
pub mod jwks;
pub mod metrics;
pub mod runtime;
pub mod secret;
pub mod server;
mod service;
pub mod store;
mod upstream_pool;

pub use bindings::exports::sigma::api_keys::auth::Verified;
pub use bindings::exports::sigma::api_keys::keys::{
    Actor, ActorVia, CreatedKey, Error as KeyError, ErrorCode, Event, EventDetails, EventKind,
    EventPage, KeyRecord, Permission, RolledKey,
};
pub use runtime::Settings;
pub use service::{Service, Session};

/// Permission names as the API and the CLI spell them.
pub const PERMISSION_NAMES: [(Permission, &str); 5] = [
    (Permission::Read, "read"),
    (Permission::UpdateData, "update-data"),
    (Permission::DeleteData, "delete-data"),
    (Permission::UpdateModel, "update-model"),
    (Permission::DeleteModel, "delete-model"),
];

/// The name of a permission.
pub fn permission_name(permission: Permission) -> &'static str {
    PERMISSION_NAMES
        .iter()
        .find(|(p, _)| *p == permission)
        .map_or("", |(_, name)| name)
}

/// The permission with this name.
pub fn parse_permission(name: &str) -> Option<Permission> {
    PERMISSION_NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(p, _)| *p)
}
