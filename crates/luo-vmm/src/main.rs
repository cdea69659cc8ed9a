//! luo-vmm (work in progress).
fn main() {}
