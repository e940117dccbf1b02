//! Nix binary-cache keys (`name:base64`) and ed25519 signatures.
//!
//! Secret key file: `name:<base64 of 64 bytes: seed ‖ public>`;
//! public key: `name:<base64 of 32 bytes>`; signature (`Sig:`):
//! `name:<base64 of 64 bytes>`.

/// Errors parsing keys and signatures.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// No `name:` prefix or empty name.
    #[error("key or signature has no name (expected name:base64)")]
    NoName,
    /// Not base64.
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
    /// Parse `name:base64`.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        todo!("{s}")
    }
}

/// `name:base64`.
impl std::fmt::Display for Signature {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        todo!()
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
    /// Parse `name:base64` (32 bytes).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        todo!("{s}")
    }
    /// True iff `sig` is by this key (same name) over `fingerprint`.
    pub fn verify(&self, fingerprint: &[u8], sig: &Signature) -> bool {
        todo!("{fingerprint:?} {sig:?} {:?}", self.key)
    }
}

/// `name:base64`, as in `trusted-public-keys`.
impl std::fmt::Display for PublicKey {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        todo!()
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
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        todo!("{s}")
    }
    /// Key from a 32-byte seed (use OS randomness for real keys).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        todo!("{name}{seed:?}")
    }
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        todo!("{:?}", self.key.verifying_key())
    }
    /// Sign a fingerprint.
    pub fn sign(&self, fingerprint: &[u8]) -> Signature {
        todo!("{fingerprint:?}")
    }
    /// File contents `name:base64(seed‖public)` as Nix writes them (no newline).
    pub fn to_file_string(&self) -> String {
        todo!()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}:<redacted>)", self.name)
    }
}
