//! Counts the client API's open connections (`atoll_http_open_connections`): a listener that
//! wraps each accepted connection in a guard which takes one off the gauge when the connection
//! is dropped, whatever ends it (the client closing, a timeout, shutdown). The active
//! connection count per region shows lopsided traffic after a DNS change.

use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A TCP listener whose accepted connections are counted in `gauge` while they are open.
pub struct CountedListener {
    inner: TcpListener,
    gauge: Gauge,
}

impl CountedListener {
    pub fn new(inner: TcpListener, gauge: Gauge) -> Self {
        Self { inner, gauge }
    }
}

/// An accepted connection, counted until dropped.
pub struct CountedStream {
    inner: TcpStream,
    gauge: Gauge,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl axum::serve::Listener for CountedListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (inner, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        self.gauge.inc();
        (
            CountedStream {
                inner,
                gauge: self.gauge.clone(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;

    #[tokio::test]
    async fn a_connection_counts_while_it_is_open() {
        let gauge = Gauge::default();
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut counted = CountedListener::new(l, gauge.clone());
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server_side, _) = counted.accept().await;
        assert_eq!(gauge.get(), 1);
        drop(client);
        assert_eq!(gauge.get(), 1, "counted until the server drops it");
        drop(server_side);
        assert_eq!(gauge.get(), 0);
    }
}
