//! Nix binary-cache keys (`name:base64`) and ed25519 signatures.
//!
//! Secret key file: `name:<base64 of 64 bytes: seed ‖ public>`;
//! public key: `name:<base64 of 32 bytes>`; signature (`Sig:`):
//! `name:<base64 of 64 bytes>`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// Split `name:base64` (surrounding whitespace ignored) and decode the key
/// part to exactly `want` bytes. The name is everything before the first
/// `:`, as in Nix; errors never echo the base64 (it may be a secret).
fn split_decode(s: &str, want: usize) -> Result<(String, Vec<u8>), KeyError> {
    let s = s.trim();
    let (name, b64) = s.split_once(':').ok_or(KeyError::NoName)?;
    if name.is_empty() {
        return Err(KeyError::NoName);
    }
    let bytes = B64
        .decode(b64)
        .map_err(|_| KeyError::BadBase64(name.to_owned()))?;
    if bytes.len() != want {
        return Err(KeyError::BadLength {
            name: name.to_owned(),
            got: bytes.len(),
            want,
        });
    }
    Ok((name.to_owned(), bytes))
}

/// Errors parsing keys and signatures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// No `name:` prefix or empty name.
    #[error("key or signature has no name (expected name:base64)")]
    NoName,
    /// Not base64 (holds the key name, never the key).
    #[error("key or signature {0:?} is not valid base64")]
    BadBase64(String),
    /// Wrong decoded length.
    #[error("key or signature {name:?} has {got} bytes, expected {want}")]
    BadLength {
        /// key name
        name: String,
        /// decoded length
        got: usize,
        /// expected length
        want: usize,
    },
    /// Secret key's public half does not match its seed.
    #[error("secret key {0:?} is inconsistent (public half does not match the seed)")]
    Inconsistent(String),
    /// Public key bytes are not a valid curve point.
    #[error("public key {0:?} is not a valid ed25519 key")]
    BadPoint(String),
}

/// A signature as carried in narinfo `Sig:` lines.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    /// Key name.
    pub key_name: String,
    /// ed25519 signature bytes.
    pub bytes: [u8; 64],
}

impl Signature {
    /// Parse `name:base64` (64 bytes; surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (key_name, bytes) = split_decode(s, 64)?;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&bytes);
        Ok(Signature {
            key_name,
            bytes: sig,
        })
    }
}

/// `name:base64`.
impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.key_name, B64.encode(self.bytes))
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({self})")
    }
}

/// A trusted public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Key name.
    pub name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// Parse `name:base64` (32 bytes; surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode(s, 32)?;
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&bytes);
        let key = ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map_err(|_| KeyError::BadPoint(name.clone()))?;
        Ok(PublicKey { name, key })
    }
    /// True iff `sig` is by this key (same name) over `fingerprint`.
    ///
    /// Uses strict verification (rejects small-order keys and points and
    /// non-canonical signatures), like libsodium's
    /// `crypto_sign_verify_detached` that Nix uses.
    pub fn verify(&self, fingerprint: &[u8], sig: &Signature) -> bool {
        if sig.key_name != self.name {
            return false;
        }
        let sig = ed25519_dalek::Signature::from_bytes(&sig.bytes);
        self.key.verify_strict(fingerprint, &sig).is_ok()
    }
    /// The raw 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }
}

/// `name:base64`, as in `trusted-public-keys`.
impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A secret signing key. Debug never prints the secret.
#[derive(Clone)]
pub struct SecretKey {
    /// Key name.
    pub name: String,
    key: ed25519_dalek::SigningKey,
}

impl SecretKey {
    /// Parse a secret key file's contents (surrounding whitespace ignored).
    ///
    /// The 64 bytes are `seed ‖ public`; the public half must be the one the
    /// seed derives, or [`KeyError::Inconsistent`].
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode(s, 64)?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[..32]);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[32..] {
            return Err(KeyError::Inconsistent(name));
        }
        Ok(SecretKey { name, key })
    }
    /// Key from a 32-byte seed (use OS randomness for real keys).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        SecretKey {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }
    /// Sign a fingerprint (deterministic: the same bytes Nix/libsodium give).
    pub fn sign(&self, fingerprint: &[u8]) -> Signature {
        use ed25519_dalek::Signer as _;
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(fingerprint).to_bytes(),
        }
    }
    /// File contents `name:base64(seed‖public)` as Nix writes them (no newline).
    pub fn to_file_string(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}:<redacted>)", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_seed("test-1", [7; 32])
    }

    #[test]
    fn sign_verify_roundtrip() {
        let sk = key();
        let pk = sk.public();
        let sig = sk.sign(b"1;/nix/store/x;sha256:y;1;");
        assert_eq!(sig.key_name, "test-1");
        assert!(pk.verify(b"1;/nix/store/x;sha256:y;1;", &sig));
        // tampered fingerprint
        assert!(!pk.verify(b"1;/nix/store/x;sha256:y;2;", &sig));
        // tampered signature
        let mut bad = sig.clone();
        bad.bytes[10] ^= 1;
        assert!(!pk.verify(b"1;/nix/store/x;sha256:y;1;", &bad));
        // right bytes, wrong key name
        let renamed = Signature {
            key_name: "test-2".into(),
            ..sig.clone()
        };
        assert!(!pk.verify(b"1;/nix/store/x;sha256:y;1;", &renamed));
        // same name, other key
        let other = SecretKey::from_seed("test-1", [8; 32]).public();
        assert!(!other.verify(b"1;/nix/store/x;sha256:y;1;", &sig));
    }

    #[test]
    fn text_forms_roundtrip() {
        let sk = key();
        let file = sk.to_file_string();
        assert!(file.starts_with("test-1:") && !file.ends_with('\n'));
        let back = SecretKey::parse(&format!("  {file}\n")).unwrap();
        assert_eq!(back.to_file_string(), file);
        assert_eq!(back.name, "test-1");
        let pk = sk.public();
        assert_eq!(PublicKey::parse(&pk.to_string()).unwrap(), pk);
        assert_eq!(PublicKey::parse(&format!("{pk}\n")).unwrap(), pk);
        let sig = sk.sign(b"x");
        assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
        assert_eq!(format!("{sig:?}"), format!("Signature({sig})"));
        assert_eq!(format!("{pk:?}"), format!("PublicKey({pk})"));
        // Debug never shows the secret
        assert_eq!(format!("{sk:?}"), "SecretKey(test-1:<redacted>)");
    }

    #[test]
    fn parse_errors() {
        let sk = key();
        let pk = sk.public().to_string();
        let b64 = pk.split_once(':').unwrap().1;
        assert_eq!(PublicKey::parse(b64), Err(KeyError::NoName));
        assert_eq!(PublicKey::parse(&format!(":{b64}")), Err(KeyError::NoName));
        assert_eq!(
            PublicKey::parse("k:not base64!"),
            Err(KeyError::BadBase64("k".into()))
        );
        assert_eq!(
            PublicKey::parse(&format!("k:{}", &b64[..b64.len() - 1])),
            Err(KeyError::BadBase64("k".into()))
        );
        assert_eq!(
            PublicKey::parse("k:AAAA"),
            Err(KeyError::BadLength {
                name: "k".into(),
                got: 3,
                want: 32
            })
        );
        // a secret key where a public one is expected, and vice versa
        let file = sk.to_file_string();
        assert!(matches!(
            PublicKey::parse(&file),
            Err(KeyError::BadLength { got: 64, .. })
        ));
        assert!(matches!(
            SecretKey::parse(&pk),
            Err(KeyError::BadLength { got: 32, .. })
        ));
        assert!(matches!(
            Signature::parse(&pk),
            Err(KeyError::BadLength { got: 32, .. })
        ));
        // secret key whose public half belongs to another seed
        let mut bytes = sk.key.to_keypair_bytes();
        bytes[40] ^= 0xff;
        let tampered = format!("test-1:{}", B64.encode(bytes));
        assert_eq!(
            SecretKey::parse(&tampered).unwrap_err(),
            KeyError::Inconsistent("test-1".into())
        );
        // a 32-byte string that is no curve point (y = 2 is not on the curve)
        let mut not_point = [0u8; 32];
        not_point[0] = 2;
        assert_eq!(
            PublicKey::parse(&format!("k:{}", B64.encode(not_point))),
            Err(KeyError::BadPoint("k".into()))
        );
        // errors about a secret key never contain its base64
        let err = SecretKey::parse("name:AAAA").unwrap_err().to_string();
        assert!(!err.contains("AAAA"), "{err}");
    }
}
