use core::arch::{asm, global_asm};
use core::convert::Infallible;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use smccc::{Call, Hvc};

global_asm!(include_str!("entry.S"));

/// The guest's PL011 (emulated by the hypervisor) at QEMU virt's address.
pub const UART_BASE: usize = hyp_abi::layout::UART_IPA as usize;

/// Console writer: bytes go to the PL011's data register one by one (the
/// hypervisor's emulated UART never pushes back, so writes cannot fail).
#[derive(Debug)]
pub struct Console;

impl embedded_io::ErrorType for Console {
    type Error = Infallible;
}

impl embedded_io::Write for Console {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &b in buf {
            // SAFETY: UART_BASE is the PL011 data register the hypervisor
            // emulates for every guest.
            unsafe { core::ptr::write_volatile(UART_BASE as *mut u32, u32::from(b)) };
        }
        Ok(buf.len())
    }

    /// Nothing is buffered here: the hypervisor takes each byte as written.
    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Formatting (`write!`, [`println!`]) on top of the byte writer.
impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        embedded_io::Write::write_all(self, s.as_bytes()).map_err(|e| match e {})
    }
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::Console, $($arg)*);
    }};
}

/// Registers saved by an exception, as the vector stores them.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    /// x0..x30.
    pub x: [u64; 31],
    /// ELR_EL1: where the exception returns to.
    pub elr: u64,
    /// SPSR_EL1.
    pub spsr: u64,
}

/// What an exception hook sees.
#[derive(Debug, Clone, Copy)]
pub struct Exception {
    /// Vector index: 0..3 current EL SP0, 4..7 current EL SPx, 8..15 lower EL.
    pub vector: u64,
    /// ESR_EL1.
    pub esr: u64,
    /// FAR_EL1.
    pub far: u64,
}

/// A hook that handles an exception, returning true when it has (after
/// updating `frame.elr` if the instruction must be skipped).
pub type Hook = fn(&Exception, &mut Frame) -> bool;

static HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs the exception hook.
pub fn set_exception_hook(h: Hook) {
    HOOK.store(h as usize, Ordering::Release);
}

#[unsafe(no_mangle)]
extern "C" fn guest_rt_exception(vector: u64, frame: &mut Frame) {
    let (esr, far): (u64, u64);
    // SAFETY: reading ESR_EL1/FAR_EL1 has no side effects.
    unsafe {
        asm!("mrs {0}, esr_el1", "mrs {1}, far_el1", out(reg) esr, out(reg) far, options(nomem, nostack));
    }
    let e = Exception { vector, esr, far };
    let h = HOOK.load(Ordering::Acquire);
    if h != 0 {
        // SAFETY: HOOK only ever holds a `Hook` stored by set_exception_hook.
        let hook: Hook = unsafe { core::mem::transmute::<usize, Hook>(h) };
        if hook(&e, frame) {
            return;
        }
    }
    panic!(
        "unhandled exception: vector {vector} ESR_EL1={esr:#x} FAR_EL1={far:#x} ELR_EL1={:#x}",
        frame.elr
    );
}

unsafe extern "Rust" {
    fn guest_main(cpu: usize, arg: u64) -> !;
}

/// x1..x4 at vCPU 0's entry (see [`boot_regs`]).
static BOOT_REGS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// x1..x4 as vCPU 0 found them at its entry: a protected VM's firmware
/// (crates/pvmfw) gets the hypervisor's boot facts there.
pub fn boot_regs() -> [u64; 4] {
    BOOT_REGS.each_ref().map(|r| r.load(Ordering::Relaxed))
}

#[unsafe(no_mangle)]
extern "C" fn guest_rt_main(cpu: usize, arg: u64, x1: u64, x2: u64, x3: u64, x4: u64) -> ! {
    if cpu == 0 {
        for (r, v) in BOOT_REGS.iter().zip([x1, x2, x3, x4]) {
            r.store(v, Ordering::Relaxed);
        }
    }
    // SAFETY: every guest crate defines `guest_main` with this signature.
    unsafe { guest_main(cpu, arg) }
}

/// Raw 64-bit SMCCC call through HVC, returning x0..x3.
pub fn hvc(fid: u32, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    let mut args = [0u64; 17];
    args[0] = a1;
    args[1] = a2;
    args[2] = a3;
    let r = Hvc::call64(fid, args);
    [r[0], r[1], r[2], r[3]]
}

/// Raw 64-bit SMCCC call through SMC (trapped by the hypervisor).
pub fn smc(fid: u32, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    let mut args = [0u64; 17];
    args[0] = a1;
    args[1] = a2;
    args[2] = a3;
    let r = smccc::Smc::call64(fid, args);
    [r[0], r[1], r[2], r[3]]
}

/// KVM vendor-hypervisor service (Linux include/linux/arm-smccc.h):
/// VENDOR_HYP_CALL_UID, KVM_FEATURES, MMIO_GUARD (function 7) and the KVM UID.
const VENDOR_HYP_CALL_UID: u32 = 0x8600_ff01;
const VENDOR_HYP_KVM_FEATURES: u32 = 0x8600_0000;
/// ARM_SMCCC_VENDOR_HYP_KVM_MMIO_GUARD_FUNC_ID: x1 = the IPA of one page.
pub const MMIO_GUARD: u32 = 0xc600_0007;
/// ARM_SMCCC_KVM_FUNC_MMIO_GUARD: its bit in KVM_FEATURES.
pub const FUNC_MMIO_GUARD: u32 = 7;
const KVM_UID: [u64; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];
const PAGE: u64 = 4096;

/// The KVM_FEATURES bitmap, or 0 when the hypervisor is not KVM's (its
/// vendor UID), as Linux's kvm_init_hyp_services reads it.
pub fn kvm_features() -> u64 {
    if hvc(VENDOR_HYP_CALL_UID, 0, 0, 0) == KVM_UID {
        hvc(VENDOR_HYP_KVM_FEATURES, 0, 0, 0)[0]
    } else {
        0
    }
}

/// Whether the hypervisor offers MMIO guard (KVM_FEATURES bit 7; protected
/// VMs only): then this VM's accesses to the host's MMIO window reach the
/// host only on pages it guarded with [`mmio_guard`].
pub fn mmio_guard_offered() -> bool {
    kvm_features() & (1 << FUNC_MMIO_GUARD) != 0
}

/// MMIO_GUARD of the page at `ipa` (page-aligned): x0 as a signed SMCCC
/// code (0 = SUCCESS, -3 = INVALID_PARAMETER).
pub fn mmio_guard(ipa: u64) -> i64 {
    hvc(MMIO_GUARD, ipa, 0, 0)[0] as i64
}

/// If MMIO guard is offered, guards every page of `[ipa, ipa + len)` the
/// way Linux's ioremap hook does (one call per page, from the page holding
/// `ipa`); returns how many pages it guarded (0 when not offered), or the
/// first error.
///
/// # Errors
///
/// The SMCCC code of the first refused page.
pub fn mmio_guard_range(ipa: u64, len: u64) -> Result<u64, i64> {
    if !mmio_guard_offered() {
        return Ok(0);
    }
    let (start, end) = (ipa & !(PAGE - 1), (ipa + len).next_multiple_of(PAGE));
    for page in (start..end).step_by(PAGE as usize) {
        match mmio_guard(page) {
            0 => {}
            e => return Err(e),
        }
    }
    Ok((end - start) / PAGE)
}

pub use hyp_abi::pvmfw::{ITEM_INITRD, ITEM_KERNEL, MEASUREMENT_SET};

/// The SHA-256 the VM's firmware measured of item `item`
/// ([`ITEM_KERNEL`] or [`ITEM_INITRD`]), read back from the
/// hypervisor with MEASUREMENT_GET (two calls of 16 bytes); `None` when
/// nothing was measured (a normal VM, or no initrd).
pub fn measurement(item: u64) -> Option<[u8; 32]> {
    let mut d = [0u8; 32];
    for half in 0..2u64 {
        let r = hvc(hyp_abi::pvmfw::MEASUREMENT_GET, item, half, 0);
        if r[0] != 0 || r[3] != 1 {
            return None;
        }
        let at = half as usize * 16;
        d[at..at + 8].copy_from_slice(&r[1].to_be_bytes());
        d[at + 8..at + 16].copy_from_slice(&r[2].to_be_bytes());
    }
    Some(d)
}

/// Address of the common entry point, for PSCI CPU_ON.
pub fn entry_point() -> u64 {
    unsafe extern "C" {
        fn _start();
    }
    _start as *const () as usize as u64
}

/// Gives this vCPU's CPU back to the host at once ([`hyp_abi::GUEST_YIELD`]):
/// for a vCPU that waits for another vCPU or VM, not for an interrupt (a
/// WFI waits for an interrupt, and the host may sleep meanwhile).
pub fn yield_cpu() {
    let _ = hvc(hyp_abi::GUEST_YIELD, 0, 0, 0);
}

/// Powers the VM off through PSCI.
pub fn system_off() -> ! {
    let _ = smccc::psci::system_off::<Hvc>();
    loop {
        // SAFETY: WFE only pauses the vCPU.
        unsafe { asm!("wfe") };
    }
}

/// Turns this vCPU off through PSCI.
pub fn cpu_off() -> ! {
    let _ = smccc::psci::cpu_off::<Hvc>();
    panic!("PSCI CPU_OFF returned");
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Console, "guest panic: {info}");
    system_off()
}

/// A fixed-capacity line buffer, for building a line piece by piece with
/// `write!` without an allocator (and printing it with one `println!`, so
/// the hypervisor's per-vCPU line buffering keeps it whole).
#[derive(Debug)]
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<bad utf-8>")
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Line {
    /// Appends `s`, or fails (appending nothing) when it does not fit.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let b = s.as_bytes();
        let end = self.len + b.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}
