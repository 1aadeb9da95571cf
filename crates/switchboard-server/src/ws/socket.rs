//! The byte stream under a WebSocket connection: plain TCP or TLS over TCP. Both are driven
//! the same way: readiness is polled on the TCP socket, reads and writes never block.

use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::tls::TlsSocket;

pub enum Socket {
    Plain(TcpStream),
    Tls(Box<TlsSocket>),
}

impl Socket {
    fn tcp(&self) -> &TcpStream {
        match self {
            Socket::Plain(tcp) => tcp,
            Socket::Tls(tls) => &tls.tcp,
        }
    }

    /// Ready when a read would not block. Polling replaces the waker any earlier owner of
    /// the socket (the HTTP connection) left registered.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Socket::Tls(tls) = self
            && tls.read_would_not_block()
        {
            return Poll::Ready(Ok(()));
        }
        self.tcp().poll_read_ready(cx)
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => tcp.try_read(buf),
            Socket::Tls(tls) => tls.try_read(buf),
        }
    }

    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => tcp.try_write_vectored(bufs),
            Socket::Tls(tls) => tls.try_write_vectored(bufs),
        }
    }

    /// Bytes accepted earlier still wait to reach the socket (TLS records).
    pub fn wants_write(&self) -> bool {
        match self {
            Socket::Plain(_) => false,
            Socket::Tls(tls) => tls.wants_write(),
        }
    }

    /// Writes what waits below the application's frames (TLS records).
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Plain(_) => Ok(()),
            Socket::Tls(tls) => tls.flush(),
        }
    }

    /// Ends our side: TLS close_notify where there is TLS, then the TCP FIN.
    pub async fn shutdown(&mut self) {
        match self {
            Socket::Plain(tcp) => {
                let _ = tcp.shutdown().await;
            }
            Socket::Tls(tls) => {
                tls.close_notify();
                let _ = tls.tcp.shutdown().await;
            }
        }
    }
}
