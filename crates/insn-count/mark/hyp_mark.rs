//! `hyp-mark N`: executes marker N of the `insn-count` QEMU plugin (the
//! NOP `HINT #(0x78 + N)`, N a digit 0-7) and exits 0; exits 2 without a
//! valid N. A static Linux executable with no libc, built by xtask with
//! `rustc --target aarch64-unknown-none` and put in the Linux guest's
//! initramfs, so the benches can bracket what they measure from a shell.

#![no_std]
#![no_main]

// At a static executable's entry, sp points at argc, then argv[0], argv[1]
// (Linux's ELF loader, the AArch64 process start-up ABI).
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "ldr x0, [sp]",
    "cmp x0, #2",
    "b.lt 9f",
    "ldr x1, [sp, #16]",
    "ldrb w2, [x1]",
    "sub w2, w2, #48",
    "cmp w2, #7",
    "b.hi 9f",
    "adr x3, 1f",
    "add x3, x3, x2, lsl #3",
    "br x3",
    "1:",
    "hint #0x78",
    "b 8f",
    "hint #0x79",
    "b 8f",
    "hint #0x7a",
    "b 8f",
    "hint #0x7b",
    "b 8f",
    "hint #0x7c",
    "b 8f",
    "hint #0x7d",
    "b 8f",
    "hint #0x7e",
    "b 8f",
    "hint #0x7f",
    "b 8f",
    "8:",
    "mov x0, #0",
    "b 10f",
    "9:",
    "mov x0, #2",
    "10:",
    // exit(x0)
    "mov x8, #93",
    "svc #0",
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
