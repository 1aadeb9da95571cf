//! The bench's client side of the wire: loopback connections from chosen source addresses, the
//! WebSocket handshake, and a lean reader of server frames. The load generator must cost as
//! little CPU as it can (it shares the machine with the server it measures), so it parses only
//! frame headers and looks for markers in the payload instead of decoding JSON.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The loopback source address for connection number `i`: 250 connections per address keeps
/// every address far from the ephemeral-port limit, whatever the count.
pub(crate) fn source_for(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        (10 + i / 60_000) as u8,
        (10 + (i / 250) % 240) as u8,
    )
}

/// Connects from the loopback address `source` and sends `request`.
pub(crate) async fn connect_from(
    server: SocketAddr,
    source: Ipv4Addr,
    request: &[u8],
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    let mut stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;
    Ok(stream)
}

/// Reads until what arrived (kept in `seen`) contains `marker`.
pub(crate) async fn read_until(
    stream: &mut TcpStream,
    seen: &mut Vec<u8>,
    marker: &str,
) -> std::io::Result<()> {
    while find(seen, marker.as_bytes()).is_none() {
        let mut buf = [0u8; 2048];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// The HTTP upgrade request for a WebSocket at `path`.
pub(crate) fn upgrade_request(server: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A client text frame. Clients must mask; a zero mask keeps the payload as it is, which is
/// legal and saves the bench the XOR.
pub(crate) fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x81);
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A server frame as the reader saw it.
pub(crate) enum Frame<'a> {
    Text(&'a [u8]),
    Ping(&'a [u8]),
    Close,
    Other,
}

/// Splits complete unmasked (server) frames off the front of `buf`; returns the frame and its
/// length, or None when the frame is not complete yet.
pub(crate) fn next_frame(buf: &[u8]) -> Option<(Frame<'_>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, head) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return None;
    }
    let payload = &buf[head..head + len];
    let frame = match opcode {
        0x1 => Frame::Text(payload),
        0x8 => Frame::Close,
        0x9 => Frame::Ping(payload),
        _ => Frame::Other,
    };
    Some((frame, head + len))
}

/// Splits one masked (client) frame off the front of `buf`: its opcode and unmasked payload,
/// and its length; None when it is not complete yet. For the raw server only.
pub(crate) fn next_frame_masked(buf: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, mut head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let masked = buf[1] & 0x80 != 0;
    let mask = if masked {
        if buf.len() < head + 4 {
            return None;
        }
        head += 4;
        [buf[head - 4], buf[head - 3], buf[head - 2], buf[head - 1]]
    } else {
        [0; 4]
    };
    if buf.len() < head + len {
        return None;
    }
    let payload = buf[head..head + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Some(((opcode, payload), head + len))
}

/// A masked client pong answering `payload`.
pub(crate) fn pong_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x8a, 0x80 | payload.len().min(125) as u8, 0, 0, 0, 0];
    frame.extend_from_slice(&payload[..payload.len().min(125)]);
    frame
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The decimal number right after `marker` in `text`.
pub(crate) fn number_after(text: &[u8], marker: &[u8]) -> Option<u64> {
    let at = find(text, marker)? + marker.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value = 0u64;
    let mut any = false;
    for d in digits {
        value = value * 10 + (d - b'0') as u64;
        any = true;
    }
    any.then_some(value)
}

/// Raises this process's soft open-file limit to its hard limit (children inherit it), and
/// says what it is now.
pub(crate) fn raise_open_files() -> u64 {
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_numbers_read() {
        let mut wire = vec![0x81, 5];
        wire.extend_from_slice(b"|q42|");
        wire.extend_from_slice(&[0x81, 126, 0, 200]);
        wire.extend_from_slice(&[b'x'; 200]);
        let (frame, used) = next_frame(&wire).unwrap();
        let Frame::Text(text) = frame else { panic!() };
        assert_eq!(number_after(text, b"|q"), Some(42));
        assert_eq!(used, 7);
        let (_, used2) = next_frame(&wire[used..]).unwrap();
        assert_eq!(used2, 204);
        assert!(next_frame(&wire[used..used + 100]).is_none());
    }

    #[test]
    fn masked_frames_carry_their_length() {
        assert_eq!(&masked_text_frame(b"ab")[..2], &[0x81, 0x82]);
        let long = masked_text_frame(&[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 0x80 | 126, 1, 44]);
    }
}
