//! Gives libluo.so its soname, `libluo.so.<major>`, so that programs linked against it record
//! the ABI they were built for (`scripts/install-capi` installs the file under that name).

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".to_owned());
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libluo.so.{major}");
    println!("cargo::rerun-if-changed=build.rs");
}
