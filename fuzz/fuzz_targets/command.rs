#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_proto::command::fuzz_command(data));
