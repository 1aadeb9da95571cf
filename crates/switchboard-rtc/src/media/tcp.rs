//! ICE over TCP (RFC 6544, the server passive), for clients that cannot use UDP: a TCP
//! connection to the HTTP listener's port whose first bytes are an RFC 4571 frame holding a
//! STUN binding request is handed here instead of to HTTP. Each frame (a 2-byte length, then
//! a packet) goes to the media task like a datagram; what the task sends back is framed the
//! same way. A connection whose first packet belongs to no peer is closed by the task.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Command;

/// Largest packet taken in one frame: media packets stay under the path MTU.
pub(crate) const MAX_PACKET: usize = 4096;
/// Packets queued towards one connection before more are dropped (like a full UDP buffer).
pub(crate) const OUTGOING: usize = 512;
/// A connection that carries nothing for this long is closed (ICE consent checks keep a live
/// one busy every few seconds).
const IDLE: Duration = Duration::from_secs(30);

/// Whether `start` (the first bytes of a connection) is an RFC 4571 frame of a STUN binding
/// request: `Some(true)` yes, `Some(false)` no (HTTP, TLS...), `None` too short to say.
pub fn looks_like_ice_tcp(start: &[u8]) -> Option<bool> {
    match start {
        // HTTP methods are letters and a TLS record starts 0x16: a frame length this large
        // (over 2 KiB) is no STUN request either.
        [first, ..] if *first >= 0x08 => Some(false),
        [_, _, 0x00, 0x01, ..] => Some(true),
        [_, _, _, _, ..] => Some(false),
        _ => None,
    }
}

/// Carries one ICE-TCP connection until either side ends it.
pub(crate) async fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    commands: mpsc::Sender<Command>,
) {
    let _ = stream.set_nodelay(true);
    let (to_client, mut outgoing) = mpsc::channel::<Bytes>(OUTGOING);
    if commands
        .send(Command::TcpOpen(remote, to_client))
        .await
        .is_err()
    {
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    let mut frame = vec![0u8; MAX_PACKET];
    loop {
        tokio::select! {
            read = tokio::time::timeout(IDLE, read_frame(&mut reader, &mut frame)) => {
                let n = match read {
                    Ok(Ok(Some(n))) => n,
                    // Closed, broken, oversized or idle.
                    _ => break,
                };
                let packet = frame[..n].to_vec();
                if commands.send(Command::TcpReceive(remote, local, packet)).await.is_err() {
                    break;
                }
            }
            packet = outgoing.recv() => {
                // None: the media task let go of this connection (its peer is gone, or it
                // belonged to none).
                let Some(packet) = packet else { break };
                let mut framed = Vec::with_capacity(packet.len() + 2);
                framed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
                framed.extend_from_slice(&packet);
                if writer.write_all(&framed).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = commands.send(Command::TcpClose(remote)).await;
}

/// Reads one frame into `buf`; `None` at a clean end or an oversized frame.
async fn read_frame(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut [u8],
) -> std::io::Result<Option<usize>> {
    let mut length = [0u8; 2];
    if reader.read_exact(&mut length).await.is_err() {
        return Ok(None);
    }
    let n = u16::from_be_bytes(length) as usize;
    if n == 0 || n > buf.len() {
        return Ok(None);
    }
    reader.read_exact(&mut buf[..n]).await?;
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_binding_request_is_told_from_http_and_tls() {
        assert_eq!(
            looks_like_ice_tcp(&[0x00, 0x64, 0x00, 0x01, 0x00]),
            Some(true)
        );
        assert_eq!(looks_like_ice_tcp(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(looks_like_ice_tcp(b"POST /whip/x"), Some(false));
        assert_eq!(
            looks_like_ice_tcp(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Some(false)
        );
        assert_eq!(looks_like_ice_tcp(&[0x00, 0x64, 0x01, 0x01]), Some(false));
        assert_eq!(looks_like_ice_tcp(&[0x00, 0x64]), None, "too short to say");
        assert_eq!(
            looks_like_ice_tcp(b"G"),
            Some(false),
            "a letter says it at once"
        );
        assert_eq!(looks_like_ice_tcp(&[]), None);
    }
}
