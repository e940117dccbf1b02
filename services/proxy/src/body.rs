//! NAR response bodies: the store's NAR stream, verified against the database's NarHash while streaming, optionally
//! compressed, counted.
//!
//! Verification holds back the last chunk until the hash and size are
//! checked: if the files on disk no longer match what the database says (a
//! damaged or tampered store), the body ends with an error instead, so the
//! client sees a failed transfer, never a complete bad NAR.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use ds_core::nar::NarHasher;
use ds_core::Hash;
use ds_runtime::config::NarCompression;
use futures::{Stream, StreamExt, TryStreamExt};

/// Chunk size of compressed output.
const CHUNK: usize = 64 * 1024;

/// A stream of body chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Verifies a NAR stream against the expected hash and size.
pub struct Verified {
    inner: ByteStream,
    hasher: Option<NarHasher>,
    held: Option<Bytes>,
    expected: Hash,
    expected_size: u64,
}

impl Verified {
    /// Wrap `inner`, which must produce the whole NAR.
    pub fn new(inner: ByteStream, expected: Hash, expected_size: u64) -> Self {
        Verified {
            inner,
            hasher: Some(NarHasher::new()),
            held: None,
            expected,
            expected_size,
        }
    }
}

impl Stream for Verified {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(hasher) = this.hasher.as_mut() else {
                return Poll::Ready(None);
            };
            match this.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.hasher = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    hasher.update(&chunk);
                    if hasher.len() > this.expected_size {
                        this.hasher = None;
                        return Poll::Ready(Some(Err(mismatch("NAR is longer than NarSize"))));
                    }
                    if let Some(prev) = this.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(prev)));
                    }
                }
                Poll::Ready(None) => {
                    let (hash, size) = this
                        .hasher
                        .take()
                        .map(NarHasher::finish)
                        .unwrap_or_else(|| unreachable!());
                    if size != this.expected_size || hash != this.expected {
                        tracing::error!(
                            expected = %this.expected, got = %hash, size, expected_size = this.expected_size,
                            "store files do not match the Nix database: aborting the transfer"
                        );
                        return Poll::Ready(Some(Err(mismatch(
                            "NAR does not match NarHash/NarSize",
                        ))));
                    }
                    return Poll::Ready(this.held.take().map(Ok));
                }
            }
        }
    }
}

fn mismatch(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Compress a stream with the given algorithm (`None` passes it through).
pub fn compress(inner: ByteStream, compression: NarCompression) -> ByteStream {
    use async_compression::tokio::bufread::{XzEncoder, ZstdEncoder};
    use async_compression::Level;
    use tokio_util::io::{ReaderStream, StreamReader};
    match compression {
        // Pass the store's 64 KiB chunks straight through: a reader/stream
        // round trip here would re-chunk them into 4 KiB pieces.
        NarCompression::None => inner,
        // Level 1: on the fly, speed matters more than the last few percent
        // of size (zstd -1 is markedly faster than the default -3).
        NarCompression::Zstd => Box::pin(ReaderStream::with_capacity(
            ZstdEncoder::with_quality(StreamReader::new(inner), Level::Precise(1)),
            CHUNK,
        )),
        // xz at its default preset runs at a few MB/s; preset 1 keeps
        // on-the-fly compression usable and still beats zstd on size.
        NarCompression::Xz => Box::pin(ReaderStream::with_capacity(
            XzEncoder::with_quality(StreamReader::new(inner), Level::Precise(1)),
            CHUNK,
        )),
    }
}

/// Serve only `len` bytes starting at `start` (HTTP Range on the NAR).
/// Stops pulling from `inner` once the range is complete.
pub fn slice(inner: ByteStream, start: u64, len: u64) -> ByteStream {
    Box::pin(futures::stream::unfold(
        (inner, start, len),
        |(mut inner, mut skip, mut left)| async move {
            while left > 0 {
                match inner.next().await? {
                    Err(e) => return Some((Err(e), (inner, 0, 0))),
                    Ok(chunk) => {
                        let n = chunk.len() as u64;
                        if skip >= n {
                            skip -= n;
                            continue;
                        }
                        let from = skip as usize;
                        let take = (n - skip).min(left) as usize;
                        left -= take as u64;
                        return Some((Ok(chunk.slice(from..from + take)), (inner, 0, left)));
                    }
                }
            }
            None
        },
    ))
}

/// Call `on_bytes` with the size of every chunk that goes out.
pub fn counted(inner: ByteStream, on_bytes: impl Fn(u64) + Send + 'static) -> ByteStream {
    Box::pin(inner.inspect_ok(move |chunk| on_bytes(chunk.len() as u64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let v: Vec<std::io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(v))
    }

    async fn collect(s: ByteStream) -> std::io::Result<Vec<u8>> {
        let parts: Vec<Bytes> = s.try_collect().await?;
        Ok(parts.concat())
    }

    #[tokio::test]
    async fn slice_ranges() {
        let data = b"0123456789abcdef";
        for start in 0..16u64 {
            for len in 1..=(16 - start) {
                let s = slice(chunks(&[b"0123", b"45", b"6789abc", b"def"]), start, len);
                let got = collect(s).await.unwrap();
                assert_eq!(
                    got,
                    &data[start as usize..(start + len) as usize],
                    "start {start} len {len}"
                );
            }
        }
    }

    #[tokio::test]
    async fn verified_passes_good_and_fails_bad() {
        let good = Hash::sha256(b"hello world");
        let s = Verified::new(chunks(&[b"hello", b" ", b"world"]), good.clone(), 11);
        assert_eq!(collect(Box::pin(s)).await.unwrap(), b"hello world");

        // Same length, different bytes: the last chunk is withheld, an error ends the body.
        let s = Verified::new(chunks(&[b"hello", b" ", b"WORLD"]), good.clone(), 11);
        let items: Vec<_> = Box::pin(s).collect().await;
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().as_ref(), b"hello");
        assert!(
            items[2].is_err(),
            "the final chunk must be replaced by an error"
        );

        // Longer than NarSize.
        let s = Verified::new(chunks(&[b"hello", b" world!!"]), good.clone(), 11);
        let items: Vec<_> = Box::pin(s).collect().await;
        assert!(items.last().unwrap().is_err());

        // Truncated.
        let s = Verified::new(chunks(&[b"hello"]), good, 11);
        let items: Vec<_> = Box::pin(s).collect().await;
        assert!(items.last().unwrap().is_err());
    }

    #[tokio::test]
    async fn compression_round_trips() {
        use async_compression::tokio::bufread::{XzDecoder, ZstdDecoder};
        use tokio::io::AsyncReadExt;
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [NarCompression::Zstd, NarCompression::Xz] {
            let leaked: &'static [u8] = Box::leak(data.clone().into_boxed_slice());
            let compressed = collect(compress(chunks(&[leaked]), c)).await.unwrap();
            assert!(compressed.len() < data.len());
            let mut out = Vec::new();
            let r = std::io::Cursor::new(compressed);
            match c {
                NarCompression::Zstd => ZstdDecoder::new(tokio::io::BufReader::new(r))
                    .read_to_end(&mut out)
                    .await
                    .unwrap(),
                _ => XzDecoder::new(tokio::io::BufReader::new(r))
                    .read_to_end(&mut out)
                    .await
                    .unwrap(),
            };
            assert_eq!(out, data);
        }
    }
}
