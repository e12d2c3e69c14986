//! Randomness from the operating system's CSPRNG (wasi:random in the component).

use rand_core::{OsRng, TryRngCore};

/// The alphabet of key bodies and ids.
pub const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The CSPRNG could not be read.
#[derive(Debug)]
pub struct RandomError(pub String);

/// Fills `buf` from the OS CSPRNG.
pub fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| RandomError(e.to_string()))
}

/// `len` characters drawn uniformly from `[0-9a-z]`.
pub fn alphanumeric(len: usize) -> Result<String, RandomError> {
    // Rejection sampling: 252 = 7 * 36, so bytes below it map uniformly.
    const LIMIT: u8 = 252;
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        fill(&mut buf)?;
        for &b in buf.iter().filter(|&&b| b < LIMIT) {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(b % 36)]));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphanumeric_has_the_length_and_alphabet() {
        for len in [0, 1, 16, 29, 100] {
            let s = alphanumeric(len).unwrap();
            assert_eq!(s.len(), len);
            assert!(s.bytes().all(|b| ALPHABET.contains(&b)));
        }
    }

    #[test]
    fn alphanumeric_uses_the_whole_alphabet() {
        let s = alphanumeric(20_000).unwrap();
        for c in ALPHABET {
            assert!(s.as_bytes().contains(c), "missing {}", char::from(*c));
        }
        assert_ne!(alphanumeric(29).unwrap(), alphanumeric(29).unwrap());
    }
}
