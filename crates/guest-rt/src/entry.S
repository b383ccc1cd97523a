// Guest entry at EL1, MMU off. vCPU 0 (MPIDR Aff0 = 0) clears BSS; every
// vCPU enables FP/SIMD at EL1 and EL0 (CPACR_EL1.FPEN = 0b11: the target
// lets the compiler use FP/SIMD registers, and guest-fp tests them), takes
// the stack for its index, installs the vectors and calls
// guest_rt_main(index, x0, x1, x2, x3, x4 at entry).
//
// The program starts with an arm64 Image header (Linux's
// Documentation/arch/arm64/booting.rst): a protected VM's firmware
// (crates/pvmfw) measures image_size bytes from it, as it does a Linux
// kernel's. code0 branches over the header, so the entry stays _start.
    .section .text.entry, "ax"
    .global _start
_start:
    b       0f                              // code0
    .word   0                               // code1
    .quad   0                               // text_offset
    .quad   __guest_image_size              // image_size (guest.ld)
    .quad   0x2                             // flags: little-endian, 4 KiB pages
    .quad   0, 0, 0                         // res2..res4
    .word   0x644d5241                      // magic: "ARM\x64"
    .word   0                               // res5
0:  mov     x20, x0
    mov     x21, x1
    mov     x22, x2
    mov     x23, x3
    mov     x24, x4
    mrs     x19, mpidr_el1
    and     x19, x19, #0xff
    ldr     x1, =__guest_max_vcpus          // guest.ld's MAX_VCPUS
    cmp     x19, x1
    b.hs    9f
    cbnz    x19, 2f
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  mov     x1, #(3 << 20)                  // CPACR_EL1.FPEN = 0b11
    msr     cpacr_el1, x1
    adrp    x1, __stacks_start
    add     x1, x1, :lo12:__stacks_start
    add     x2, x19, #1
    ldr     x3, =__guest_stack_size         // guest.ld's STACK_SIZE
    madd    x1, x2, x3, x1                  // + (index + 1) * STACK_SIZE
    mov     sp, x1
    adrp    x1, __guest_vectors
    add     x1, x1, :lo12:__guest_vectors
    msr     vbar_el1, x1
    isb                                     // CPACR and VBAR in effect
    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    mov     x3, x22
    mov     x4, x23
    mov     x5, x24
    bl      guest_rt_main
9:  wfe
    b       9b

.macro vector kind
    .balign 0x80
    sub     sp, sp, #(34 * 8)
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       __guest_rt_trap
.endm

    .section .text.vectors, "ax"
    .balign 0x800
    .global __guest_vectors
__guest_vectors:
    vector 0
    vector 1
    vector 2
    vector 3
    vector 4
    vector 5
    vector 6
    vector 7
    vector 8
    vector 9
    vector 10
    vector 11
    vector 12
    vector 13
    vector 14
    vector 15

__guest_rt_trap:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x2, x3, [sp, #248]
    mov     x1, sp
    bl      guest_rt_exception
    ldp     x2, x3, [sp, #248]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #(34 * 8)
    eret
