//! NAR response bodies: the store's NAR stream (verified against the
//! database's NarHash by `ds_store`, see `LocalStore::nar_stream_verified`),
//! optionally compressed, cut to length for Range, counted.

use std::pin::Pin;

use bytes::Bytes;
use ds_runtime::config::NarCompression;
use futures::{Stream, StreamExt, TryStreamExt};

/// Chunk size of compressed output.
const CHUNK: usize = 64 * 1024;

/// A stream of body chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

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

/// Serve only the first `len` bytes of `inner` (HTTP Range: the store's
/// `nar_stream_from` already skipped to the start). Stops pulling from
/// `inner` once `len` bytes went out.
pub fn limit(inner: ByteStream, len: u64) -> ByteStream {
    Box::pin(futures::stream::unfold(
        (inner, len),
        |(mut inner, left)| async move {
            if left == 0 {
                return None;
            }
            match inner.next().await? {
                Err(e) => Some((Err(e), (inner, 0))),
                Ok(chunk) => {
                    let take = (chunk.len() as u64).min(left) as usize;
                    Some((Ok(chunk.slice(..take)), (inner, left - take as u64)))
                }
            }
        },
    ))
}

/// Verify a NAR stream against its NarHash and NarSize while it passes
/// through, holding back the latest chunk until the next one arrives: the
/// last chunk goes out only once the whole NAR verified. A mismatch, an
/// early end or too many bytes end the stream with an error instead, so the
/// client sees a failed transfer, never a complete bad NAR.
pub fn verified(inner: ByteStream, expected: ds_core::Hash, size: u64) -> ByteStream {
    struct State {
        inner: ByteStream,
        hasher: ds_core::NarHasher,
        held: Option<Bytes>,
        expected: ds_core::Hash,
        size: u64,
        done: bool,
    }
    let state = State {
        inner,
        hasher: ds_core::NarHasher::new(),
        held: None,
        expected,
        size,
        done: false,
    };
    let fail = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    Box::pin(futures::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.inner.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => {
                    st.hasher.update(&chunk);
                    if st.hasher.len() > st.size {
                        st.done = true;
                        let e = fail(format!("NAR longer than its NarSize {}", st.size));
                        return Some((Err(e), st));
                    }
                    if let Some(prev) = st.held.replace(chunk) {
                        return Some((Ok(prev), st));
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    let hasher = std::mem::take(&mut st.hasher);
                    let (hash, len) = hasher.finish();
                    if len != st.size {
                        let e = fail(format!("NAR ended after {len} of {} bytes", st.size));
                        return Some((Err(e), st));
                    }
                    if hash != st.expected {
                        let e = fail("NAR does not match its NarHash".into());
                        return Some((Err(e), st));
                    }
                    return st.held.take().map(|last| (Ok(last), st));
                }
            }
        }
    }))
}

/// Exactly `len` bytes of `inner`: fewer is an error (so the response is
/// cut, not ended cleanly), more is not read.
pub fn exact(inner: ByteStream, len: u64) -> ByteStream {
    Box::pin(futures::stream::unfold(
        (inner, len),
        |(mut inner, left)| async move {
            if left == 0 {
                return None;
            }
            match inner.next().await {
                None => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("source ended {left} bytes early"),
                    )),
                    (inner, 0),
                )),
                Some(Err(e)) => Some((Err(e), (inner, 0))),
                Some(Ok(chunk)) => {
                    let take = (chunk.len() as u64).min(left) as usize;
                    Some((Ok(chunk.slice(..take)), (inner, left - take as u64)))
                }
            }
        },
    ))
}

/// A zstd skippable frame with no content: every zstd decoder (libzstd, so
/// every Nix, checked with Nix 2.8 and 2.26) skips it. A NAR body may start
/// with any number of them.
pub const ZSTD_KEEPALIVE: [u8; 8] = [0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0];

/// Until `raw` yields its first chunk, emit a [`ZSTD_KEEPALIVE`] frame every
/// `every`; then the stream `then` makes of the whole of `raw` (which must
/// be zstd output). An error or an end before the first chunk ends the body
/// with an error. This keeps a client's transfer alive while a NAR is still
/// being fetched and verified, without a single byte of it going out before
/// it verified.
pub fn keepalive_until_first<F>(raw: ByteStream, every: std::time::Duration, then: F) -> ByteStream
where
    F: FnOnce(ByteStream) -> ByteStream + Send + 'static,
{
    enum St<F> {
        Waiting {
            raw: ByteStream,
            then: F,
            tick: tokio::time::Instant,
        },
        Streaming(ByteStream),
        Done,
    }
    let start = St::Waiting {
        raw,
        then,
        tick: tokio::time::Instant::now() + every,
    };
    Box::pin(futures::stream::unfold(start, move |st| async move {
        match st {
            St::Waiting {
                mut raw,
                then,
                tick,
            } => {
                let first = tokio::select! {
                    item = raw.next() => Some(item),
                    _ = tokio::time::sleep_until(tick) => None,
                };
                match first {
                    None => Some((
                        Ok(Bytes::from_static(&ZSTD_KEEPALIVE)),
                        St::Waiting {
                            raw,
                            then,
                            tick: tokio::time::Instant::now() + every,
                        },
                    )),
                    Some(Some(Ok(chunk))) => {
                        let whole: ByteStream =
                            Box::pin(futures::stream::iter([Ok(chunk)]).chain(raw));
                        let mut out = then(whole);
                        let item = out.next().await?;
                        Some((item, St::Streaming(out)))
                    }
                    Some(Some(Err(e))) => Some((Err(e), St::Done)),
                    Some(None) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the NAR failed on every source",
                        )),
                        St::Done,
                    )),
                }
            }
            St::Streaming(mut out) => {
                let item = out.next().await?;
                Some((item, St::Streaming(out)))
            }
            St::Done => None,
        }
    }))
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
    async fn limit_lengths() {
        let data = b"0123456789abcdef";
        for len in 0..=16u64 {
            let s = limit(chunks(&[b"0123", b"45", b"6789abc", b"def"]), len);
            let got = collect(s).await.unwrap();
            assert_eq!(got, &data[..len as usize], "len {len}");
        }
    }

    #[tokio::test]
    async fn verified_passes_a_good_nar_and_cuts_a_bad_one() {
        let data = b"0123456789abcdef";
        let good = ds_core::Hash::sha256(data);
        let parts: &[&'static [u8]] = &[b"0123", b"45", b"6789abc", b"def"];
        assert_eq!(
            collect(verified(chunks(parts), good.clone(), 16))
                .await
                .unwrap(),
            data
        );
        // Wrong hash, short, long: an error, and the last chunk never goes out.
        for (parts, size, hash) in [
            (parts, 16, ds_core::Hash::sha256(b"other")),
            (&parts[..3], 16, good.clone()),
            (parts, 15, good.clone()),
        ] {
            let mut s = verified(chunks(parts), hash, size);
            let mut got = Vec::new();
            let mut failed = false;
            while let Some(item) = s.next().await {
                match item {
                    Ok(b) => got.extend_from_slice(&b),
                    Err(_) => failed = true,
                }
            }
            assert!(failed, "{size}");
            assert!(
                got.len() < data.len().min(size as usize),
                "{} bytes passed",
                got.len()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_frames_then_a_zstd_body_that_decodes_to_the_nar() {
        use async_compression::tokio::bufread::ZstdDecoder;
        use std::time::Duration;
        use tokio::io::AsyncReadExt;
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let leaked: &'static [u8] = Box::leak(data.clone().into_boxed_slice());
        // The NAR shows up after 65 s (a download, then verification).
        let late: ByteStream = Box::pin(futures::stream::once(async move {
            tokio::time::sleep(Duration::from_secs(65)).await;
            Ok(Bytes::from_static(leaked))
        }));
        let body = keepalive_until_first(late, Duration::from_secs(20), |s| {
            compress(s, NarCompression::Zstd)
        });
        let out = collect(body).await.unwrap();
        let frames = out.chunks(8).take_while(|c| *c == ZSTD_KEEPALIVE).count();
        assert_eq!(frames, 3, "a frame at 20, 40 and 60 s");
        // Each keep-alive is a frame of its own: decode frame after frame,
        // as libzstd's streaming decoder (Nix's) does.
        let mut decoded = Vec::new();
        let mut decoder = ZstdDecoder::new(tokio::io::BufReader::new(std::io::Cursor::new(out)));
        decoder.multiple_members(true);
        decoder.read_to_end(&mut decoded).await.unwrap();
        assert!(
            decoded == data,
            "decoded {} bytes, want {}",
            decoded.len(),
            data.len()
        );
        // A NAR that never comes: frames, then an error (not a clean end).
        let never: ByteStream = Box::pin(futures::stream::once(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Err(std::io::Error::other("every source failed"))
        }));
        let mut s = keepalive_until_first(never, Duration::from_secs(20), |s| s);
        assert_eq!(s.next().await.unwrap().unwrap().as_ref(), &ZSTD_KEEPALIVE);
        assert!(s.next().await.unwrap().is_err());
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn exact_fails_short_sources() {
        assert_eq!(
            collect(exact(chunks(&[b"0123", b"4567"]), 6))
                .await
                .unwrap(),
            b"012345"
        );
        assert!(collect(exact(chunks(&[b"0123"]), 6)).await.is_err());
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
