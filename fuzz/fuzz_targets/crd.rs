#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monivault_fuzz::crd(data));
