#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_server::pusher::signing::fuzz_pusher_query(data));
