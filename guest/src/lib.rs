//! The sigma-keys component.
//!
//! [`domain`] holds all key, permission, route, JWT and HTTP-API logic as plain
//! Rust; the `component` module (wasm32 only) converts between it and the WIT
//! world `sigma:api-keys/service`.

pub mod domain;

pub mod small_blocks;

/// The allocator in WebAssembly: talc rather than Rust's default dlmalloc,
/// behind a cache of freed small blocks ([`small_blocks`]). Every string
/// and list a host passes into the component is allocated through it (one
/// `cabi_realloc` call each), and so are most of a request's own strings;
/// see docs/performance.md for what each bought. A component built from
/// this crate uses it too, so the benchmark's in-wasm probe runs the domain
/// code on the same allocator.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: small_blocks::SmallBlocks<talc::wasm::WasmDynamicTalc> =
    small_blocks::SmallBlocks::new(talc::wasm::new_wasm_dynamic_allocator());

#[cfg(all(target_arch = "wasm32", feature = "component"))]
mod component;
