//! Links the guest with guest-rt's layout.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/../guest-rt/guest.ld");
    println!("cargo:rerun-if-changed={dir}/../guest-rt/guest.ld");
}
