//! The raw key parser: never a panic; what it accepts has the documented
//! shape, and the hash of an accepted key is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigma_keys_guest::domain::raw_key::RawKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = RawKey::parse(text) {
        let body = text
            .strip_prefix("sigma_sk_live_")
            .expect("an accepted key has the prefix");
        assert_eq!(body.len(), 36, "{text:?}");
        assert!(
            body.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_eq!(key.hash(), RawKey::parse(text).expect("again").hash());
    }
});
