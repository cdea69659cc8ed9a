//! The journal reader: `Journal::parse` must refuse or accept any input without panicking, an
//! accepted journal's valid prefix must write back to the same bytes, and its torn tail must
//! cover the rest. `fuzz_one` also parses a copy with every CRC repaired, so mutations get past
//! the checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    luo_abi::journal::fuzz_one(data);
});
