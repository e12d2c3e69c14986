//! `POST /api/v1/api-keys` with any body: never a panic, never a 500, and a
//! key is stored only when the body is a valid request (name and
//! permissions checked again here from the reply).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigma_keys_guest::domain::api::{
    self, BodyError, BodySource, Caller, Outcome, RequestHead, Settings,
};
use sigma_keys_guest::domain::memory::MemoryStore;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// HS256 over {"tenant":"acme","exp":4102444800} with SECRET (made once with
/// Python's hmac); exp is in 2100, so the settings allow a long lifetime.
const TOKEN: &str = include_str!("../token.txt");

struct Body(Vec<u8>);

impl BodySource for Body {
    fn read_limited(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        if self.0.len() > limit {
            return Err(BodyError::TooLarge);
        }
        Ok(std::mem::take(&mut self.0))
    }
}

fuzz_target!(|data: &[u8]| {
    let store = MemoryStore::default();
    let settings = Settings {
        jwt_secret: Some(SECRET.to_vec()),
        jwt_max_lifetime_secs: 100 * 365 * 86_400,
        ..Settings::default()
    };
    let auth = format!("Bearer {}", TOKEN.trim());
    let headers = vec![("authorization".to_string(), auth.into_bytes())];
    let headers = sigma_keys_guest::domain::headers::borrowed(&headers);
    let head = RequestHead {
        method: "POST",
        path_with_query: "/api/v1/api-keys",
        headers: &headers,
        peer: None,
        tls: false,
    };
    let outcome = api::handle(
        &store,
        &settings,
        &head,
        &mut Body(data.to_vec()),
        &mut Caller::default(),
    );
    let Outcome::Reply(reply) = outcome else {
        panic!("a management request was forwarded");
    };
    assert_ne!(reply.status, 500, "{:?}", reply.body);
    let stored = store.rows.borrow();
    if reply.status == 201 {
        assert_eq!(stored.len(), 1);
        let name = reply.body["name"].as_str().expect("name");
        assert!(!name.is_empty() && name.trim() == name && name.chars().count() <= 200);
        assert!(!name.chars().any(char::is_control));
        let permissions = reply.body["permissions"].as_array().expect("permissions");
        assert!(!permissions.is_empty() && permissions.len() <= 5);
    } else {
        assert!(stored.is_empty(), "a refused request stored a key");
    }
});
