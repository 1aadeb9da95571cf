#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_proto::ws::fuzz_decoder(data));
