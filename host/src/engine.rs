//! The engine settings that decide how the component is compiled. Shared
//! by the runtime and by `build.rs`, which precompiles the component with
//! them, so the precompiled artifact fits the engine that loads it.
//!
//! Only compilation-affecting settings belong here: the compilation cache
//! and the instance allocator are the runtime's own.

/// Applies the compilation settings to `config`.
pub fn configure(config: &mut wasmtime::Config) {
    // A guest call that runs away traps at its deadline (GUEST_CALL_DEADLINE).
    config.epoch_interruption(true);
}
