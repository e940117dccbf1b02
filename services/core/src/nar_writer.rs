//! NAR framing, written push-style into a caller's buffer (no I/O).
//!
//! A NAR is a sequence of length-prefixed, zero-padded strings plus raw file
//! contents (see `NIX-FACTS.md`). The functions here append the framing
//! *around* file contents to a `Vec<u8>`; the caller copies or streams the
//! contents themselves. Names and symlink targets are byte strings, so a
//! file name that is not UTF-8 is written exactly as the file system holds
//! it, as Nix does.
//!
//! Every function's output length depends only on its arguments, so a
//! caller that knows the sizes of all files can compute the NAR offset of
//! every piece without reading any contents (HTTP Range: "count, don't
//! read"). [`NarWriter`] checks the order of calls against the grammar.

use crate::nar::{NarEvent, NAR_MAGIC};

/// Zero bytes needed after `len` bytes to reach a multiple of 8.
pub fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Bytes a NAR string of `len` bytes takes: length word, bytes, padding.
pub fn string_len(len: u64) -> u64 {
    8 + len + padding(len) as u64
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(&[0u8; 8][..padding(s.len() as u64)]);
}

/// Errors from [`NarWriter`]: a call out of the NAR grammar's order.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarWriteError {
    /// The event is not allowed here (e.g. a second root, an entry outside
    /// a directory, an event while file contents are pending).
    #[error("NAR writer: {0} not allowed here")]
    OutOfOrder(&'static str),
    /// [`NarWriter::contents_done`] was told another length than announced.
    #[error("NAR writer: file announced {announced} bytes, {written} written")]
    ContentsLength {
        /// size in the header
        announced: u64,
        /// size reported done
        written: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Expecting a node (the root, or an entry's node).
    Node,
    /// Inside a regular file's contents of this length.
    Contents(u64),
    /// Inside a directory, between entries.
    Dir,
    /// An entry's node is written; its `EntryEnd` is next.
    EntryDone,
    /// The archive is complete.
    Done,
}

/// Push-style NAR encoder: feed it [`NarEvent`]s in archive order (the
/// same events [`crate::NarReader`] yields) and, after each
/// [`NarEvent::Regular`], the file's contents yourself followed by
/// [`NarWriter::contents_done`]. It writes the framing (magic first) to the
/// given buffer and checks the order. It does not sort or check names: the
/// caller sorts entries bytewise, as Nix does.
#[derive(Debug, Clone)]
pub struct NarWriter {
    slot: Slot,
    /// Open directories.
    depth: usize,
    started: bool,
}

impl Default for NarWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl NarWriter {
    /// A writer at the start of an archive.
    pub fn new() -> Self {
        NarWriter {
            slot: Slot::Node,
            depth: 0,
            started: false,
        }
    }

    /// True once the root node is complete.
    pub fn is_done(&self) -> bool {
        self.slot == Slot::Done
    }

    fn node_done(&mut self) {
        self.slot = if self.depth == 0 {
            Slot::Done
        } else {
            Slot::EntryDone
        };
    }

    /// Append the framing for `event` to `out`.
    pub fn event(&mut self, event: &NarEvent, out: &mut Vec<u8>) -> Result<(), NarWriteError> {
        use NarWriteError::OutOfOrder;
        let name = match event {
            NarEvent::Regular { .. } => "regular file",
            NarEvent::Symlink { .. } => "symlink",
            NarEvent::DirectoryStart => "directory",
            NarEvent::EntryStart { .. } => "entry",
            NarEvent::EntryEnd => "entry end",
            NarEvent::DirectoryEnd => "directory end",
        };
        let is_node = matches!(
            event,
            NarEvent::Regular { .. } | NarEvent::Symlink { .. } | NarEvent::DirectoryStart
        );
        if is_node {
            if self.slot != Slot::Node {
                return Err(OutOfOrder(name));
            }
            if !self.started {
                put_str(out, NAR_MAGIC.as_bytes());
                self.started = true;
            }
            put_str(out, b"(");
            put_str(out, b"type");
        }
        match event {
            NarEvent::Regular { executable, size } => {
                put_str(out, b"regular");
                if *executable {
                    put_str(out, b"executable");
                    put_str(out, b"");
                }
                put_str(out, b"contents");
                out.extend_from_slice(&size.to_le_bytes());
                self.slot = Slot::Contents(*size);
            }
            NarEvent::Symlink { target } => {
                put_str(out, b"symlink");
                put_str(out, b"target");
                put_str(out, target);
                put_str(out, b")");
                self.node_done();
            }
            NarEvent::DirectoryStart => {
                put_str(out, b"directory");
                self.depth += 1;
                self.slot = Slot::Dir;
            }
            NarEvent::EntryStart { name: entry } => {
                if self.slot != Slot::Dir {
                    return Err(OutOfOrder(name));
                }
                put_str(out, b"entry");
                put_str(out, b"(");
                put_str(out, b"name");
                put_str(out, entry);
                put_str(out, b"node");
                self.slot = Slot::Node;
            }
            NarEvent::EntryEnd => {
                if self.slot != Slot::EntryDone {
                    return Err(OutOfOrder(name));
                }
                put_str(out, b")");
                self.slot = Slot::Dir;
            }
            NarEvent::DirectoryEnd => {
                if self.slot != Slot::Dir || self.depth == 0 {
                    return Err(OutOfOrder(name));
                }
                put_str(out, b")");
                self.depth -= 1;
                self.node_done();
            }
        }
        Ok(())
    }

    /// After the `size` content bytes of the last [`NarEvent::Regular`]:
    /// append the padding and the node's end.
    pub fn contents_done(&mut self, written: u64, out: &mut Vec<u8>) -> Result<(), NarWriteError> {
        let Slot::Contents(announced) = self.slot else {
            return Err(NarWriteError::OutOfOrder("contents end"));
        };
        if announced != written {
            return Err(NarWriteError::ContentsLength { announced, written });
        }
        out.extend_from_slice(&[0u8; 8][..padding(written)]);
        put_str(out, b")");
        self.node_done();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::NarReader;

    /// Re-encode a NAR from the reader's events: must give the same bytes.
    fn roundtrip(nar: &[u8]) -> Vec<u8> {
        let mut reader = NarReader::new(nar);
        let mut w = NarWriter::new();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(ev) = reader.next().unwrap() {
            w.event(&ev, &mut out).unwrap();
            if let NarEvent::Regular { size, .. } = ev {
                let mut n = 0u64;
                loop {
                    let k = reader.read_contents(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..k]);
                    n += k as u64;
                }
                assert_eq!(n, size);
                w.contents_done(n, &mut out).unwrap();
            }
        }
        assert!(w.is_done());
        out
    }

    #[test]
    fn reencodes_nix_nars_byte_for_byte() {
        for name in ["app.nar", "lone-file.nar", "lone-link.nar"] {
            let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
            let nar = std::fs::read(&path).unwrap();
            assert!(roundtrip(&nar) == nar, "{name}");
        }
    }

    #[test]
    fn non_utf8_names_and_lengths() {
        let mut w = NarWriter::new();
        let mut out = Vec::new();
        w.event(&NarEvent::DirectoryStart, &mut out).unwrap();
        w.event(&NarEvent::EntryStart { name: vec![0xff] }, &mut out)
            .unwrap();
        w.event(
            &NarEvent::Regular {
                executable: true,
                size: 3,
            },
            &mut out,
        )
        .unwrap();
        out.extend_from_slice(b"abc");
        w.contents_done(3, &mut out).unwrap();
        w.event(&NarEvent::EntryEnd, &mut out).unwrap();
        w.event(&NarEvent::DirectoryEnd, &mut out).unwrap();
        assert!(w.is_done());
        assert_eq!(out.len() % 8, 0);
        // Nix's reader accepts it, name bytes intact.
        let mut r = NarReader::new(&out[..]);
        r.next().unwrap();
        assert_eq!(
            r.next().unwrap(),
            Some(NarEvent::EntryStart { name: vec![0xff] })
        );
        assert_eq!(string_len(0), 8);
        assert_eq!(string_len(1), 16);
        assert_eq!(string_len(8), 16);
    }

    #[test]
    fn out_of_order_is_an_error() {
        let mut out = Vec::new();
        let mut w = NarWriter::new();
        assert!(w.event(&NarEvent::EntryEnd, &mut out).is_err());
        w.event(
            &NarEvent::Regular {
                executable: false,
                size: 2,
            },
            &mut out,
        )
        .unwrap();
        assert!(w.event(&NarEvent::DirectoryStart, &mut out).is_err());
        assert_eq!(
            w.contents_done(1, &mut out),
            Err(NarWriteError::ContentsLength {
                announced: 2,
                written: 1
            })
        );
        w.contents_done(2, &mut out).unwrap();
        assert!(w.is_done());
        assert!(w.event(&NarEvent::DirectoryStart, &mut out).is_err());
    }
}
