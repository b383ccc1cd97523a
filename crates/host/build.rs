//! Links the host with guest-rt's layout at the start of the host's RAM
//! (the board's VM pool, identity-mapped at stage 2).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=--defsym=__guest_origin=0x50000000");
    // 64 KiB stacks: the host serves device requests on them (a virtio-blk
    // request's bounce page, virtio-drivers' PCI requests beneath it).
    println!("cargo:rustc-link-arg-bins=--defsym=__stack_size=0x10000");
    println!("cargo:rustc-link-arg-bins=-T{dir}/../guest-rt/guest.ld");
    println!("cargo:rerun-if-changed={dir}/../guest-rt/guest.ld");
}
