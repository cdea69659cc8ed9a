//! The daemon part parser: `DaemonPart::parse` must refuse or accept any input without
//! panicking, and an accepted part must write back to the same bytes. `fuzz_one` also parses a
//! copy with its length field repaired, so mutations get past the length check.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    luo_abi::daemon::fuzz_one(data);
});
