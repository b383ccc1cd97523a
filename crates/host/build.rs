//! Links the host with guest-rt's layout at the start of the host's RAM
//! (the board's VM pool, identity-mapped at stage 2).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=--defsym=__guest_origin=0x50000000");
    println!("cargo:rustc-link-arg-bins=-T{dir}/../guest-rt/guest.ld");
    println!("cargo:rerun-if-changed={dir}/../guest-rt/guest.ld");
}
