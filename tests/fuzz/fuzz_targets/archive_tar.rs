//! Arbitrary bytes as the tar stream inside a valid zstd frame, so the fuzzer explores the
//! tar reader (headers, PAX and GNU records, links, limits) instead of the zstd format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let compressed = zstd::encode_all(data, 1).expect("compressing in memory cannot fail");
    tilebox_fuzz::check_archive(&compressed);
});
