//! Links the firmware with guest-rt's layout at its window
//! (`hyp_abi::layout::PVMFW_IPA`), with one 16 KiB stack (it runs on vCPU 0
//! only) and a link-time check that text, data, BSS and stack fit the
//! window the hypervisor maps.
fn main() {
    use hyp_abi::layout::{PVMFW_IPA, PVMFW_SIZE};
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=--defsym=__guest_origin={PVMFW_IPA:#x}");
    println!(
        "cargo:rustc-link-arg-bins=--defsym=__guest_limit={:#x}",
        PVMFW_IPA + PVMFW_SIZE
    );
    println!("cargo:rustc-link-arg-bins=--defsym=__max_vcpus=1");
    println!("cargo:rustc-link-arg-bins=--defsym=__stack_size=0x4000");
    println!("cargo:rustc-link-arg-bins=-T{dir}/../guest-rt/guest.ld");
    println!("cargo:rerun-if-changed={dir}/../guest-rt/guest.ld");
}
