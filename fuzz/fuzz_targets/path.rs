//! The route table and the query's method-override check, on any request
//! target: never a panic, and a path it accepts is only allowlisted segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigma_keys_guest::domain::routes;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let _ = routes::overrides_method(target);
    for method in ["GET", "DELETE", "PATCH", "TRACE"] {
        if routes::required_permission(method, target).is_ok() {
            let path = target.split_once('?').map_or(target, |(p, _)| p);
            let rest = path
                .strip_prefix("/api/v1/")
                .expect("an accepted path is under /api/v1/");
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            for segment in rest.split('/') {
                assert!(
                    !segment.is_empty()
                        && segment != "."
                        && segment != ".."
                        && segment.len() <= routes::MAX_SEGMENT_LEN
                        && segment.bytes().all(routes::is_unreserved),
                    "accepted {target:?}"
                );
            }
        }
    }
});
