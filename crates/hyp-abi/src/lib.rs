//! The ABI between the hypervisor and the host VM, shared by both sides so
//! the numbers are written once.
//!
//! Host calls are SMCCC 1.1 fast calls through HVC, 64-bit convention, in the
//! vendor-specific hypervisor range (owner 6) above the KVM/pKVM guest
//! services (0xC6000002..=0xC6000009), with this project's own numbering.
//! x0 returns a non-negative value on success or a negative [`HostError`].
//!
//! | fid          | call          | x1     | x2   | x3     | x4     | x0 on success |
//! |--------------|---------------|--------|------|--------|--------|---------------|
//! | `0xC6000040` | VM_CREATE     | vCPUs  | flags (bit 0: protected; bits [8:4]: SVE vector-length cap in quadwords, [`FLAG_SVE_VQ_SHIFT`]) | PA | pages (>= [`VM_CREATE_PAGES`]) | VM handle (= its VMID: 1..=255 or 1..=65534) |
//! | `0xC6000041` | VM_DESTROY    | handle |      |        |        | pages scrubbed by this step; x1 = 1 while more remain (call again) |
//! | `0xC6000042` | MEM_DONATE    | handle | PA   | IPA    | pages (<= [`MAX_GIVE_PAGES`]) | 0 (x5: [`MEM_FLAG_LAZY`]) |
//! | `0xC6000043` | MEM_LEND      | handle | PA   | IPA    | pages (<= [`MAX_GIVE_PAGES`]) | 0 (x5: [`MEM_FLAG_LAZY`]) |
//! | `0xC6000044` | VCPU_INIT     | handle | vCPU | entry  | x0     | 0 |
//! | `0xC6000045` | VCPU_RUN      | handle | vCPU | flags  | value  | [`exit`] code; x1..x3 details |
//! | `0xC6000046` | MMIO_COMPLETE | handle | vCPU | value  |        | 0 |
//! | `0xC6000047` | STATS         | handle (0: host) | reason index (255: total) | | | count |
//! | `0xC6000048` | VCPU_STATE    | handle | vCPU |        |        | 0 on, 1 off, 2 on pending |
//! | `0xC6000049` | MACHINE_EXIT  | status |      |        |        | does not return |
//! | `0xC600004A` | DEVICE_ASSIGN | handle | PA   | size   | INTID  | 0 |
//! | `0xC600004B` | VM_TOPUP      | handle | PA   | pages (<= [`MAX_TOPUP_PAGES`]) | | 0 |
//! | `0xC600004C` | AUDIT         |        |      |        |        | violations of the control state's invariant (0: sound); read-only |
//! | `0xC600004D` | IRQ_DECLARE   | handle | INTID |       |        | 0 |
//! | `0xC600004E` | IRQ_LINE      | handle | INTID | level (0/1) |  | 0; x1 = vCPUs to run |
//! | `0xC600004F` | CONSOLE_FOCUS | handle (0: none) |  |    |        | 0 |
//! | `0xC6000050` | HOST_IDLE     | deadline | generation |  |     | why it woke: 0 event, 1 deadline, 2 interrupt |
#![no_std]

pub mod layout;

/// The protected-VM firmware's calls (`crates/pvmfw`): guest calls, fast, SMC64, owner 6,
/// function numbers 0x100 and 0x101. Upstream KVM's vendor functions are 0..=127 (the
/// KVM_FEATURES bitmaps: MMIO guard is 7, DISCOVER_IMPL_VER/CPUS 64/65, FEATURES_2 127) and
/// this project's host calls are 0x40.. from the host only, so these cannot collide.
pub mod pvmfw {
    /// MEASUREMENT_SET: the firmware reports what it measured, once per VM, before it jumps
    /// to the kernel: x1..x4 the kernel's SHA-256 (bytes 0..32 as four big-endian words),
    /// x5..x8 the initrd's, x9 = 1 if there is an initrd (else 0, x5..x8 zero). Accepted
    /// only from a protected VM, only while the caller's PC lies in the firmware window
    /// ([`crate::layout::PVMFW_IPA`]) and only once: x0 = 0, else -3 (INVALID_PARAMETER)
    /// and nothing is recorded; a normal VM or the host gets -1 (NOT_SUPPORTED).
    pub const MEASUREMENT_SET: u32 = 0xC600_0100;
    /// MEASUREMENT_GET(item, half): any code of the VM reads back what the firmware
    /// reported. x1 = item ([`ITEM_KERNEL`] or [`ITEM_INITRD`]), x2 = half (0: bytes 0..16,
    /// 1: bytes 16..32), x3 = 0. Returns x0 = 0, x1:x2 the 16 bytes as two big-endian words,
    /// x3 = 1 if the item was measured (0: no initrd; x1, x2 zero); -3 for a bad argument,
    /// -1 when nothing was reported (a normal VM, the host).
    pub const MEASUREMENT_GET: u32 = 0xC600_0101;
    /// MEASUREMENT_GET's item: the kernel.
    pub const ITEM_KERNEL: u64 = 0;
    /// MEASUREMENT_GET's item: the initrd.
    pub const ITEM_INITRD: u64 = 1;
}

/// The project's own guest call (fast, SMC64/HVC64, owner 6, function 0x102,
/// beside [`pvmfw`]'s): YIELD gives the vCPU's CPU back to the host at once,
/// a paravirtual yield like x86 KVM's `KVM_HC_SCHED_YIELD`. A WFI waits for an
/// interrupt (the host may then sleep); a guest that only wants another vCPU
/// or VM to run (a spin on a lock, the bench's VM switches) yields instead.
/// x0 = 0 when the vCPU runs again; the host gets NOT_SUPPORTED.
pub const GUEST_YIELD: u32 = 0xC600_0102;

/// First host function ID.
pub const FID_BASE: u32 = 0xC600_0040;
/// VM_CREATE(vcpus, flags, pa, pages) -> handle. The host donates
/// `[pa, pa + pages * 4K)` to the hypervisor for the VM's own state (its
/// metadata, vCPU registers, vGIC) and its stage-2 tables, as pKVM's host
/// does; they come back, scrubbed, when VM_DESTROY ends.
pub const VM_CREATE: u32 = FID_BASE;
/// Pages VM_CREATE needs at least: the VM's state, its stage-2 root and a
/// few tables (the hypervisor checks at build time that they fit). 20: the
/// state takes 15 with its vCPUs' SVE registers (4 of them), which leaves
/// the tables the 5 pages they had before SVE.
pub const VM_CREATE_PAGES: u64 = 20;
/// VM_DESTROY(handle) -> pages scrubbed by this step, x1 = 1 while more
/// remain: the hypervisor gives a VM's memory back in bounded steps and the
/// host calls again until x1 is 0.
pub const VM_DESTROY: u32 = FID_BASE + 1;
/// MEM_DONATE(handle, pa, ipa, pages), at most [`MAX_GIVE_PAGES`] pages;
/// a call that continues the VM's last give (same kind, contiguous PA and
/// IPA) extends that region, so a large range is given in 2 MiB steps.
pub const MEM_DONATE: u32 = FID_BASE + 2;
/// Most pages one MEM_DONATE or MEM_LEND gives (2 MiB): each call's checks
/// and table changes stay bounded.
pub const MAX_GIVE_PAGES: u64 = 512;
/// MEM_LEND(handle, pa, ipa, pages).
pub const MEM_LEND: u32 = FID_BASE + 3;
/// VCPU_INIT(handle, vcpu, entry, x0): where a powered-off vCPU starts. For
/// a protected VM only once, for vCPU 0, before any of its vCPUs has run
/// (else [`HostError::Denied`]): its other vCPUs start through its own PSCI
/// CPU_ON.
pub const VCPU_INIT: u32 = FID_BASE + 4;
/// VCPU_RUN(handle, vcpu, flags, value) -> exit record. With
/// [`RUN_COMPLETE_MMIO`] in `flags`, first completes the vCPU's outstanding
/// MMIO read with `value` (as MMIO_COMPLETE would, under the same lock), so
/// answering a read and resuming costs one call. Other flag bits must be 0.
pub const VCPU_RUN: u32 = FID_BASE + 5;
/// VCPU_RUN flag (x3): complete the outstanding MMIO read with x4 first. If
/// the completion is refused (no read outstanding, ...) the vCPU does not
/// run and VCPU_RUN returns MMIO_COMPLETE's error; if it is accepted and the
/// run is then refused (e.g. the VM stopped), the completion stays recorded.
pub const RUN_COMPLETE_MMIO: u64 = 1;
/// MMIO_COMPLETE(handle, vcpu, value).
pub const MMIO_COMPLETE: u32 = FID_BASE + 6;
/// STATS(handle, reason) -> count.
pub const STATS: u32 = FID_BASE + 7;
/// VCPU_STATE(handle, vcpu) -> 0 on, 1 off, 2 on pending.
pub const VCPU_STATE: u32 = FID_BASE + 8;
/// MACHINE_EXIT(status): powers the machine off; a non-zero status makes
/// QEMU exit with it (semihosting), so a failed run fails its caller.
pub const MACHINE_EXIT: u32 = FID_BASE + 9;
/// DEVICE_ASSIGN(handle, pa, size, intid): gives VM `handle` one of the
/// board's assignable devices: its frame is mapped into the VM at the same
/// address and its interrupt delivered through the VM's vGIC.
pub const DEVICE_ASSIGN: u32 = FID_BASE + 10;
/// VM_TOPUP(handle, pa, pages): more host pages for VM `handle`'s stage-2
/// tables (pKVM's memcache top-up). A call that needs a table the VM's
/// pages cannot give fails with [`HostError::NoMemory`], and a guest fault
/// that needs one makes VCPU_RUN return [`exit::MEMORY`]; the host tops up
/// and tries again.
pub const VM_TOPUP: u32 = FID_BASE + 11;
/// Most pages one VM_TOPUP (or VM_CREATE) donates: 2 MiB, so that each call's
/// checks stay bounded.
pub const MAX_TOPUP_PAGES: u64 = 512;
/// AUDIT() -> violations: the hypervisor checks its own page-ownership
/// invariant (read-only, under its locks): no page both host-mapped as the
/// host's own and a guest's, no page in two guests, every annotated or
/// shared host page matches one VM's region or one run of its own pages,
/// and every VM's stage 2 agrees with its regions. For tests and the
/// host's fuzzer (`fuzz=N`); it walks every table, so it is slow.
pub const AUDIT: u32 = FID_BASE + 12;
/// IRQ_DECLARE(handle, intid): the host's emulated devices of VM `handle`
/// raise SPI `intid` (32..96). Only before any vCPU of the VM has run
/// ([`HostError::State`] after); an SGI, a PPI or an INTID past the vGIC's
/// SPIs is [`HostError::Invalid`], an SPI of one of the board's assignable
/// devices [`HostError::Denied`]. IRQ_LINE drives only declared SPIs.
pub const IRQ_DECLARE: u32 = FID_BASE + 13;
/// IRQ_LINE(handle, intid, level): sets the input line of declared SPI
/// `intid` of VM `handle` (level-sensitive: held while `level` is 1, as a
/// virtio-mmio device holds it until the driver acknowledges). A vCPU the
/// interrupt targets that runs on another CPU is kicked at once; x1 returns
/// the vCPUs it targets that are not running (waiting in WFI, yielded), for
/// the host to run. Undeclared: [`HostError::Denied`]; not an SPI or
/// `level` > 1: [`HostError::Invalid`]; VM without a vGIC: [`HostError::State`].
pub const IRQ_LINE: u32 = FID_BASE + 14;
/// CONSOLE_FOCUS(handle): the VM that receives what is typed on the
/// hypervisor's console (the physical UART, which the hypervisor owns):
/// every byte received from then on goes to the receive FIFO of VM
/// `handle`'s emulated PL011 ([`layout::UART_IPA`], interrupt
/// [`layout::UART_INTID`]); 0 = no VM (bytes are dropped). The host, as
/// the VMM, chooses. No VM with that handle: [`HostError::NoVm`].
/// VM_DESTROY of the focused VM clears the focus.
pub const CONSOLE_FOCUS: u32 = FID_BASE + 15;
/// HOST_IDLE(deadline, generation): this host CPU has nothing to run until
/// the counter reaches `deadline` (CNTPCT; `u64::MAX`: none) or one of its
/// waiting vCPUs may run again. The hypervisor sleeps (WFI at EL2) until the
/// deadline, a physical interrupt for this CPU, or an event after
/// `generation` (the x3 of a waiting vCPU's [`exit::YIELD`]; `u64::MAX`:
/// after now), at most 10 ms, and returns 0 (an event), 1 (the deadline or
/// the 10 ms) or 2 (an interrupt).
pub const HOST_IDLE: u32 = FID_BASE + 16;
/// Last host function ID.
pub const FID_LAST: u32 = HOST_IDLE;

/// MEM_DONATE/MEM_LEND flag (x5): ownership changes at once, but the
/// guest's stage 2 maps each page only when the guest first touches it (a
/// stage-2 fault maps that page and the access is retried). Other x5 bits
/// must be zero.
pub const MEM_FLAG_LAZY: u64 = 1;

/// VM_CREATE flag: a protected VM (memory donated; the host loses access).
pub const FLAG_PROTECTED: u64 = 1;
/// VM_CREATE flags bits [8:4]: the largest SVE vector length the VM's vCPUs
/// may use, in quadwords (128 bits; ZCR_EL2.LEN + 1). 0 asks for the
/// hypervisor's cap; otherwise a power of two, 1 to 16 (128 to 2048 bits:
/// the lengths every SVE CPU implements up to its largest). The VM gets the
/// least of this, the hypervisor's cap (512 bits) and the CPU's largest
/// length; any other value is [`HostError::Invalid`]. Ignored (but still
/// checked) on a CPU without SVE. A protected VM's cap is chosen the same
/// way: its vector length is not a secret.
pub const FLAG_SVE_VQ_SHIFT: u32 = 4;
/// The bits of [`FLAG_SVE_VQ_SHIFT`]'s field.
pub const FLAG_SVE_VQ_MASK: u64 = 0x1f << FLAG_SVE_VQ_SHIFT;
/// Every VM_CREATE flag bit with a meaning.
pub const FLAGS_CREATE: u64 = FLAG_PROTECTED | FLAG_SVE_VQ_MASK;

/// VM_CREATE flags asking for an SVE vector-length cap of `vq` quadwords
/// ([`FLAG_SVE_VQ_SHIFT`]; 0: the hypervisor's cap). `vq` above the field is
/// not truncated but spills into bits that make VM_CREATE refuse it.
#[must_use]
pub const fn flag_sve_vq(vq: u64) -> u64 {
    vq << FLAG_SVE_VQ_SHIFT
}
/// STATS reason index meaning "all reasons".
pub const STATS_TOTAL: u64 = 255;
/// STATS(0, reason) for the barriers every page-table batch has issued since boot, machine
/// wide: `STATS_BARRIERS + i` for i = 0 DSB, 1 TLBI, 2 ISB, 3 DC, 4 VTTBR_EL2 switches for
/// TLB maintenance under another VMID.
pub const STATS_BARRIERS: u64 = 240;
/// STATS(handle, reason) of a VM for the pKVM calls it made that took effect:
/// `STATS_GUEST_CALLS + i` for i = 0 MEM_SHARE, 1 MEM_UNSHARE, 2 MMIO_GUARD.
pub const STATS_GUEST_CALLS: u64 = 230;
/// Number of `STATS_BARRIERS` counters.
pub const STATS_BARRIER_KINDS: u64 = 5;

/// Why a host call failed; returned negated in x0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum HostError {
    /// Unknown function.
    NotSupported = -1,
    /// A malformed argument (zero or too many vCPUs, unaligned address,
    /// unknown flag, vCPU index out of range, donate to a normal VM or lend
    /// to a protected one).
    Invalid = -2,
    /// No VM with this handle.
    NoVm = -3,
    /// The vCPU (or, for destroy, one of the VM's vCPUs) is running.
    Busy = -4,
    /// No free VMID, region slot or table memory (for a VM's tables: give
    /// it more with VM_TOPUP).
    NoMemory = -5,
    /// The ownership state forbids it (page not the host's, IPA in use).
    Denied = -6,
    /// Address outside the host's RAM or the guest's IPA space.
    Range = -7,
    /// The vCPU or VM is in the wrong state (off, shut down, an MMIO read
    /// awaiting completion, no read to complete).
    State = -8,
}

impl HostError {
    /// The x0 encoding.
    #[must_use]
    pub const fn code(self) -> u64 {
        self as i64 as u64
    }

    /// Decodes a negative x0.
    #[must_use]
    pub const fn from_code(x0: u64) -> Option<Self> {
        Some(match x0 as i64 {
            -1 => Self::NotSupported,
            -2 => Self::Invalid,
            -3 => Self::NoVm,
            -4 => Self::Busy,
            -5 => Self::NoMemory,
            -6 => Self::Denied,
            -7 => Self::Range,
            -8 => Self::State,
            _ => return None,
        })
    }
}

/// VCPU_RUN exit codes (x0 >= 0).
pub mod exit {
    /// The vCPU yielded (WFI with nothing pending) or its time slice ended;
    /// it stays runnable. After a WFI x1 = 1, x2 = the counter value its
    /// virtual timer fires at (`u64::MAX`: off or masked) and x3 = the
    /// event generation for [`super::HOST_IDLE`]; else x1..x3 = 0.
    pub const YIELD: u64 = 0;
    /// An MMIO access for the host: x1 = IPA, x2 = [`super::mmio_flags`]
    /// (size, write, register), x3 = value written. A read must be answered
    /// with MMIO_COMPLETE before the vCPU runs again.
    pub const MMIO: u64 = 1;
    /// The vCPU turned itself off (PSCI CPU_OFF).
    pub const CPU_OFF: u64 = 2;
    /// The VM called PSCI SYSTEM_OFF.
    pub const SYSTEM_OFF: u64 = 3;
    /// The VM called PSCI SYSTEM_RESET.
    pub const SYSTEM_RESET: u64 = 4;
    /// The vCPU faulted on memory whose mapping needs a table, and the VM's
    /// pages for tables are used up: x1 = the IPA. The host gives more with
    /// VM_TOPUP and runs the vCPU again, which retries the access.
    pub const MEMORY: u64 = 5;
}

/// Encodes the x2 of an MMIO exit: bits [3:0] size in bytes, bit 8 write.
#[must_use]
pub const fn mmio_flags(size: u64, write: bool) -> u64 {
    (size & 0xf) | ((write as u64) << 8)
}

/// Boot information the hypervisor writes into host memory; x0 at host
/// entry points at it. Guest images follow it in memory.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// Physical CPUs (= host vCPUs).
    pub cpus: u64,
    /// The host's RAM (identity-mapped at stage 2).
    pub ram_base: u64,
    /// Its size.
    pub ram_size: u64,
    /// First byte of RAM the host may give away (past its image, this block
    /// and the modules).
    pub free_base: u64,
    /// Boot arguments, NUL-padded.
    pub bootargs: [u8; BOOTARGS_LEN],
    /// Valid entries of `modules`.
    pub nr_modules: u64,
    /// Guest images.
    pub modules: [Module; MAX_MODULES],
    /// The PCIe host bridge the host may drive (all zero when it may not:
    /// no SMMU confines its devices' DMA, or the board has none).
    pub pci: PciWindows,
    /// The architecture version of the virtual GIC every VM gets
    /// ([`Vgic::code`]): the board's GIC (see [`layout`] for where its
    /// frames are).
    pub vgic: u64,
}

/// The virtual GIC the hypervisor gives every VM, at the IPAs of
/// [`layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vgic {
    /// GICv2: distributor at [`layout::GICD_IPA`], memory-mapped CPU
    /// interface at [`layout::GICC_V2_IPA`] (the board's GIC-400).
    V2,
    /// GICv3: distributor at [`layout::GICD_IPA`], one redistributor per
    /// vCPU from [`layout::GICR_IPA`], system-register CPU interface.
    V3,
}

impl Vgic {
    /// Its `BootInfo::vgic` value: the GIC architecture version.
    #[must_use]
    pub const fn code(self) -> u64 {
        match self {
            Vgic::V2 => 2,
            Vgic::V3 => 3,
        }
    }

    /// The version a `BootInfo::vgic` value names, if any.
    #[must_use]
    pub const fn from_code(v: u64) -> Option<Self> {
        match v {
            2 => Some(Vgic::V2),
            3 => Some(Vgic::V3),
            _ => None,
        }
    }
}

/// A generic ECAM PCIe host bridge's windows, each mapped by identity into
/// the host's stage 2 (`base`, `size` pairs).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciWindows {
    /// Configuration space (ECAM: bus << 20 | device << 15 | function << 12).
    pub ecam: [u64; 2],
    /// The 32-bit memory window, for BARs (PCI address = CPU address).
    pub mmio: [u64; 2],
    /// The I/O window.
    pub pio: [u64; 2],
    /// The INTx interrupts the hypervisor routes to host vCPU 0 (as hardware-linked virtual
    /// interrupts; the host acknowledges and ends them through its GIC CPU interface): the
    /// INTIDs of INTA..INTD of device 0, from the bridge's `interrupt-map`. Device *d*'s pin
    /// *p* (1 = INTA, its configuration space's Interrupt Pin) is `intx[(d + p - 1) % 4]`, the
    /// standard swizzle the map follows. All zero: the host gets no device interrupts.
    pub intx: [u32; 4],
}

impl PciWindows {
    /// The INTID of pin `pin` (1..=4) of device `device` on bus 0, if INTx is routed.
    #[must_use]
    pub fn intx_of(&self, device: u8, pin: u8) -> Option<u32> {
        if !(1..=4).contains(&pin) {
            return None;
        }
        let intid = self.intx[(usize::from(device) + usize::from(pin) - 1) % 4];
        (intid != 0).then_some(intid)
    }
}

/// Size of `BootInfo::bootargs`: room for the hypervisor's and host's own
/// arguments plus a guest kernel's command line (a Linux guest's) after ` -- `.
pub const BOOTARGS_LEN: usize = 512;
/// `BootInfo::magic`.
pub const BOOT_MAGIC: u64 = 0x4859_5042_4f4f_5431; // "HYPBOOT1"
/// Most modules in a `BootInfo`.
pub const MAX_MODULES: usize = 16;

/// A guest image handed to the host.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Module {
    /// Name, NUL-padded.
    pub name: [u8; 32],
    /// Physical address of the flat image in host memory.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// IPA the image must be loaded at.
    pub load_ipa: u64,
    /// Entry IPA.
    pub entry: u64,
}

impl Module {
    /// The name as a string.
    #[must_use]
    pub fn name(&self) -> &str {
        let n = self.name.iter().position(|&b| b == 0).unwrap_or(32);
        core::str::from_utf8(&self.name[..n]).unwrap_or("?")
    }
}

/// The boot arguments of the hypervisor and the host: the words before
/// ` -- `. What follows it is a guest kernel's command line
/// ([`guest_cmdline`]), which neither reads: a guest's `hyp.cpus=1` is the
/// guest's business.
#[must_use]
pub fn own_args(all: &str) -> &str {
    all.split_once(" -- ").map_or(all, |(own, _)| own)
}

/// The guest kernel's command line: what follows ` -- `, trimmed.
#[must_use]
pub fn guest_cmdline(all: &str) -> &str {
    all.split_once(" -- ").map_or("", |(_, g)| g.trim())
}

/// The value of `key=value` among [`own_args`] of `all`.
#[must_use]
pub fn own_arg<'a>(all: &'a str, key: &str) -> Option<&'a str> {
    own_args(all)
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

impl BootInfo {
    /// The boot arguments.
    #[must_use]
    pub fn bootargs(&self) -> &str {
        let n = self
            .bootargs
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(BOOTARGS_LEN);
        core::str::from_utf8(&self.bootargs[..n]).unwrap_or("")
    }
    /// The modules.
    #[must_use]
    pub fn modules(&self) -> &[Module] {
        &self.modules[..(self.nr_modules as usize).min(MAX_MODULES)]
    }
    /// The virtual GIC VMs get (`None`: a value no hypervisor writes).
    #[must_use]
    pub const fn vgic(&self) -> Option<Vgic> {
        Vgic::from_code(self.vgic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgic_codes_are_gic_versions_and_round_trip() {
        assert_eq!(Vgic::V2.code(), 2);
        assert_eq!(Vgic::V3.code(), 3);
        for v in [Vgic::V2, Vgic::V3] {
            assert_eq!(Vgic::from_code(v.code()), Some(v));
        }
        for bad in [0, 1, 4, u64::MAX] {
            assert_eq!(Vgic::from_code(bad), None);
        }
    }

    #[test]
    fn intx_swizzle() {
        let w = PciWindows {
            intx: [35, 36, 37, 38],
            ..PciWindows::default()
        };
        // Device 0 INTA..INTD, device 1 INTA (QEMU virt: SPI 3 + (d + p - 1) % 4).
        assert_eq!(w.intx_of(0, 1), Some(35));
        assert_eq!(w.intx_of(0, 4), Some(38));
        assert_eq!(w.intx_of(1, 1), Some(36));
        assert_eq!(w.intx_of(2, 1), Some(37));
        assert_eq!(w.intx_of(3, 2), Some(35));
        assert_eq!(w.intx_of(31, 4), Some(37));
        // No pin, a bad pin, no routing.
        assert_eq!(w.intx_of(2, 0), None);
        assert_eq!(w.intx_of(2, 5), None);
        assert_eq!(PciWindows::default().intx_of(0, 1), None);
    }

    #[test]
    fn guest_words_are_not_the_hypervisors() {
        let all = "hyp.cpus=2 linux=1,2 -- console=ttyAMA0 hyp.cpus=1 hyp.init=check";
        assert_eq!(own_arg(all, "hyp.cpus"), Some("2"));
        assert_eq!(own_arg(all, "hyp.init"), None);
        assert_eq!(own_arg(all, "console"), None);
        assert_eq!(own_arg("hyp.s2fwb=on", "hyp.s2fwb"), Some("on"));
        assert_eq!(own_arg("x -- hyp.s2fwb=on", "hyp.s2fwb"), None);
        assert_eq!(
            guest_cmdline(all),
            "console=ttyAMA0 hyp.cpus=1 hyp.init=check"
        );
        assert_eq!(guest_cmdline("a -- "), "");
        assert_eq!(guest_cmdline("a b"), "");
        assert_eq!(own_args("a b"), "a b");
        // Only the first ` -- ` separates: a guest may have its own.
        assert_eq!(guest_cmdline("a -- b -- c"), "b -- c");
    }
}
