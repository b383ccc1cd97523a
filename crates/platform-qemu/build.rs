//! Checks platforms/qemu/board.toml and generates `$OUT_DIR/board.rs` (memory map
//! and guest payloads from `$HYP_PAYLOAD_DIR`, written by `cargo xtask build`).

fn main() {
    if let Err(message) = board::build_script::run("qemu") {
        panic!("\n\nplatform-qemu: {message}\n\n");
    }
}
