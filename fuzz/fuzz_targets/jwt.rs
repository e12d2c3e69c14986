//! The Bearer token parser: never a panic; an accepted token names a tenant
//! that is safe to send upstream as a header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigma_keys_guest::domain::{jwt, keys};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(principal) = jwt::verify(token, SECRET, 86_400) {
        assert!(keys::is_valid_tenant(&principal.tenant));
    }
});
