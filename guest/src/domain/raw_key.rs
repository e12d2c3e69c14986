//! The raw key format and the hash that is the only stored form of a key.
//!
//! `sigma_sk_live_` + 29 random `[0-9a-z]` + 7 base36 digits of the CRC-32 of
//! the 43 characters before them. The checksum lets us refuse typos and
//! random guesses before any storage call, and lets secret scanners match
//! `^sigma_sk_live_[0-9a-z]{36}$` with few false positives.

use std::fmt;

use sha2::{Digest, Sha256};

use super::random::{self, ALPHABET, RandomError};

/// Every raw key starts with this.
pub const PREFIX: &str = "sigma_sk_live_";
/// Random characters after the prefix.
pub const RANDOM_LEN: usize = 29;
/// Base36 digits of the checksum.
pub const CHECKSUM_LEN: usize = 7;
/// Total length of a raw key.
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;

/// A raw API key. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RawKey(String);

/// Why a string is not a raw key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormatError {
    /// Wrong prefix, length or characters.
    Malformed,
    /// Well-formed, but the checksum does not match (a typo or a guess).
    BadChecksum,
}

impl RawKey {
    /// A new key from the OS CSPRNG.
    pub fn generate() -> Result<RawKey, RandomError> {
        let mut key = String::with_capacity(KEY_LEN);
        key.push_str(PREFIX);
        key.push_str(&random::alphanumeric(RANDOM_LEN)?);
        let sum = checksum(&key);
        key.extend(sum.iter().map(|&b| char::from(b)));
        Ok(RawKey(key))
    }

    /// Checks format and checksum; no storage is touched.
    pub fn parse(s: &str) -> Result<RawKey, KeyFormatError> {
        let Some(rest) = s.strip_prefix(PREFIX) else {
            return Err(KeyFormatError::Malformed);
        };
        if s.len() != KEY_LEN || !rest.bytes().all(in_alphabet) {
            return Err(KeyFormatError::Malformed);
        }
        let (body, sum) = s.split_at(KEY_LEN - CHECKSUM_LEN);
        if sum.as_bytes() != checksum(body) {
            return Err(KeyFormatError::BadChecksum);
        }
        Ok(RawKey(s.to_owned()))
    }

    /// The SHA-256 of the whole raw key.
    pub fn hash(&self) -> KeyHash {
        KeyHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The secret itself, for the one response that returns it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawKey(<redacted>)")
    }
}

/// The SHA-256 digest of a raw key. Its `Debug` never shows the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(<redacted>)")
    }
}

/// Whether `b` is one of [`ALPHABET`]'s characters. Two range tests: a
/// search of the alphabet for each character was, as wasm, the largest
/// single cost of checking a key.
fn in_alphabet(b: u8) -> bool {
    b.is_ascii_digit() || b.is_ascii_lowercase()
}

/// CRC-32 (zlib/IEEE) of `body`, as 7 zero-padded base36 digits (ASCII).
fn checksum(body: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(n % 36) as usize];
        n /= 36;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_match_the_published_pattern_and_parse() {
        for _ in 0..200 {
            let key = RawKey::generate().unwrap();
            let s = key.expose();
            assert_eq!(s.len(), 50);
            assert!(s.starts_with("sigma_sk_live_"));
            assert!(
                s[14..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
            );
            assert_eq!(RawKey::parse(s), Ok(key.clone()));
        }
    }

    #[test]
    fn checksum_is_crc32_in_base36() {
        // crc32("") = 0 and crc32 of "123456789" is the standard check value 0xCBF43926.
        assert_eq!(&checksum(""), b"0000000");
        assert_eq!(
            checksum("123456789").as_slice(),
            format_base36(0xCBF4_3926).as_bytes()
        );
        assert_eq!(checksum_max(), "1z141z3");
    }

    fn format_base36(mut n: u32) -> String {
        let mut s = Vec::new();
        while n > 0 {
            s.push(ALPHABET[(n % 36) as usize]);
            n /= 36;
        }
        while s.len() < 7 {
            s.push(b'0');
        }
        s.reverse();
        String::from_utf8(s).unwrap()
    }

    fn checksum_max() -> String {
        format_base36(u32::MAX)
    }

    #[test]
    fn in_alphabet_is_exactly_the_alphabet() {
        for b in 0..=u8::MAX {
            assert_eq!(in_alphabet(b), ALPHABET.contains(&b), "byte {b}");
        }
    }

    #[test]
    fn a_known_key_verifies() {
        let body = "sigma_sk_live_abc123def456ghi789jkl012mno34";
        let key = format!("{body}{}", String::from_utf8_lossy(&checksum(body)));
        assert!(RawKey::parse(&key).is_ok());
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = RawKey::generate().unwrap().expose().to_owned();
        let cases = [
            String::new(),
            "sigma_sk_live_".to_owned(),
            good[..49].to_owned(),
            format!("{good}0"),
            good.replacen("sigma_sk_live_", "sigma_sk_test_", 1),
            good.to_uppercase(),
            format!("{}-{}", &good[..20], &good[21..]),
            format!("{}é{}", &good[..20], &good[22..]),
        ];
        for case in cases {
            assert_eq!(
                RawKey::parse(&case),
                Err(KeyFormatError::Malformed),
                "{case:?}"
            );
        }
    }

    #[test]
    fn a_single_changed_character_fails_the_checksum() {
        let good = RawKey::generate().unwrap().expose().to_owned();
        for i in 14..50 {
            let mut bytes = good.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let s = String::from_utf8(bytes).unwrap();
            assert_eq!(
                RawKey::parse(&s),
                Err(KeyFormatError::BadChecksum),
                "position {i}"
            );
        }
    }

    #[test]
    fn hash_is_sha256_of_the_whole_key() {
        let key = RawKey::generate().unwrap();
        let expected: [u8; 32] = Sha256::digest(key.expose().as_bytes()).into();
        assert_eq!(key.hash(), KeyHash(expected));
        assert_eq!(
            format!("{key:?} {:?}", key.hash()),
            "RawKey(<redacted>) KeyHash(<redacted>)"
        );
    }
}
