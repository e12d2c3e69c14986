//! Runs `keys::verify` over the in-memory store inside one wasm call, so the
//! benchmark can price the domain code as wasm apart from the component
//! boundary and the host's store (`verify_inprocess.wasm_memory`).

#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    world: "verify-loop",
    path: "wit",
});

use sigma_keys_guest::domain::keys;
use sigma_keys_guest::domain::memory::MemoryStore;
use sigma_keys_guest::domain::permission::Permission;

struct Probe;

export!(Probe);

impl Guest for Probe {
    fn noop() {}

    fn run(calls: u32) -> u32 {
        let store = MemoryStore::default();
        let new = keys::NewKey {
            name: "bench",
            permissions: &[Permission::Read],
            expires_at: None,
        };
        let actor = sigma_keys_guest::domain::events::Actor::cli();
        let Ok((_, raw)) = keys::create(&store, "acme", &new, &actor, 1) else {
            return 0;
        };
        let mut ok = 0;
        for _ in 0..calls {
            if keys::verify(&store, std::hint::black_box(raw.expose()), Permission::Read).is_ok() {
                ok += 1;
            }
        }
        ok
    }
}
