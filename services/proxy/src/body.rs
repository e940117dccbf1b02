//! NAR response bodies: local NARs from the store's pull-based verified
//! streams polled under the bounded blocking pool ([`bounded`]), remote
//! ones verified as they pass ([`verified`]), optionally compressed off the
//! async workers ([`compress`]), cut to a verified window for Range
//! ([`window`]), counted.

use std::pin::Pin;

use bytes::Bytes;
use ds_runtime::config::NarCompression;
use futures::{Stream, StreamExt, TryStreamExt};

/// A stream of body chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// One compressor, fed chunk by chunk on the blocking pool.
enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Xz(liblzma::write::XzEncoder<Vec<u8>>),
}

impl Encoder {
    fn new(compression: NarCompression) -> std::io::Result<Option<Self>> {
        Ok(match compression {
            NarCompression::None => None,
            // Level 1: on the fly, speed matters more than the last few
            // percent of size (zstd -1 is markedly faster than the default -3).
            NarCompression::Zstd => Some(Encoder::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                1,
            )?)),
            // xz at its default preset runs at a few MB/s; preset 1 keeps
            // on-the-fly compression usable and still beats zstd on size.
            NarCompression::Xz => Some(Encoder::Xz(liblzma::write::XzEncoder::new(Vec::new(), 1))),
        })
    }

    /// Compress `input`; returns what the encoder let out so far.
    fn push(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        match self {
            Encoder::Zstd(e) => {
                e.write_all(input)?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Xz(e) => {
                e.write_all(input)?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// End the compressed stream; returns the rest of it.
    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
        }
    }
}

/// Compress a stream with the given algorithm (`None` passes it through).
///
/// Each input chunk is compressed in one [`crate::blocking::run`] call, so
/// the encoder never runs on an async worker, and nothing is held while the
/// client does not read (the next chunk is compressed only when the body is
/// polled for it).
pub fn compress(inner: ByteStream, compression: NarCompression) -> ByteStream {
    let encoder = match Encoder::new(compression) {
        Ok(None) => return inner,
        Ok(Some(e)) => e,
        Err(e) => return Box::pin(futures::stream::iter([Err(e)])),
    };
    Box::pin(futures::stream::unfold(
        (inner, Some(encoder)),
        |(mut inner, encoder)| async move {
            let mut encoder = encoder?;
            loop {
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        let step = crate::blocking::run(move || {
                            let out = encoder.push(&chunk);
                            (encoder, out)
                        })
                        .await;
                        match step {
                            Ok((e, Ok(out))) => {
                                encoder = e;
                                if !out.is_empty() {
                                    return Some((Ok(Bytes::from(out)), (inner, Some(encoder))));
                                }
                            }
                            Ok((_, Err(e))) | Err(e) => return Some((Err(e), (inner, None))),
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (inner, None))),
                    None => {
                        let out = crate::blocking::run(move || encoder.finish())
                            .await
                            .and_then(|r| r);
                        return Some((out.map(Bytes::from), (inner, None)));
                    }
                }
            }
        },
    ))
}

/// A store NAR stream (`ds_store`'s pull-based streams run one short
/// blocking step per poll that finds no chunk ready) polled under a
/// [`crate::blocking`] permit: at most [`crate::blocking::WORK_PERMITS`]
/// such steps run at once, however many responses stream, and a response
/// whose client stopped reading is not polled, so it holds no permit and no
/// thread.
pub fn bounded(inner: ByteStream) -> ByteStream {
    Box::pin(futures::stream::unfold(inner, |mut inner| async move {
        let permit = crate::blocking::acquire().await;
        let item = inner.next().await;
        drop(permit);
        item.map(|item| (item, inner))
    }))
}

/// Bytes `start..=end` of `inner` (a NAR stream that ends with an error
/// unless the whole NAR verified: `LocalStore::nar_stream_verified[_from]`
/// or [`verified`]), for HTTP Range. All of `inner` is consumed, past `end`
/// too, and the last piece of the window is withheld until `inner` ended
/// cleanly, so a Range response, like a full one, never completes with
/// bytes of a NAR that failed verification.
pub fn window(inner: ByteStream, start: u64, end: u64) -> ByteStream {
    struct St {
        inner: ByteStream,
        pos: u64,
        held: Option<Bytes>,
        done: bool,
    }
    let st = St {
        inner,
        pos: 0,
        held: None,
        done: false,
    };
    Box::pin(futures::stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    let (from, to) = (st.pos, st.pos + chunk.len() as u64);
                    st.pos = to;
                    let (a, b) = (from.max(start), to.min(end + 1));
                    if a < b {
                        let piece = chunk.slice((a - from) as usize..(b - from) as usize);
                        if let Some(prev) = st.held.replace(piece) {
                            return Some((Ok(prev), st));
                        }
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    if st.pos <= end {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("NAR ended at byte {} before the range's end {end}", st.pos),
                        );
                        return Some((Err(e), st));
                    }
                    return st.held.take().map(|last| (Ok(last), st));
                }
            }
        }
    }))
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
    async fn window_is_exact_and_withholds_its_end_until_the_source_verified() {
        let data = b"0123456789abcdef";
        let good = ds_core::Hash::sha256(data);
        let parts: &[&'static [u8]] = &[b"0123", b"45", b"6789abc", b"def"];
        for (a, b) in [(0, 15), (0, 0), (3, 9), (5, 5), (6, 12), (15, 15)] {
            let got = collect(window(verified(chunks(parts), good.clone(), 16), a, b))
                .await
                .unwrap();
            assert_eq!(got, &data[a as usize..=b as usize], "{a}-{b}");
        }
        // A source that fails verification: no window completes, even one
        // that ends long before the damage.
        for (a, b) in [(0, 3), (3, 9), (10, 15)] {
            let bad = verified(chunks(parts), ds_core::Hash::sha256(b"other"), 16);
            let mut s = window(bad, a, b);
            let mut got = Vec::new();
            let mut failed = false;
            while let Some(item) = s.next().await {
                match item {
                    Ok(x) => got.extend_from_slice(&x),
                    Err(_) => failed = true,
                }
            }
            assert!(failed, "{a}-{b}");
            assert!(
                got.len() < (b - a + 1) as usize,
                "{a}-{b}: {} bytes",
                got.len()
            );
        }
        // A source shorter than the window is an error.
        assert!(collect(window(chunks(&[b"0123"]), 2, 9)).await.is_err());
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
