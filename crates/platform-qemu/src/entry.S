// Board entry for QEMU virt: an arm64 Linux Image header, so QEMU boots the
// flat image at EL2 with the DTB address in x0, holds the other CPUs in
// PSCI OFF, and answers PSCI through SMC (virtualization=on, no EL3).
// Header layout: Documentation/arch/arm64/booting.rst.

    .section .text.head, "ax"
    .global _start
_start:
    b       primary_entry           // code0
    .long   0                       // code1
    .quad   TEXT_OFFSET             // text_offset
    .quad   __image_size            // image_size, including BSS and stacks
    .quad   0x2                     // flags: LE, 4 KiB pages, near RAM base
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5

primary_entry:
    // Interrupts stay masked at EL2: the hypervisor takes guest interrupts
    // as exits from the lower-EL vectors, never while running itself.
    msr     daifset, #0xf           // barrier: C5.1.5.1 — PSTATE.DAIF is special-purpose: masked in program order
    mov     x19, x0
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    add     sp, x1, #0x20, lsl #12          // CPU 0's stack top (STACK_SIZE)
    mov     x0, x19
    bl      platform_primary_main
3:  wfe
    b       3b

// Secondary CPUs, started by PSCI CPU_ON with x0 = CPU index.
    .global secondary_entry
secondary_entry:
    msr     daifset, #0xf           // barrier: C5.1.5.1 — PSTATE.DAIF is special-purpose: masked in program order
    cmp     x0, #8                          // MAX_CPUS
    b.hs    3b
    adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    add     x2, x0, #1
    add     x1, x1, x2, lsl #17             // (index + 1) * STACK_SIZE
    mov     sp, x1
    bl      platform_secondary_main
    b       3b
