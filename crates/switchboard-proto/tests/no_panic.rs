//! Whatever a client sends, decoding and parsing answer with events or errors, never a panic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchboard_proto::parse_request;
use switchboard_proto::ws::{Decoder, WsEvent};

/// Fragments of valid frames and commands, so random input also reaches the deeper paths.
const PIECES: &[&[u8]] = &[
    b"{\"type\":\"subscribe\",\"id\":1,\"channel\":\"c\"}",
    b"{\"type\":\"publish\",\"channel\":\"c\",\"data\":",
    b"{\"type\":\"history\",\"since\":{\"offset\":18446744073709551615,\"epoch\":\"",
    b"\"id\":-1,",
    b"\xff\xfe",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\"",
    b"\\u00",
    b"null",
    b"1e999",
    &[0x81, 0x85, 1, 2, 3, 4],
    &[0x01, 0x80, 0, 0, 0, 0],
    &[0x80, 0xFF],
    &[0x89, 0x80, 0, 0, 0, 0],
    &[0x88, 0x81, 0, 0, 0, 0, 3],
    &[0x82, 0xFE, 0xFF, 0xFF],
    &[0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF],
];

fn random_input(rng: &mut StdRng) -> Vec<u8> {
    let mut input = Vec::new();
    for _ in 0..rng.random_range(0..12) {
        if rng.random_bool(0.5) {
            input.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
        } else {
            let n = rng.random_range(0..40);
            input.extend((0..n).map(|_| rng.random::<u8>()));
        }
    }
    input
}

#[test]
fn random_bytes_never_panic_the_frame_decoder() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (mut messages, mut too_large, mut protocol_errors) = (0, 0, 0);
    for _ in 0..20_000 {
        let input = random_input(&mut rng);
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        let chunk = rng.random_range(1..16);
        for piece in input.chunks(chunk) {
            decoder.feed(piece, 256, &mut events);
        }
        for event in events {
            match event {
                WsEvent::Message { payload } => {
                    messages += 1;
                    assert!(payload.len() <= 256, "messages stay within the limit");
                    let _ = parse_request(&payload);
                }
                WsEvent::TooLarge => too_large += 1,
                WsEvent::ProtocolError(_) => protocol_errors += 1,
                _ => {}
            }
        }
    }
    // The input reached every outcome, not only the first error.
    assert!(messages > 100 && too_large > 100 && protocol_errors > 100);
}

#[test]
fn random_text_never_panics_the_command_parser() {
    let mut rng = StdRng::seed_from_u64(0xc0ffee);
    let mut parsed = 0;
    for _ in 0..50_000 {
        let input = random_input(&mut rng);
        if let Ok(request) = parse_request(&input) {
            // Whatever parses names a known command.
            assert!(!request.command.name().is_empty());
            parsed += 1;
        }
    }
    assert!(
        parsed > 100,
        "only {parsed} inputs parsed: the generator misses the valid paths"
    );
}
