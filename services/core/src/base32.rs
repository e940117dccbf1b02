//! nix-base32: Nix's own base-32 alphabet (`0123456789abcdfghijklmnpqrsvwxyz`),
//! encoding bytes from the last to the first.
//!
//! This is Nix's `printHash32`: character `n` (counted from the *end* of the
//! string) holds bits `5n .. 5n+5` of the little-endian bit string of the
//! bytes. It is not RFC 4648 base32.

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

/// Digit value of an ASCII byte, or `None` outside the alphabet.
const fn digit_table() -> [u8; 256] {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
}
static DIGITS: [u8; 256] = digit_table();

/// Length of the nix-base32 encoding of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    // ceil(8n / 5); Nix writes it as (8n - 1) / 5 + 1, which is wrong for n = 0.
    (n * 8).div_ceil(5)
}

/// Length in bytes of what an encoding of `chars` characters decodes to.
pub fn decoded_len(chars: usize) -> usize {
    chars * 5 / 8
}

/// Encode bytes.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let lo = bytes[i] >> j;
        let hi = match bytes.get(i + 1) {
            // j > 3 means the digit straddles two bytes; `<< (8 - j)` with
            // j = 0 would shift a u8 by 8, so widen first.
            Some(&next) => ((next as u16) << (8 - j)) as u8,
            None => 0,
        };
        out.push(ALPHABET[((lo | hi) & 0x1f) as usize] as char);
    }
    out
}

/// Decode a string; its length fixes the output length.
///
/// A length that no byte count encodes to (e.g. 3 characters), or set bits
/// beyond the output length, is [`Base32Error::NonCanonical`]: every byte
/// string has exactly one encoding.
pub fn decode(s: &str) -> Result<Vec<u8>, Base32Error> {
    let chars = s.as_bytes();
    let out_len = decoded_len(chars.len());
    let mut out = vec![0u8; out_len];
    for (n, &c) in chars.iter().rev().enumerate() {
        let digit = DIGITS[c as usize];
        if digit == 0xff {
            // `c` may be one byte of a multi-byte char: report the whole char.
            let ch = s[..chars.len() - n]
                .chars()
                .next_back()
                .unwrap_or(char::REPLACEMENT_CHARACTER);
            return Err(Base32Error::InvalidChar(ch));
        }
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let wide = (digit as u16) << j; // at most 12 bits
        let (lo, hi) = (wide as u8, (wide >> 8) as u8);
        match out.get_mut(i) {
            Some(slot) => *slot |= lo,
            None if lo != 0 => return Err(Base32Error::NonCanonical),
            None => {}
        }
        match out.get_mut(i + 1) {
            Some(slot) => *slot |= hi,
            None if hi != 0 => return Err(Base32Error::NonCanonical),
            None => {}
        }
    }
    if encoded_len(out_len) != chars.len() {
        return Err(Base32Error::NonCanonical);
    }
    Ok(out)
}

/// True when every byte is in the alphabet.
pub fn is_valid(s: &str) -> bool {
    s.bytes().all(|c| DIGITS[c as usize] != 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        for n in 0..200 {
            assert_eq!(decoded_len(encoded_len(n)), n);
        }
    }

    #[test]
    fn known_vectors() {
        // `nix-hash --type sha256 --to-base32` of sha256("") (e3b0c442...).
        let empty = Hash256::of(b"");
        assert_eq!(
            encode(&empty),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0]), "00");
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(encode(&[1]), "01");
        assert_eq!(encode(&[0x20]), "10");
    }

    struct Hash256;
    impl Hash256 {
        fn of(data: &[u8]) -> Vec<u8> {
            use sha2::Digest;
            sha2::Sha256::digest(data).to_vec()
        }
    }

    #[test]
    fn roundtrip_all_lengths() {
        for len in 0..70usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len * 11) as u8 ^ 0xa5).collect();
            let s = encode(&bytes);
            assert_eq!(s.len(), encoded_len(len));
            assert!(is_valid(&s));
            assert_eq!(decode(&s).unwrap(), bytes, "len {len}");
        }
        for len in 0..70usize {
            let bytes = vec![0xffu8; len];
            assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        }
    }

    #[test]
    fn rejects_bad_alphabet() {
        for bad in ["e", "o", "u", "t", "E", "A", "-", " ", "é"] {
            let s = format!("0{bad}");
            let want = bad.chars().next().unwrap();
            assert_eq!(decode(&s), Err(Base32Error::InvalidChar(want)), "{s}");
            assert!(!is_valid(&s));
        }
    }

    #[test]
    fn rejects_stray_high_bits() {
        // One byte is 2 chars = 10 bits: the top 2 bits of the first char must be 0.
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
        assert_eq!(decode("8z"), Err(Base32Error::NonCanonical));
        assert_eq!(decode("zz"), Err(Base32Error::NonCanonical));
        // sha256: 52 chars = 260 bits, the first char holds only 1 bit (< '2').
        let max = encode(&[0xff; 32]);
        assert!(max.starts_with('1'));
        let bad = format!("2{}", &max[1..]);
        assert_eq!(decode(&bad), Err(Base32Error::NonCanonical));
    }

    #[test]
    fn rejects_impossible_lengths() {
        // No byte count encodes to 1, 3 or 6 characters.
        for s in ["0", "000", "000000"] {
            assert_eq!(decode(s), Err(Base32Error::NonCanonical), "{s}");
        }
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }
}
