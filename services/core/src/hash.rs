//! Hashes as Nix writes them: `sha256:<nix-base32>`; also read base16 and SRI.
//! Compared by value, never by text.

/// Hash algorithms Nix uses in narinfo files and the store database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// 16 bytes.
    Md5,
    /// 20 bytes.
    Sha1,
    /// 32 bytes.
    Sha256,
    /// 64 bytes.
    Sha512,
}

impl HashAlgo {
    /// Name as in `sha256:`.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }
    /// Digest length in bytes.
    #[allow(clippy::len_without_is_empty)] // a digest is never empty
    pub fn len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }
    /// The algorithm named `name` (`md5`, `sha1`, `sha256`, `sha512`).
    pub fn from_name(name: &str) -> Option<HashAlgo> {
        match name {
            "md5" => Some(HashAlgo::Md5),
            "sha1" => Some(HashAlgo::Sha1),
            "sha256" => Some(HashAlgo::Sha256),
            "sha512" => Some(HashAlgo::Sha512),
            _ => None,
        }
    }
}

/// Errors parsing a hash string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// e.g. `blake3:`
    #[error("unknown hash algorithm {0:?}")]
    UnknownAlgo(String),
    /// missing `algo:` / `algo-` prefix
    #[error("hash {0:?} has no algorithm prefix")]
    NoAlgo(String),
    /// length fits no encoding
    #[error("hash {0:?} has a wrong length for its algorithm")]
    BadLength(String),
    /// bad digits
    #[error("hash {0:?} is not valid base16, nix-base32 or base64")]
    BadEncoding(String),
}

/// A digest with its algorithm.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Hash {
    /// Algorithm.
    pub algo: HashAlgo,
    /// Raw digest bytes (length = `algo.len()`).
    pub digest: Vec<u8>,
}

impl Hash {
    /// Parse `algo:<base16|nix-base32|base64>` or SRI `algo-<base64>`.
    ///
    /// As in Nix's `Hash::parseAnyPrefixed`, the length of the digest text
    /// decides its encoding (base16 accepts either case). Base64 must be
    /// padded and canonical.
    pub fn parse(s: &str) -> Result<Hash, HashError> {
        let (algo_name, rest, sri) = match s.find([':', '-']) {
            Some(i) => (&s[..i], &s[i + 1..], s.as_bytes()[i] == b'-'),
            None => return Err(HashError::NoAlgo(s.to_owned())),
        };
        let algo = HashAlgo::from_name(algo_name)
            .ok_or_else(|| HashError::UnknownAlgo(algo_name.to_owned()))?;
        let n = algo.len();
        let base64_len = n.div_ceil(3) * 4;
        let digest = if sri {
            if rest.len() != base64_len {
                return Err(HashError::BadLength(s.to_owned()));
            }
            decode_base64(rest)
        } else if rest.len() == 2 * n {
            decode_base16(rest)
        } else if rest.len() == crate::base32::encoded_len(n) {
            crate::base32::decode(rest).ok()
        } else if rest.len() == base64_len {
            decode_base64(rest)
        } else {
            return Err(HashError::BadLength(s.to_owned()));
        };
        match digest {
            Some(digest) if digest.len() == n => Ok(Hash { algo, digest }),
            _ => Err(HashError::BadEncoding(s.to_owned())),
        }
    }
    /// Build from raw digest bytes; `None` if the length does not fit `algo`.
    pub fn from_digest(algo: HashAlgo, digest: &[u8]) -> Option<Hash> {
        (digest.len() == algo.len()).then(|| Hash {
            algo,
            digest: digest.to_vec(),
        })
    }
    /// `sha256:<nix-base32>`, as Nix writes narinfo fields.
    pub fn to_nix32_string(&self) -> String {
        format!(
            "{}:{}",
            self.algo.name(),
            crate::base32::encode(&self.digest)
        )
    }
    /// `sha256:<base16>`, as Nix's database stores `ValidPaths.hash`.
    pub fn to_base16_string(&self) -> String {
        let mut out = String::with_capacity(self.algo.name().len() + 1 + 2 * self.digest.len());
        out.push_str(self.algo.name());
        out.push(':');
        for b in &self.digest {
            out.push(char::from(HEX[(b >> 4) as usize]));
            out.push(char::from(HEX[(b & 15) as usize]));
        }
        out
    }
    /// SRI form `sha256-<base64>`, as `nix path-info --json` prints `narHash`.
    pub fn to_sri_string(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.digest);
        format!("{}-{b64}", self.algo.name())
    }
    /// SHA-256 of `data`.
    pub fn sha256(data: &[u8]) -> Hash {
        use sha2::Digest as _;
        Hash {
            algo: HashAlgo::Sha256,
            digest: sha2::Sha256::digest(data).to_vec(),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode_base16(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Displays as `to_nix32_string`.
impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_nix32_string())
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hash({})", self.to_nix32_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_B64: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn sha256_of_empty() {
        let h = Hash::sha256(b"");
        assert_eq!(h.to_base16_string(), format!("sha256:{EMPTY_HEX}"));
        assert_eq!(h.to_nix32_string(), format!("sha256:{EMPTY_NIX32}"));
        assert_eq!(h.to_sri_string(), format!("sha256-{EMPTY_B64}"));
        assert_eq!(h.to_string(), h.to_nix32_string());
        assert_eq!(format!("{h:?}"), format!("Hash(sha256:{EMPTY_NIX32})"));
    }

    #[test]
    fn parses_every_encoding_to_the_same_value() {
        let want = Hash::sha256(b"");
        for s in [
            format!("sha256:{EMPTY_HEX}"),
            format!("sha256:{}", EMPTY_HEX.to_uppercase()),
            format!("sha256:{EMPTY_NIX32}"),
            format!("sha256:{EMPTY_B64}"),
            format!("sha256-{EMPTY_B64}"),
        ] {
            assert_eq!(Hash::parse(&s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn other_algorithms_match_nix_hash() {
        // `nix-hash --type md5|sha1|sha512 --to-base32 <hex>` (Nix 2.8).
        let md5 = Hash::parse("md5:ff000000000000000000000000000001").unwrap();
        assert_eq!(md5.to_nix32_string(), "md5:0100000000000000000000007z");
        let sha1 = Hash::parse("sha1:0123456789abcdef0123456789abcdef01234567").unwrap();
        assert_eq!(
            sha1.to_nix32_string(),
            "sha1:cx2j60ggrnmqjrs54c0yzkdbi5kla8q1"
        );
        assert_eq!(
            Hash::parse("sha1:cx2j60ggrnmqjrs54c0yzkdbi5kla8q1").unwrap(),
            sha1
        );
        let hex512 = format!("sha512:{:0128}", 7);
        let sha512 = Hash::parse(&hex512).unwrap();
        assert_eq!(
            sha512.to_nix32_string(),
            format!("sha512:03h{}", "0".repeat(100))
        );
        assert_eq!(sha512.to_base16_string(), hex512);
        assert_eq!(Hash::parse(&sha512.to_sri_string()).unwrap(), sha512);
    }

    #[test]
    fn errors() {
        assert_eq!(
            Hash::parse(EMPTY_NIX32),
            Err(HashError::NoAlgo(EMPTY_NIX32.into()))
        );
        assert_eq!(
            Hash::parse(&format!("blake3:{EMPTY_NIX32}")),
            Err(HashError::UnknownAlgo("blake3".into()))
        );
        assert_eq!(
            Hash::parse("sha256:abc"),
            Err(HashError::BadLength("sha256:abc".into()))
        );
        assert_eq!(
            Hash::parse("sha256:"),
            Err(HashError::BadLength("sha256:".into()))
        );
        // SRI must be base64, even when the length would fit another encoding
        let sri_nix32 = format!("sha256-{EMPTY_NIX32}");
        assert_eq!(
            Hash::parse(&sri_nix32),
            Err(HashError::BadLength(sri_nix32))
        );
        for bad in [
            format!("sha256:{}", EMPTY_NIX32.replace('m', "e")),
            format!("sha256:{}", EMPTY_HEX.replace('e', "g")),
            format!("sha256:{}", EMPTY_B64.replace('+', "!")),
            // non-canonical: stray high bit in nix-base32
            format!("sha256:2{}", &EMPTY_NIX32[1..]),
            // non-canonical: trailing bits in base64
            format!("sha256-{}", EMPTY_B64.replace("FU=", "FV=")),
        ] {
            assert_eq!(
                Hash::parse(&bad),
                Err(HashError::BadEncoding(bad.clone())),
                "{bad}"
            );
        }
    }

    #[test]
    fn from_digest_checks_length() {
        assert!(Hash::from_digest(HashAlgo::Sha256, &[0; 31]).is_none());
        assert_eq!(
            Hash::from_digest(HashAlgo::Md5, &[0; 16]).unwrap().digest,
            vec![0; 16]
        );
    }
}
