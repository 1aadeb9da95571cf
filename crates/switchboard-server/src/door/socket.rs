//! The socket under a door Switchboard drives itself (a WebSocket, a direct stream): plain TCP
//! or TLS over TCP, driven the same way: readiness is polled on the TCP socket, reads and
//! writes never block. Also the two things every socket driver does with its [`Machine`]:
//! write what it offers, and wait for the next thing to do.

use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Deadline, DoorCodec, Machine, Outbox};
use crate::tls::TlsSocket;

/// Buffers written per vectored write.
const MAX_IOVECS: usize = 64;

pub(crate) enum Socket {
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
    pub(crate) fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Socket::Tls(tls) = self
            && tls.read_would_not_block()
        {
            return Poll::Ready(Ok(()));
        }
        self.tcp().poll_read_ready(cx)
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => tcp.try_read(buf),
            Socket::Tls(tls) => tls.try_read(buf),
        }
    }

    pub(crate) fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => tcp.try_write_vectored(bufs),
            Socket::Tls(tls) => tls.try_write_vectored(bufs),
        }
    }

    /// Bytes accepted earlier still wait to reach the socket (TLS records).
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Socket::Plain(_) => false,
            Socket::Tls(tls) => tls.wants_write(),
        }
    }

    /// Writes what waits below the application's frames (TLS records).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Plain(_) => Ok(()),
            Socket::Tls(tls) => tls.flush(),
        }
    }

    /// Ends our side: TLS close_notify where there is TLS, then the TCP FIN.
    pub(crate) async fn shutdown(&mut self) {
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

/// Writes what `machine` offers until it is all written (`Ok(true)`) or the socket would
/// block (`Ok(false)`).
pub(crate) fn write_from<C: DoorCodec>(
    socket: &mut Socket,
    machine: &mut Machine<C>,
) -> io::Result<bool> {
    match socket.flush() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
        other => other?,
    }
    while machine.has_pending() {
        let result = match machine.only_pending() {
            // The common case at realistic rates: one frame, without filling the long list.
            Some(bytes) => socket.try_write_vectored(&[IoSlice::new(bytes)]),
            None => {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let count = machine.io_slices(&mut slices);
                socket.try_write_vectored(&slices[..count])
            }
        };
        match result {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => machine.written(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// What woke a socket driver.
pub(crate) enum Wake {
    Readable,
    Writable,
    /// The outbox has something (frames, a close, a heartbeat).
    Outbox,
    Deadline,
    SocketError,
}

/// Waits for the next thing to do: the outbox, the socket (readable while `reading`,
/// writable while `writing`), or the deadline. Readiness is polled directly on the socket (no
/// readiness futures in the driver's state), which also replaces whatever waker an earlier
/// owner of the socket (the HTTP connection) left registered.
pub(crate) fn poll_wake<K: Send>(
    cx: &mut Context<'_>,
    outbox: &Outbox<K>,
    socket: &mut Socket,
    reading: bool,
    writing: bool,
    deadline: &mut Deadline,
) -> Poll<Wake> {
    if outbox.poll_woken(cx).is_ready() {
        return Poll::Ready(Wake::Outbox);
    }
    if writing || socket.wants_write() {
        match socket.poll_write_ready(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Wake::Writable),
            Poll::Ready(Err(_)) => return Poll::Ready(Wake::SocketError),
            Poll::Pending => {}
        }
    }
    if reading {
        match socket.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => return Poll::Ready(Wake::Readable),
            Poll::Ready(Err(_)) => return Poll::Ready(Wake::SocketError),
            Poll::Pending => {}
        }
    }
    if deadline.poll(cx).is_ready() {
        return Poll::Ready(Wake::Deadline);
    }
    Poll::Pending
}
