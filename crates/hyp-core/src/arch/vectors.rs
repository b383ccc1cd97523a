//! EL2 exception vectors and the guest entry/exit half of the world switch.
//!
//! One of the few places with raw assembly (STYLE.md convention 2). Design,
//! after KVM's nVHE `__guest_enter`: `guest_enter(regs, host)` saves the
//! hypervisor's callee-saved registers and stack pointer in `host`, loads the
//! guest's general registers, ELR_EL2 and SPSR_EL2 from `regs` and ERETs.
//! A later exception from the guest lands in a lower-EL vector, which stores
//! every guest register back into `regs` (found through the per-CPU block
//! that TPIDR_EL2 points at), restores the saved hypervisor state and returns
//! from `guest_enter` with the vector kind. So a guest run is a function call
//! that returns an exit.
//!
//! Exceptions taken from EL2 itself are hypervisor bugs: the vector saves a
//! frame and calls `hyp_el2_exception`, which panics with the syndrome.
//!
//! Offsets used below are pinned by `const` assertions in `world_switch.rs`.

use core::arch::global_asm;

use super::fid_hash;

global_asm!(
    r#"
// The registers a call may clobber besides x0/x1 (AAPCS64: x2..x18, x30),
// at their `GuestRegs` offsets.
.macro save_caller base
    stp     x2, x3, [\base, #16]
    stp     x4, x5, [\base, #32]
    stp     x6, x7, [\base, #48]
    stp     x8, x9, [\base, #64]
    stp     x10, x11, [\base, #80]
    stp     x12, x13, [\base, #96]
    stp     x14, x15, [\base, #112]
    stp     x16, x17, [\base, #128]
    str     x18, [\base, #144]
    str     x30, [\base, #240]
.endm

.macro load_caller base
    ldp     x2, x3, [\base, #16]
    ldp     x4, x5, [\base, #32]
    ldp     x6, x7, [\base, #48]
    ldp     x8, x9, [\base, #64]
    ldp     x10, x11, [\base, #80]
    ldp     x12, x13, [\base, #96]
    ldp     x14, x15, [\base, #112]
    ldp     x16, x17, [\base, #128]
    ldr     x18, [\base, #144]
    ldr     x30, [\base, #240]
.endm

// The callee-saved x19..x29 at their `GuestRegs` offsets.
.macro save_callee base
    stp     x19, x20, [\base, #152]
    stp     x21, x22, [\base, #168]
    stp     x23, x24, [\base, #184]
    stp     x25, x26, [\base, #200]
    stp     x27, x28, [\base, #216]
    str     x29, [\base, #232]
.endm

.macro load_callee base
    ldp     x19, x20, [\base, #152]
    ldp     x21, x22, [\base, #168]
    ldp     x23, x24, [\base, #184]
    ldp     x25, x26, [\base, #200]
    ldp     x27, x28, [\base, #216]
    ldr     x29, [\base, #232]
.endm

// x2..x30 at offsets 16..240 of a frame laid out like `GuestRegs`.
.macro save_x2_x30 base
    save_caller \base
    save_callee \base
.endm

.macro load_x2_x30 base
    load_caller \base
    load_callee \base
.endm

.macro guest_exit_vector kind
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #\kind
    b       __guest_exit
.endm

.macro el2_vector kind
    .balign 0x80
    sub     sp, sp, #(34 * 8)
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       __el2_exception
.endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global __hyp_vectors
__hyp_vectors:
    // Current EL with SP_EL0: never used at EL2 (SPSel = 1).
    el2_vector 0
    el2_vector 1
    el2_vector 2
    el2_vector 3
    // Current EL with SP_EL2.
    el2_vector 4
    el2_vector 5
    el2_vector 6
    el2_vector 7
    // Lower EL using AArch64: guest exits. Kinds: 0 sync, 1 IRQ, 2 FIQ, 3 SError.
    // Synchronous: HVCs go past `__hvc_fast` first, with the guest's x0
    // still in x0 (the syndrome is read into x1).
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mrs     x1, esr_el2
    lsr     x1, x1, #26
    cmp     x1, #0x16               // EC = HVC64
    b.eq    __hvc_fast
    b       __fast_sync
    guest_exit_vector 1
    guest_exit_vector 2
    guest_exit_vector 3
    // Lower EL using AArch32: not supported (HCR_EL2.RW = 1); treat as EL2 bug.
    el2_vector 8
    el2_vector 9
    el2_vector 10
    el2_vector 11

// The same table for CPUs whose branch predictor must be invalidated on
// every entry from a lower EL (`arch::spectre`: Cortex-A57/A72, Spectre v2
// and BHB). Each lower-EL slot turns the EL2 MMU off and on, which
// invalidates these cores' branch predictor (TF-A's CVE-2017-5715
// workaround for them, `wa_cve_2017_5715_mmu_vbar.S`, does it at EL3), then
// continues in the matching slot of `__hyp_vectors`. Nothing branches before
// the invalidation: a branch could itself be mispredicted with the state
// the lower EL trained. EL2 runs identity-mapped (`mmu.rs`), so the
// instructions fetched between the two writes come from the same addresses
// with the MMU off; none of them touches memory (with M = 0 a data access
// would be Device and bypass the cache that holds the stack).
.macro bp_invalidate_vector slot
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mrs     x0, sctlr_el2
    bic     x1, x0, #1              // SCTLR_EL2.M
    msr     sctlr_el2, x1           // barrier: SPECTRE-V2 — MMU off: the write that invalidates the predictor
    isb                             // barrier: SPECTRE-V2 — the MMU-off state takes effect before it is undone
    msr     sctlr_el2, x0           // barrier: SPECTRE-V2 — MMU back on, as before the exception
    isb                             // barrier: SPECTRE-V2 — translation (and the cacheable stack) back before the load below
    ldp     x0, x1, [sp], #16
    b       __hyp_vectors + 0x400 + 0x80 * \slot
.endm

    .balign 0x800
    .global __hyp_vectors_bp
__hyp_vectors_bp:
    el2_vector 0
    el2_vector 1
    el2_vector 2
    el2_vector 3
    el2_vector 4
    el2_vector 5
    el2_vector 6
    el2_vector 7
    bp_invalidate_vector 0
    bp_invalidate_vector 1
    bp_invalidate_vector 2
    bp_invalidate_vector 3
    el2_vector 8
    el2_vector 9
    el2_vector 10
    el2_vector 11

    .section .text.world_switch, "ax"
// The fastest exits: SMCCC_VERSION and PSCI_VERSION (32-bit function IDs;
// SMCCC 1.1 section 2.6: bits [63:32] of x0 are ignored) are answered here,
// before any register is saved, exactly as `hypercall::stateless_answer`
// answers them (x0 = 1.1, x1..x3 = 0); so is a function ID nobody
// implements, for any caller (`calls::known`): x0 = NOT_SUPPORTED (-1),
// x1..x3 = 0, as `stateless_answer` answers `Hypercall::Unknown` to guests
// and the host alike. The guest's x0/x1 are on the stack, and x0 is still
// in x0; ELR_EL2 already points past the HVC. Counted in the per-CPU block
// (`HostSave::fast_hvcs`), which `vm.rs` adds to the exit statistics of the
// context that ran. Anything else goes on to the full exit.
__hvc_fast:
    movz    w1, #0x8000, lsl #16    // SMCCC_VERSION
    cmp     w0, w1
    movz    w1, #0x8400, lsl #16    // PSCI_VERSION
    ccmp    w0, w1, #4, ne          // Z set if either matched
    b.ne    1f
    mrs     x1, tpidr_el2
    ldr     x0, [x1, #112]
    add     x0, x0, #1
    str     x0, [x1, #112]
    movz    x0, #1, lsl #16         // version 1.1: major 1 in [31:16],
    movk    x0, #1                  // minor 1 in [15:0]
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    add     sp, sp, #16
    // barrier: D24.1.2.2 — back to the guest; nothing was written on this path (ELR_EL2 still past the HVC)
    eret
    // Straight-line speculation barrier (rule SLS in the tidy test): the PE
    // may run past an ERET speculatively with registers the guest controls.
    // FEAT_SB is not guaranteed (Cortex-A72 lacks it), so `dsb nsh; isb`,
    // Linux's `sb` without FEAT_SB. Never executed architecturally.
    dsb     nsh                     // barrier: SLS — speculation barrier after the ERET
    isb                             // barrier: SLS — second half of the speculation barrier
    // Is w0 a function ID somebody implements? `arch::fid_hash`: its slot
    // is the top SLOT_BITS bits of w0 * MUL, and HVC_KNOWN_FIDS holds in
    // each slot (bits [31:0]) the one known ID that hashes there (or one
    // that hashes elsewhere): a different value means unknown to every
    // caller. The index is 7 bits, within the 128-entry table whatever the
    // guest passes.
1:  movz    w1, #{mul_lo}
    movk    w1, #{mul_hi}, lsl #16
    mul     w1, w0, w1
    lsr     w1, w1, #{shift}
    adrp    x0, HVC_KNOWN_FIDS
    add     x0, x0, :lo12:HVC_KNOWN_FIDS
    ldr     x0, [x0, x1, lsl #3]
    ldr     x1, [sp]                // the guest's x0 again
    cmp     w0, w1
    b.ne    4f
    // Known to somebody. Bit 32 (`calls::known::FULL_PATH_BIT`): a call
    // the fast path never answers (PSCI power calls, MEM_SHARE, YIELD, the
    // host's calls, ...) goes straight to the full exit; the rest is
    // decoded by `hyp_fast_sync` first.
    tbz     x0, #32, __fast_sync
    mov     x0, #0
    b       __guest_exit
4:
    mrs     x1, tpidr_el2
    ldr     x0, [x1, #112]
    add     x0, x0, #1
    str     x0, [x1, #112]
    movn    x0, #0                  // NOT_SUPPORTED (-1)
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    add     sp, sp, #16
    // barrier: D24.1.2.2 — back to the guest; nothing was written on this path (ELR_EL2 still past the HVC)
    eret
    // Straight-line speculation barrier after the ERET (rule SLS), as above.
    dsb     nsh                     // barrier: SLS — speculation barrier after the ERET
    isb                             // barrier: SLS — second half of the speculation barrier

// The next fastest exits: `exit::fast::hyp_fast_sync` answers stateless
// calls, vGIC register reads and SGIs to other vCPUs on the hypervisor's
// stack, called with only what AAPCS64 lets it clobber saved: the guest's
// x0..x18, x30 and PC go into its register file (`HostSave::guest`, passed
// in x0 with the HostSave in x1), x19..x29 stay live in their registers,
// which the Rust code preserves. So a fast exit skips the full save, the
// return into the run loop and the entry back. Only while a guest runs
// (`HostSave::fast` non-null, checked here, so `hyp_fast_sync` need not;
// the host's exits always take the full path). Guest x0/x1 are on the
// stack.
__fast_sync:
    mrs     x1, tpidr_el2
    ldr     x0, [x1, #120]          // HostSave::fast
    cbz     x0, 2f
    ldr     x0, [x1, #104]          // HostSave::guest
    save_caller x0
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x0, #0]
    mrs     x2, elr_el2
    str     x2, [x0, #248]
    bl      hyp_fast_sync           // bool hyp_fast_sync(GuestRegs *x0, HostSave *x1)
    mrs     x1, tpidr_el2
    ldr     x1, [x1, #104]
    cbz     w0, 3f
    // Answered: back to the guest with the (possibly updated) registers and
    // PC. ELR_EL2 needs no synchronisation before the ERET (see below).
    ldr     x2, [x1, #248]
    msr     elr_el2, x2             // barrier: C5.1.5.1 — special-purpose register, program order before the ERET
    load_caller x1
    ldp     x0, x1, [x1, #0]
    // barrier: D24.1.2.2 — the ERET is the CSE for any guest-only write hyp_fast_sync made (EOS = 1, checked at boot)
    eret
    // Straight-line speculation barrier (rule SLS in the tidy test): the PE
    // may run past an ERET speculatively with registers the guest controls.
    // FEAT_SB is not guaranteed (Cortex-A72 lacks it), so `dsb nsh; isb`,
    // Linux's `sb` without FEAT_SB. Never executed architecturally.
    dsb     nsh                     // barrier: SLS — speculation barrier after the ERET
    isb                             // barrier: SLS — second half of the speculation barrier
    // Not answered (the register file is unchanged): store x19..x29 too and
    // take the full exit with the frame complete.
3:  save_callee x1
    mov     x0, #0
    b       __guest_exit_frame
2:  mov     x0, #0
    b       __guest_exit

// u64 guest_enter(GuestRegs *regs /* x0 */, HostSave *host /* x1 */)
    .global __guest_enter
__guest_enter:
    stp     x19, x20, [x1, #0]
    stp     x21, x22, [x1, #16]
    stp     x23, x24, [x1, #32]
    stp     x25, x26, [x1, #48]
    stp     x27, x28, [x1, #64]
    stp     x29, x30, [x1, #80]
    mov     x2, sp
    str     x2, [x1, #96]
    str     x0, [x1, #104]
    // ELR_EL2/SPSR_EL2 are special-purpose registers: writes take effect in
    // program order and need no synchronisation before the ERET (Arm ARM
    // C5.1.5.1; ARM-RULES.md section 0).
    ldp     x2, x3, [x0, #248]
    msr     elr_el2, x2             // barrier: C5.1.5.1 — special-purpose register, program order before the ERET
    msr     spsr_el2, x3            // barrier: C5.1.5.1 — special-purpose register, program order before the ERET
    load_x2_x30 x0
    ldp     x0, x1, [x0, #0]
    // ERET is a context synchronisation event (SCTLR_EL2.EOS = 1, checked at
    // boot): it synchronises every guest-only system-register write made
    // since the last exit.
    // barrier: D24.1.2.2 — the CSE that barriers::enter_guest authorises (GuestEntry), EOS = 1
    eret
    // Straight-line speculation barrier (rule SLS in the tidy test): the PE
    // may run past an ERET speculatively with registers the guest controls.
    // FEAT_SB is not guaranteed (Cortex-A72 lacks it), so `dsb nsh; isb`,
    // Linux's `sb` without FEAT_SB. Never executed architecturally.
    dsb     nsh                     // barrier: SLS — speculation barrier after the ERET
    isb                             // barrier: SLS — second half of the speculation barrier

// Entered from a lower-EL vector: x0 = kind, guest x0/x1 pushed on SP_EL2.
__guest_exit:
    mrs     x1, tpidr_el2
    ldr     x1, [x1, #104]
    save_x2_x30 x1
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #0]
// x0 = kind, x1 = the guest's register file with x0..x30 stored.
__guest_exit_frame:
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x2, x3, [x1, #248]
    mrs     x1, tpidr_el2
    ldr     x2, [x1, #96]
    mov     sp, x2
    ldp     x19, x20, [x1, #0]
    ldp     x21, x22, [x1, #16]
    ldp     x23, x24, [x1, #32]
    ldp     x25, x26, [x1, #48]
    ldp     x27, x28, [x1, #64]
    ldp     x29, x30, [x1, #80]
    ret

// Entered from an EL2 vector: x0 = kind, frame of 34 words on the stack with
// x0/x1 slots holding the original x0/x1.
__el2_exception:
    save_x2_x30 sp
    mrs     x2, elr_el2
    mrs     x3, spsr_el2
    stp     x2, x3, [sp, #248]
    mov     x1, sp
    bl      hyp_el2_exception
    // hyp_el2_exception returns only for IRQs handled at EL2.
    ldp     x2, x3, [sp, #248]
    msr     elr_el2, x2             // barrier: C5.1.5.1 — special-purpose register, program order before the ERET
    msr     spsr_el2, x3            // barrier: C5.1.5.1 — special-purpose register, program order before the ERET
    load_x2_x30 sp
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #(34 * 8)
    // barrier: D24.1.2.2 — back to the interrupted EL2 code; the IRQ handler's writes carry their own barriers
    eret
    // Straight-line speculation barrier (rule SLS in the tidy test): the PE
    // may run past an ERET speculatively with registers the guest controls.
    // FEAT_SB is not guaranteed (Cortex-A72 lacks it), so `dsb nsh; isb`,
    // Linux's `sb` without FEAT_SB. Never executed architecturally.
    dsb     nsh                     // barrier: SLS — speculation barrier after the ERET
    isb                             // barrier: SLS — second half of the speculation barrier
"#,
    mul_lo = const fid_hash::MUL_LO,
    mul_hi = const fid_hash::MUL_HI,
    shift = const fid_hash::SHIFT,
);

// FP/SIMD context switch (lazy, see vm.rs). The hypervisor is built
// soft-float and never uses these registers itself; these two routines are
// the only EL2 code that does, called with CPTR_EL2.TFP clear and an ISB
// behind it (`barriers::sync::uses::el2_fp`). Layout: `FpState` (q0..q31,
// then FPCR, FPSR).
global_asm!(
    r#"
    .arch_extension fp
    .arch_extension simd
    .global __fp_save
__fp_save:
    stp     q0, q1, [x0, #0]
    stp     q2, q3, [x0, #32]
    stp     q4, q5, [x0, #64]
    stp     q6, q7, [x0, #96]
    stp     q8, q9, [x0, #128]
    stp     q10, q11, [x0, #160]
    stp     q12, q13, [x0, #192]
    stp     q14, q15, [x0, #224]
    stp     q16, q17, [x0, #256]
    stp     q18, q19, [x0, #288]
    stp     q20, q21, [x0, #320]
    stp     q22, q23, [x0, #352]
    stp     q24, q25, [x0, #384]
    stp     q26, q27, [x0, #416]
    stp     q28, q29, [x0, #448]
    stp     q30, q31, [x0, #480]
    mrs     x1, fpcr
    mrs     x2, fpsr
    add     x0, x0, #512
    stp     x1, x2, [x0]
    ret

    .global __fp_load
__fp_load:
    ldp     q0, q1, [x0, #0]
    ldp     q2, q3, [x0, #32]
    ldp     q4, q5, [x0, #64]
    ldp     q6, q7, [x0, #96]
    ldp     q8, q9, [x0, #128]
    ldp     q10, q11, [x0, #160]
    ldp     q12, q13, [x0, #192]
    ldp     q14, q15, [x0, #224]
    ldp     q16, q17, [x0, #256]
    ldp     q18, q19, [x0, #288]
    ldp     q20, q21, [x0, #320]
    ldp     q22, q23, [x0, #352]
    ldp     q24, q25, [x0, #384]
    ldp     q26, q27, [x0, #416]
    ldp     q28, q29, [x0, #448]
    ldp     q30, q31, [x0, #480]
    add     x0, x0, #512
    ldp     x1, x2, [x0]
    msr     fpcr, x1                // barrier: C5.1.5.1 — FPCR is special-purpose: program order, no ISB
    msr     fpsr, x2                // barrier: C5.1.5.1 — FPSR is special-purpose: program order, no ISB
    ret
"#
);
