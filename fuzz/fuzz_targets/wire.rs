//! The client/daemon framing and the kernel's request decoding: `luo_abi::wire::fuzz_one` must
//! never panic on any message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    luo_abi::wire::fuzz_one(data);
});
