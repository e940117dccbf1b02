//! NAR streaming hash and a validating NAR reader.

use crate::Hash;

/// SHA-256 and byte count over a NAR stream, fed in chunks.
#[derive(Clone, Default)]
pub struct NarHasher {
    _private: (),
}

impl NarHasher {
    /// New hasher.
    pub fn new() -> Self {
        todo!()
    }
    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        todo!("{data:?}")
    }
    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        todo!()
    }
    /// `(sha256, size)`.
    pub fn finish(self) -> (Hash, u64) {
        todo!()
    }
}

impl std::io::Write for NarHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
