//! The handover image parser: `Image::parse` must refuse or accept any input without panicking,
//! and an accepted image's accessors must agree with it. `fuzz_one` also parses a copy with its
//! length and checksum repaired, so mutations get past the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    luo_abi::image::fuzz_one(data);
});
