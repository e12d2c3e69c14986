//! The sigma-keys component.
//!
//! [`domain`] holds all key, permission, route, JWT and HTTP-API logic as plain
//! Rust; the `component` module (wasm32 only) converts between it and the WIT
//! world `sigma:api-keys/service`.

pub mod domain;

#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod component;
