#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_engines::fuzz_engine_records(data));
