//! Arbitrary bytes as a `.tar.zst` file: the zstd decoder and the tar reader together.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tilebox_fuzz::check_archive(data);
});
