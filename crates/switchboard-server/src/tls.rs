//! TLS (HTTPS/WSS), switched on by `[tls] cert` and `key`. The HTTP exchange runs over
//! tokio-rustls; an upgraded WebSocket takes the TCP stream and the rustls session apart and
//! drives rustls' sans-I/O API from its own readiness loop (see `door/socket.rs`).

use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

/// Builds the server's TLS settings from PEM files (certificate chain, private key).
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect())
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read TLS key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not work together: {e}"))?;
    // Every door is HTTP/1.1 (WebSocket upgrades included).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Non-blocking std I/O on a tokio socket, for rustls' `read_tls`/`write_tls`.
struct SyncIo<'a>(&'a TcpStream);

impl Read for SyncIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for SyncIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS session over a TCP socket, read and written without blocking.
pub(crate) struct TlsSocket {
    pub tcp: TcpStream,
    tls: rustls::ServerConnection,
    /// The peer closed its side of the TCP connection.
    eof: bool,
}

impl TlsSocket {
    pub(crate) fn new(tcp: TcpStream, tls: rustls::ServerConnection) -> Self {
        TlsSocket {
            tcp,
            tls,
            eof: false,
        }
    }

    /// Decrypted bytes are waiting, or the stream ended: a read would not block.
    pub(crate) fn read_would_not_block(&mut self) -> bool {
        self.eof
            || self
                .tls
                .process_new_packets()
                .map_or(true, |state| state.plaintext_bytes_to_read() > 0)
    }

    /// Reads decrypted bytes, pulling TLS records from the socket as needed.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            if self.tls.read_tls(&mut SyncIo(&self.tcp))? == 0 {
                self.eof = true;
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Send the alert rustls prepared before giving up.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // A key update or an alert may want to go out.
            match self.flush() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }

    /// Encrypted bytes are waiting to be written to the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Writes encrypted bytes until none wait or the socket would block.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut SyncIo(&self.tcp))? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Encrypts what rustls' bounded send buffer takes and writes what the socket takes.
    /// Returns how many plaintext bytes were taken, or `WouldBlock`.
    pub(crate) fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush()?;
        let taken = self.tls.writer().write_vectored(bufs)?;
        match self.flush() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Queues TLS close_notify and writes what the socket takes.
    pub(crate) fn close_notify(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush();
    }
}
