//! The typed API of the component for Rust callers: no HTTP involved.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use crate::bindings::Typed;
use crate::bindings::exports::sigma::api_keys::auth::Verified;
use crate::bindings::exports::sigma::api_keys::keys::{
    Actor, ActorVia, CreatedKey, Error as KeyError, EventPage, KeyRecord, Permission, RolledKey,
};
use crate::runtime::{Ctx, Runtime, Settings, arm_deadline};

/// The sigma-keys component over a key store (SQLite or PostgreSQL).
///
/// Each call runs in a fresh component instance. The outer `Result` is a host
/// failure (the component trapped); the inner one is the component's answer.
pub struct Service {
    runtime: Arc<Runtime>,
}

impl Service {
    /// Opens (creating and migrating) the database and compiles the component.
    pub fn open(db: &Path, settings: &Settings) -> Result<Service> {
        let db = crate::store::open_sqlite(db)?;
        Ok(Service {
            runtime: Arc::new(Runtime::new(db, settings)?),
        })
    }

    /// Opens the store at `location` (a SQLite path or a PostgreSQL URL, as
    /// `--db` takes them) and compiles the component. Call
    /// [`Service::close`] when done, so pending `lastUsedAt` values are written.
    pub async fn open_at(
        location: &crate::store::Location,
        options: &crate::store::Options,
        settings: &Settings,
    ) -> Result<Service> {
        let store = crate::store::open(location, options).await?;
        Ok(Service {
            runtime: Arc::new(Runtime::new(store, settings)?),
        })
    }

    /// Writes pending `lastUsedAt` values and stops the store's background
    /// work; the service can still be called, but later uses may be lost.
    pub async fn close(&self) {
        self.runtime.store().close().await;
    }

    /// The same service, sharing an already loaded runtime.
    pub fn from_runtime(runtime: Arc<Runtime>) -> Service {
        Service { runtime }
    }

    /// The runtime, to serve HTTP with it too.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.clone()
    }

    /// One warm instance for many `auth` calls (a hot path that verifies
    /// every request). Drop it after an `Err` from the host: a trapped
    /// instance cannot be used again.
    pub async fn session(&self) -> Result<Session> {
        let (store, api) = self.runtime.typed().await?;
        Ok(Session { store, api })
    }

    /// The tenant's keys, oldest first.
    pub async fn list(&self, tenant: &str) -> Result<Result<Vec<KeyRecord>, KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_keys()
            .call_list(&mut store, tenant)
            .await?)
    }

    /// One of the tenant's keys.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Result<KeyRecord, KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_keys()
            .call_get(&mut store, tenant, id)
            .await?)
    }

    /// Creates a key that never expires; the raw key in the answer is
    /// shown this once. The audit trail records the change as `via: cli`,
    /// as for every change made through `Service`.
    pub async fn create(
        &self,
        tenant: &str,
        name: &str,
        permissions: &[Permission],
    ) -> Result<Result<CreatedKey, KeyError>> {
        self.create_expiring(tenant, name, permissions, None).await
    }

    /// Creates a key that stops working at `expires_at` (milliseconds since
    /// the epoch; in the future, at most ten years ahead) when given.
    pub async fn create_expiring(
        &self,
        tenant: &str,
        name: &str,
        permissions: &[Permission],
        expires_at: Option<u64>,
    ) -> Result<Result<CreatedKey, KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_keys()
            .call_create(&mut store, tenant, name, permissions, expires_at, &cli())
            .await?)
    }

    /// Replaces an active key by a new one; the old key keeps working for
    /// `grace_period_seconds` (0 to 604800).
    pub async fn roll(
        &self,
        tenant: &str,
        id: &str,
        grace_period_seconds: u32,
    ) -> Result<Result<RolledKey, KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_keys()
            .call_roll(&mut store, tenant, id, grace_period_seconds, &cli())
            .await?)
    }

    /// Deactivates a key; again returns the same record.
    pub async fn deactivate(&self, tenant: &str, id: &str) -> Result<Result<KeyRecord, KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_keys()
            .call_deactivate(&mut store, tenant, id, &cli())
            .await?)
    }

    /// Deletes a key for good (its events are kept).
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<Result<(), KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_keys()
            .call_delete(&mut store, tenant, id, &cli())
            .await?)
    }

    /// One page of the tenant's audit trail, newest first.
    pub async fn events(
        &self,
        tenant: &str,
        key_id: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Result<EventPage, KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_keys()
            .call_events(&mut store, tenant, key_id, cursor, limit)
            .await?)
    }

    /// Checks a raw key for a permission.
    pub async fn verify(
        &self,
        raw_key: &str,
        permission: Permission,
    ) -> Result<Result<Verified, KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_auth()
            .call_verify(&mut store, raw_key, permission)
            .await?)
    }

    /// Checks a raw key for an HTTP request (`path` with `/api/v1`).
    pub async fn authorize(
        &self,
        raw_key: &str,
        method: &str,
        path: &str,
    ) -> Result<Result<Verified, KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_auth()
            .call_authorize(&mut store, raw_key, method, path)
            .await?)
    }

    /// The permission an HTTP request needs.
    pub async fn required_permission(
        &self,
        method: &str,
        path: &str,
    ) -> Result<Result<Permission, KeyError>> {
        let (mut store, api) = self.runtime.typed().await?;
        Ok(api
            .sigma_api_keys_auth()
            .call_required_permission(&mut store, method, path)
            .await?)
    }
}

/// Changes made through `Service` are the operator's own.
fn cli() -> Actor {
    Actor {
        via: ActorVia::Cli,
        subject: None,
    }
}

/// A warm component instance, reused across `auth` calls.
pub struct Session {
    store: wasmtime::Store<Ctx>,
    api: Typed,
}

impl Session {
    /// Checks a raw key for a permission.
    pub async fn verify(
        &mut self,
        raw_key: &str,
        permission: Permission,
    ) -> Result<Result<Verified, KeyError>> {
        arm_deadline(&mut self.store);
        Ok(self
            .api
            .sigma_api_keys_auth()
            .call_verify(&mut self.store, raw_key, permission)
            .await?)
    }

    /// The permission an HTTP request needs (no key, no storage: the cost
    /// of a call into the component, for measurements).
    pub async fn required_permission(
        &mut self,
        method: &str,
        path: &str,
    ) -> Result<Result<Permission, KeyError>> {
        arm_deadline(&mut self.store);
        Ok(self
            .api
            .sigma_api_keys_auth()
            .call_required_permission(&mut self.store, method, path)
            .await?)
    }

    /// Checks a raw key for an HTTP request (`path` with `/api/v1`).
    pub async fn authorize(
        &mut self,
        raw_key: &str,
        method: &str,
        path: &str,
    ) -> Result<Result<Verified, KeyError>> {
        arm_deadline(&mut self.store);
        Ok(self
            .api
            .sigma_api_keys_auth()
            .call_authorize(&mut self.store, raw_key, method, path)
            .await?)
    }
}
