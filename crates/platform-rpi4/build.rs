//! Checks platforms/rpi4/board.toml and generates `$OUT_DIR/board.rs` (memory map
//! and guest payloads from `$HYP_PAYLOAD_DIR`, written by `cargo xtask build`).

fn main() {
    if let Err(message) = board::build_script::run("rpi4") {
        // Fails the build; cargo shows this (no panic backtrace to wade through).
        eprintln!("error: platform-rpi4: {message}");
        std::process::exit(1);
    }
}
