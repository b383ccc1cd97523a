//! Selects the instruction backend.
//!
//! `barriers_hw` is set when building for bare-metal AArch64 (the hypervisor): the crate then emits
//! real instructions. Everywhere else (host tests, other crates' host tests) every instruction is
//! recorded in a per-thread trace instead. `cfg(test)` also selects the recording backend; build
//! scripts cannot see it, so the source combines the two (`all(barriers_hw, not(test))`).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(barriers_hw)");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if arch == "aarch64" && os == "none" {
        println!("cargo::rustc-cfg=barriers_hw");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
