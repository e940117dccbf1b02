//! The connection's socket, with NAR file regions sent by `sendfile`.
//!
//! On a verified-cache hit the store yields long file contents as file
//! regions (`ds_store::region`): `Bytes` whose memory maps the file and
//! which are registered by address. Hyper queues response body buffers and
//! writes them with `writev` (forced with `http1::Builder::writev(true)`,
//! see [`crate::server`]), so every buffer reaches [`SendFile`] as it was
//! yielded. A buffer that is a region goes out with `sendfile` from the
//! store file, page cache to socket, never through user space; after it the
//! store checks the file's metadata and fails the write if it changed,
//! which ends the connection before any later byte. Everything else is
//! written as usual.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that sends file regions with `sendfile`.
pub struct SendFile {
    tcp: TcpStream,
    /// Bytes sent by `sendfile` (`nar_bytes_sendfile` in /metrics).
    sent: Counter,
}

impl SendFile {
    /// Wrap `tcp`, counting `sendfile` bytes in `sent`.
    pub fn new(tcp: TcpStream, sent: Counter) -> Self {
        SendFile { tcp, sent }
    }

    /// `found` (a buffer that is a region): send (some of) it once the
    /// socket is writable.
    fn poll_region(
        &mut self,
        cx: &mut Context<'_>,
        found: &ds_store::region::Found,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self
                .tcp
                .try_io(Interest::WRITABLE, || found.send(&self.tcp))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
                Ok(n) => {
                    self.sent.inc_by(n as u64);
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }
}

impl AsyncRead for SendFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(found) = ds_store::region::lookup(buf) {
            return this.poll_region(cx, &found);
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    /// Regions one at a time, other buffers together up to the next region:
    /// each call writes one of those, and hyper calls again for the rest.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if let Some(found) = ds_store::region::lookup(&bufs[first]) {
            return this.poll_region(cx, &found);
        }
        let end = bufs[first..]
            .iter()
            .position(|b| ds_store::region::is_region(b))
            .map_or(bufs.len(), |i| first + i);
        Pin::new(&mut this.tcp).poll_write_vectored(cx, &bufs[first..end])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
