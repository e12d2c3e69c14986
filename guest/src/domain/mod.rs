//! The component's domain logic, in plain Rust that also builds and tests natively.

pub mod api;
pub mod error;
pub mod events;
pub mod forward_auth;
pub mod framing;
pub mod headers;
pub mod jwt;
pub mod key_set;
pub mod keys;
pub mod memory;
pub mod permission;
pub mod random;
pub mod raw_key;
pub mod routes;
pub mod secret_scanning;
pub mod time;
pub mod upstream;
