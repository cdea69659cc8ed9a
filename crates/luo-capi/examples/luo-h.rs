//! Prints `include/luo.h` as the code defines it:
//!
//! ```text
//! cargo run -p luo-capi --example luo-h > crates/luo-capi/include/luo.h
//! ```

fn main() {
    print!("{}", luo::header::generate());
}
