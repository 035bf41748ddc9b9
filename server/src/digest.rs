//! SHA-256 in lowercase hex, as `sha256sum` prints it: how a room's tokens are stored, and
//! how the bridge's `duet.status` lets anyone compare texts (equal digests, equal texts).

use sha2::{Digest, Sha256};

pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn digests_are_what_sha256sum_prints() {
        assert_eq!(
            super::sha256_hex("hi\n"),
            "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4"
        );
    }
}
