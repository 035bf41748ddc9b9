//! Room tokens: random join secrets, stored only as a SHA-256 hash.
//!
//! A token has 256 random bits, so a fast hash is enough: there is nothing to brute-force that
//! a slow password hash would protect. Comparison is on digests, so timing reveals nothing
//! about the token itself.

use crate::digest::sha256_hex;

/// A fresh token: 32 random bytes from the operating system, hex-encoded.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is unavailable");
    hex::encode(bytes)
}

pub fn hash_token(token: &str) -> String {
    sha256_hex(token)
}

pub fn token_matches(token: &str, stored_hash: &str) -> bool {
    hash_token(token) == stored_hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_verified_by_hash() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let stored = hash_token(&a);
        assert_ne!(stored, a);
        assert!(token_matches(&a, &stored));
        assert!(!token_matches(&b, &stored));
        assert!(!token_matches("", &stored));
    }
}
