//! nix-base32: Nix's own base-32 alphabet (`0123456789abcdfghijklmnpqrsvwxyz`),
//! encoding bytes from the last to the first.

/// Errors decoding nix-base32.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Base32Error {
    /// A character outside the alphabet.
    #[error("invalid nix-base32 character {0:?}")]
    InvalidChar(char),
    /// Bits set beyond the decoded length (non-canonical encoding).
    #[error("non-canonical nix-base32 (stray high bits)")]
    NonCanonical,
}

/// The alphabet, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the nix-base32 encoding of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    todo!("{n}")
}

/// Length in bytes of what an encoding of `chars` characters decodes to.
pub fn decoded_len(chars: usize) -> usize {
    todo!("{chars}")
}

/// Encode bytes.
pub fn encode(bytes: &[u8]) -> String {
    todo!("{bytes:?}")
}

/// Decode a string; its length fixes the output length.
pub fn decode(s: &str) -> Result<Vec<u8>, Base32Error> {
    todo!("{s}")
}

/// True when every byte is in the alphabet.
pub fn is_valid(s: &str) -> bool {
    todo!("{s}")
}
