// Board entry for the Raspberry Pi 4 (BCM2711) and QEMU's raspi4b.
//
// Two ways in, told apart by CurrentEL:
//
// * EL3, every core at once: QEMU raspi4b started with the hypervisor's ELF
//   (-kernel hyp-rpi4). There is no firmware: each core does what the Pi's
//   armstub does (raspberrypi/tools armstubs/armstub8.S): CNTFRQ, CPTR_EL3,
//   the secure-only GIC-400 set-up, SCR_EL3, then an ERET to EL2. Core 0 goes
//   on to boot; the others park at EL2 polling `rpi4_park[cpu]`, which
//   PlatformOps::start_cpu fills.
// * EL2, core 0 only: the Pi firmware loaded kernel8.img at 0x80000 and its
//   armstub already did the EL3 part; x0 holds the DTB. The other cores wait
//   in the armstub's spin table (0xd8 + 8 * cpu), which start_cpu fills.
//
// Either way a released core arrives at `rpi4_secondary` with the MMU off and
// takes x0 and its entry point from rpi4_cpu_ctx/rpi4_cpu_entry.
//
// Header layout: Linux Documentation/arch/arm64/booting.rst.

    .equ    SCR_NS, (1 << 0)
    .equ    SCR_RES1_4, (1 << 4)
    .equ    SCR_RES1_5, (1 << 5)
    .equ    SCR_SMD, (1 << 7)    // SMC is UNDEFINED: there is no monitor
    .equ    SCR_HCE, (1 << 8)
    .equ    SCR_RW, (1 << 10)   // EL2 is AArch64
    .equ    SCR_EL3_VAL, (SCR_RW | SCR_HCE | SCR_SMD | SCR_RES1_5 | SCR_RES1_4 | SCR_NS)
    .equ    SPSR_EL3_VAL, 0x3c9       // DAIF masked, EL2h
    .equ    SCTLR_EL2_OFF, 0x30c50830  // RES1 bits only: MMU, caches off, little-endian
    .equ    ACTLR_EL3_VAL, 0x73        // lower ELs may access CPUACTLR/CPUECTLR/L2*CTLR
    .equ    CPUECTLR_SMPEN, (1 << 6)    // Cortex-A72: take part in coherency
    .equ    OSC_FREQ, 54000000    // BCM2711 crystal: the generic timer's clock

    .equ    GICD_BASE, 0xff841000
    .equ    GICC_BASE, 0xff842000
    .equ    GICD_TYPER, 0x004
    .equ    GICD_IGROUPR, 0x080
    .equ    GICC_CTLR, 0x000
    .equ    GICC_PMR, 0x004

    .section .text.head, "ax"
    .global _start
_start:
    b       rpi4_entry              // code0
    .long   0                       // code1
    .quad   TEXT_OFFSET             // text_offset (RAM base is 0)
    .quad   __image_size            // image_size, including BSS and stacks
    .quad   0x2                     // flags: LE, 4 KiB pages, 2 MiB base near RAM start
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5

rpi4_entry:
    msr     daifset, #0xf           // barrier: C5.1.5.1 — PSTATE.DAIF is special-purpose: masked in program order
    mov     x19, x0                 // DTB from the firmware (EL2 entry only)
    // The image is linked at 0x80000 and not relocatable: if the loader put it
    // elsewhere (config.txt without kernel_address=0x80000), stop here.
    adr     x1, _start
    ldr     x2, =_start
    cmp     x1, x2
    b.ne    hang
    mrs     x20, CurrentEL
    lsr     x20, x20, #2
    cmp     x20, #3
    b.ne    at_el2
    bl      el3_to_el2              // returns at EL2
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cbz     x1, primary
    // A secondary core under QEMU: park at EL2 until start_cpu releases it.
    cmp     x1, #4
    b.hs    hang
    adrp    x5, rpi4_park
    add     x5, x5, :lo12:rpi4_park
1:  wfe
    ldr     x4, [x5, x1, lsl #3]
    cbz     x4, 1b
    br      x4

at_el2:
    cmp     x20, #2
    b.ne    hang                    // EL1: the firmware kept EL2 for itself
primary:
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
    mov     x1, x20                         // the EL we were entered at
    bl      platform_primary_main
hang:
    wfe
    b       hang

// Per-core EL3 set-up and the drop to EL2, the armstub's job on a real Pi.
// Clobbers x0-x3; returns (through ELR_EL3) to the caller's x30 at EL2h.
el3_to_el2:
    // The generic timer's frequency register is writable only at EL3.
    mrs     x0, cntfrq_el0
    cbnz    x0, 1f
    ldr     x0, =OSC_FREQ
    // barrier: D24.1.2.2 — read only by MRS (a direct read) and after the ERET below
    msr     cntfrq_el0, x0
    // The rest of the EL3 set-up is consumed at EL2 or below, after the ERET
    // (a context synchronisation event), or by the ERET itself (see the ISB).
1:  msr     cntvoff_el2, xzr                // barrier: D24.1.2.2 — consumed only after the ISB/ERET below (both CSEs)
    // No FP/SIMD or CPACR traps to EL3.
    msr     cptr_el3, xzr                   // barrier: D24.1.2.2 — consumed only after the ISB/ERET below (both CSEs)
    msr     mdcr_el3, xzr                   // barrier: D24.1.2.2 — consumed only after the ISB/ERET below (both CSEs)
    mov     x0, #ACTLR_EL3_VAL
    msr     actlr_el3, x0                   // barrier: D24.1.2.2 — consumed only after the ISB/ERET below (both CSEs)
    mov     x0, #CPUECTLR_SMPEN
    // CPUECTLR_EL1.SMPEN, before EL2 turns on caches and the MMU.
    msr     S3_1_C15_C2_1, x0               // barrier: D24.1.2.2 — consumed only after the ISB/ERET below (both CSEs)
    // GIC-400 secure-only set-up (as armstub8.S with GIC): every interrupt in
    // group 1 (non-secure), so EL2 can configure and take all of them; the
    // banked IGROUPR0 (SGIs, PPIs) on every core, the SPI registers once.
    ldr     x0, =GICD_BASE
    mov     w1, #-1
    str     w1, [x0, #GICD_IGROUPR]
    mrs     x2, mpidr_el1
    tst     x2, #0xff
    b.ne    3f
    ldr     w2, [x0, #GICD_TYPER]
    and     w2, w2, #0x1f                   // ITLinesNumber: 32 * (N + 1) interrupts
    add     x3, x0, #GICD_IGROUPR
2:  cbz     w2, 3f
    str     w1, [x3, x2, lsl #2]
    sub     w2, w2, #1
    b       2b
    // Secure GICC_CTLR: both groups enabled, AckCtl, bypass disabled; the
    // priority mask open. The non-secure side (EL2) enables its own view.
3:  ldr     x0, =GICC_BASE
    mov     w1, #0x1e7
    str     w1, [x0, #GICC_CTLR]
    mov     w1, #0xff
    str     w1, [x0, #GICC_PMR]
    ldr     x0, =SCTLR_EL2_OFF
    msr     sctlr_el2, x0                   // barrier: D24.1.2.2 — consumed only after the ISB/ERET below (both CSEs)
    msr     hcr_el2, xzr                    // barrier: D24.1.2.2 — consumed only after the ISB/ERET below (both CSEs)
    mov     x0, #SCR_EL3_VAL
    // barrier: ARM-RULES.md §0 — the ERET reads SCR_EL3 (NS, RW, HCE) before its own synchronisation: ISB below
    msr     scr_el3, x0
    mov     x0, #SPSR_EL3_VAL
    msr     spsr_el3, x0                    // barrier: C5.1.5.1 — special-purpose register, program order
    msr     elr_el3, x30                    // barrier: C5.1.5.1 — special-purpose register, program order
    // barrier: ARM-RULES.md §0 — an ERET uses SCR_EL3 before its synchronisation point, so synchronise it first
    isb
    // barrier: D24.1.2.2 — the drop to EL2h: a CSE for the EL2 and lower-EL writes above
    eret
    // Straight-line speculation barrier (rule SLS in the tidy test): never
    // executed. FEAT_SB is not implemented by the Cortex-A72, so `dsb nsh; isb`.
    dsb     nsh                             // barrier: SLS — speculation barrier after the ERET
    isb                                     // barrier: SLS — second half of the speculation barrier

// A released secondary, MMU off: x0 = rpi4_cpu_ctx[cpu], then rpi4_cpu_entry[cpu].
    .global rpi4_secondary
rpi4_secondary:
    msr     daifset, #0xf           // barrier: C5.1.5.1 — PSTATE.DAIF is special-purpose: masked in program order
    mrs     x1, mpidr_el1
    and     x1, x1, #0xff
    cmp     x1, #4
    b.hs    hang
    adrp    x2, rpi4_cpu_ctx
    add     x2, x2, :lo12:rpi4_cpu_ctx
    ldr     x0, [x2, x1, lsl #3]
    adrp    x2, rpi4_cpu_entry
    add     x2, x2, :lo12:rpi4_cpu_entry
    ldr     x3, [x2, x1, lsl #3]
    cbz     x3, hang
    br      x3

// A core the hypervisor does not use (hyp.cpus=N), released here by
// park_cpu with the MMU off: it turns off its GIC CPU interface's group 1
// signalling (every interrupt is group 1), so nothing can wake it, and
// sleeps in WFI for good. A WFE loop would keep executing under QEMU (TCG
// does not sleep on WFE) and count in -icount instruction counts.
    .global rpi4_idle
rpi4_idle:
    msr     daifset, #0xf           // barrier: C5.1.5.1 — PSTATE.DAIF is special-purpose: masked in program order
    ldr     x0, =GICC_BASE
    str     wzr, [x0, #GICC_CTLR]
    dsb     sy                              // barrier: DSB-WFI — the GICC_CTLR store completes before the WFI
1:  wfi
    b       1b

// The hypervisor's secondary entry (x0 = CPU index), as on QEMU virt.
    .global secondary_entry
secondary_entry:
    msr     daifset, #0xf           // barrier: C5.1.5.1 — PSTATE.DAIF is special-purpose: masked in program order
    cmp     x0, #8                          // MAX_CPUS
    b.hs    hang
    adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    add     x2, x0, #1
    add     x1, x1, x2, lsl #17             // (index + 1) * STACK_SIZE
    mov     sp, x1
    bl      platform_secondary_main
    b       hang

    .ltorg

// Written by start_cpu and cleaned to PoC; read by cores with the MMU off.
// In .data, not .bss: parked cores poll rpi4_park while core 0 clears BSS.
    .section .data.rpi4_boot, "aw"
    .balign 64
    .global rpi4_park
rpi4_park:
    .quad   0, 0, 0, 0
    .global rpi4_cpu_entry
rpi4_cpu_entry:
    .quad   0, 0, 0, 0
    .global rpi4_cpu_ctx
rpi4_cpu_ctx:
    .quad   0, 0, 0, 0
