//! The protected-guest demo (issue 7): the host's half.
//!
//! * **Probes.** The host reads and writes guest pages with single `ldr` /
//!   `str` instructions while its exception hook is armed: an access the
//!   hypervisor refuses comes back as a synchronous external abort, which
//!   the hook counts and skips. Counts are compared with the hypervisor's
//!   own count of refused host accesses (STATS(0, 201)).
//! * **Devices.** Each guest gets a virtio-mmio console (device ID 3) and a
//!   virtio-blk device (ID 2) backed by a RAM disk in host memory, both
//!   modern (version 2) transports emulated from the MMIO exits the
//!   hypervisor forwards (virtio 1.x section 4.2.2 for the registers,
//!   section 2.7 for split virtqueues, section 5.2 for block requests).
//!   Virtqueues are read and written at the guest's IPAs through the
//!   host's knowledge of where it put the guest's memory; every such access
//!   is guarded too, so a guest that hands the device a private page makes
//!   the demo fail instead of crashing the host.
//! * **Control register** ([`guest_rt::demo::CTL_IPA`]): a guest says when
//!   its bounce-buffer pool is shared (the host checks it can read it) and
//!   when it has unshared it (the host checks every access faults again).
//! * **Teardown checks.** Reclaimed protected pages must read as zero, and
//!   no guest's secret may be anywhere in host-readable RAM.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_rt::{demo, println, Exception, Frame};

use crate::{call, Guest, GUEST_RAM, GUEST_RAM_IPA, PAGE};

const MAX_CPUS: usize = 8;
/// Value a probe's load leaves in its register when the load faulted.
const POISON: u64 = 0xdead_beef_dead_beef;
/// RAM disk per guest: 128 sectors.
pub const DISK_BYTES: u64 = 64 << 10;
const SECTOR: u64 = 512;

static ARMED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static FAULTS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Faults the probes expected (accesses to private pages), pages checked
/// readable while shared, and guests that reported success.
pub static EXPECT_DENIED: AtomicU64 = AtomicU64::new(0);
/// Pages guests shared that the host read successfully.
pub static SHARED: AtomicU64 = AtomicU64::new(0);
/// Guests that reported all their checks passed.
pub static GUESTS_OK: AtomicU64 = AtomicU64::new(0);

/// This host CPU (its vCPU's MPIDR Aff0).
fn cpu() -> usize {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {0}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
    ((mpidr & 0xff) as usize).min(MAX_CPUS - 1)
}

/// Installs the exception hook that turns refused accesses into counts.
pub fn install() {
    guest_rt::set_exception_hook(on_exception);
}

fn on_exception(e: &Exception, f: &mut Frame) -> bool {
    let c = cpu();
    // Vector 4: synchronous, current EL with SP_ELx; EC 0x25: data abort
    // taken without a change in exception level (what the hypervisor
    // injects for a refused stage-2 access).
    if e.vector == 4 && e.esr >> 26 == 0x25 && ARMED[c].load(Ordering::SeqCst) {
        FAULTS[c].fetch_add(1, Ordering::SeqCst);
        f.elr += 4;
        return true;
    }
    false
}

/// Runs `f` with this CPU's refused accesses counted and skipped; returns
/// its result and how many of its accesses faulted. `f` must access
/// possibly-refused memory only through the single-instruction helpers
/// below, so that skipping the faulting instruction skips exactly the
/// access.
fn guarded<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let c = cpu();
    let before = FAULTS[c].load(Ordering::SeqCst);
    ARMED[c].store(true, Ordering::SeqCst);
    let r = f();
    ARMED[c].store(false, Ordering::SeqCst);
    (r, FAULTS[c].load(Ordering::SeqCst) - before)
}

/// One `ldr` of the 8-byte word at `pa` (POISON if it faulted).
fn ldr64(pa: u64) -> u64 {
    let mut v = POISON;
    // SAFETY: a single load from host RAM (identity-mapped at stage 2); if
    // the hypervisor refuses it, the armed hook skips it.
    unsafe {
        asm!("ldr {v}, [{a}]", v = inout(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
    v
}

/// One `str` of `v` to `pa`.
fn str64(pa: u64, v: u64) {
    // SAFETY: as `ldr64`; callers only store to guest memory the guest
    // shared or lent, or store back what they just read.
    unsafe {
        asm!("str {v}, [{a}]", v = in(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
}

fn ldrb(pa: u64) -> u8 {
    let mut v: u32 = 0;
    // SAFETY: as `ldr64`.
    unsafe {
        asm!("ldrb {v:w}, [{a}]", v = inout(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
    v as u8
}

fn strb(pa: u64, v: u8) {
    // SAFETY: as `str64`.
    unsafe {
        asm!("strb {v:w}, [{a}]", v = in(reg) u32::from(v), a = in(reg) pa, options(nostack, preserves_flags))
    };
}

fn ldrh(pa: u64) -> u16 {
    let mut v: u32 = 0;
    // SAFETY: as `ldr64`.
    unsafe {
        asm!("ldrh {v:w}, [{a}]", v = inout(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
    v as u16
}

fn strh(pa: u64, v: u16) {
    // SAFETY: as `str64`.
    unsafe {
        asm!("strh {v:w}, [{a}]", v = in(reg) u32::from(v), a = in(reg) pa, options(nostack, preserves_flags))
    };
}

fn str32(pa: u64, v: u32) {
    // SAFETY: as `str64`.
    unsafe {
        asm!("str {v:w}, [{a}]", v = in(reg) v, a = in(reg) pa, options(nostack, preserves_flags))
    };
}

/// The hypervisor's count of host accesses it refused.
pub fn hyp_denied() -> u64 {
    call(hyp_abi::STATS, [0, 201, 0, 0]).unwrap_or(u64::MAX)
}

/// Reads, then writes back what was read, the first word of each of
/// `pages` pages from `pa`: two accesses per page. Returns the faults.
/// (A page that reads back POISON because the load faulted is written
/// with POISON, which must fault too; a page wrongly left readable gets
/// its own value back, so a leak is reported without corrupting it.)
pub fn probe_rw(pa: u64, pages: u64) -> u64 {
    guarded(|| {
        for p in 0..pages {
            let a = pa + p * PAGE;
            let v = ldr64(a);
            str64(a, v);
        }
    })
    .1
}

/// Reads the first word of each page: returns the faults.
pub fn probe_r(pa: u64, pages: u64) -> u64 {
    guarded(|| {
        for p in 0..pages {
            core::hint::black_box(ldr64(pa + p * PAGE));
        }
    })
    .1
}

/// Probes a newly created VM's memory: a protected VM's must refuse every
/// read and write, a normal VM's must stay readable.
pub fn probe_new_vm(g: &Guest) {
    let pages = GUEST_RAM / PAGE;
    let h = g.handle.0;
    let before = hyp_denied();
    if g.protected {
        let faults = probe_rw(g.ram_pa, pages);
        let counted = hyp_denied() - before;
        println!(
            "demo: VM {h}: host read+write of each of its {pages} donated pages: {faults} of {} accesses faulted (hypervisor counted {counted})",
            2 * pages
        );
        if faults != 2 * pages || counted != faults {
            crate::fail(format_args!(
                "VM {h}: {} of {} host accesses to donated pages were not refused (hypervisor counted {counted})",
                2 * pages - faults,
                2 * pages
            ));
        }
        EXPECT_DENIED.fetch_add(2 * pages, Ordering::SeqCst);
    } else {
        let faults = probe_r(g.ram_pa, pages);
        println!(
            "demo: VM {h}: host read of each of its {pages} lent pages: {} readable (normal VM, for contrast)",
            pages - faults
        );
        if faults != 0 || hyp_denied() != before {
            crate::fail(format_args!(
                "VM {h}: {faults} reads of a normal VM's memory faulted"
            ));
        }
    }
}

/// A guest's memory as the host reaches it (it chose where to put it).
#[derive(Clone, Copy)]
struct Mem {
    ram_pa: u64,
}

#[derive(Debug)]
struct Bad(u64);

impl Mem {
    /// Host PA of guest `[ipa, ipa + len)`, if it is guest RAM and aligned
    /// to `align`.
    fn pa(self, ipa: u64, len: u64, align: u64) -> Result<u64, Bad> {
        let end = ipa.checked_add(len).ok_or(Bad(ipa))?;
        if ipa < GUEST_RAM_IPA || end > GUEST_RAM_IPA + GUEST_RAM || !ipa.is_multiple_of(align) {
            return Err(Bad(ipa));
        }
        Ok(self.ram_pa + (ipa - GUEST_RAM_IPA))
    }
    fn check<T>(r: (T, u64), ipa: u64) -> Result<T, Bad> {
        if r.1 == 0 {
            Ok(r.0)
        } else {
            Err(Bad(ipa))
        }
    }
    fn r8(self, ipa: u64) -> Result<u8, Bad> {
        let pa = self.pa(ipa, 1, 1)?;
        Self::check(guarded(|| ldrb(pa)), ipa)
    }
    fn w8(self, ipa: u64, v: u8) -> Result<(), Bad> {
        let pa = self.pa(ipa, 1, 1)?;
        Self::check(guarded(|| strb(pa, v)), ipa)
    }
    fn r16(self, ipa: u64) -> Result<u16, Bad> {
        let pa = self.pa(ipa, 2, 2)?;
        Self::check(guarded(|| ldrh(pa)), ipa)
    }
    fn w16(self, ipa: u64, v: u16) -> Result<(), Bad> {
        let pa = self.pa(ipa, 2, 2)?;
        Self::check(guarded(|| strh(pa, v)), ipa)
    }
    fn w32(self, ipa: u64, v: u32) -> Result<(), Bad> {
        let pa = self.pa(ipa, 4, 4)?;
        Self::check(guarded(|| str32(pa, v)), ipa)
    }
    fn r64(self, ipa: u64) -> Result<u64, Bad> {
        let pa = self.pa(ipa, 8, 8)?;
        Self::check(guarded(|| ldr64(pa)), ipa)
    }
    /// Little-endian value of `n` bytes at `ipa` (any alignment).
    fn bytes_le(self, ipa: u64, n: u64) -> Result<u64, Bad> {
        let mut v = 0;
        for i in 0..n {
            v |= u64::from(self.r8(ipa + i)?) << (8 * i);
        }
        Ok(v)
    }
}

/// One split virtqueue's registers.
#[derive(Clone, Copy, Default)]
struct Queue {
    num: u32,
    ready: u32,
    desc: u64,
    driver: u64,
    device: u64,
    last_avail: u16,
}

/// One virtio-mmio transport's registers.
#[derive(Default)]
struct Dev {
    id: u32,
    status: u32,
    dev_features_sel: u32,
    drv_features_sel: u32,
    drv_features: [u32; 2],
    queue_sel: u32,
    queues: [Queue; 2],
    isr: u32,
}

const MAGIC: u32 = 0x7472_6976; // "virt"
const VENDOR: u32 = 0x5048_5948; // "HYHP"
/// Queues each device has and their largest size.
const QUEUE_NUM_MAX: u32 = 64;
/// VIRTIO_F_VERSION_1 (bit 32): the only feature offered.
const FEATURES_HI: u32 = 1;
/// Descriptor flags.
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const DESC_INDIRECT: u16 = 4;

impl Dev {
    fn new(id: u32) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }
    fn nr_queues(&self) -> u32 {
        if self.id == 3 {
            2
        } else {
            1
        }
    }
    fn queue(&mut self) -> Option<&mut Queue> {
        let n = self.nr_queues();
        let s = self.queue_sel;
        (s < n).then(|| &mut self.queues[s as usize])
    }
    fn read(&mut self, off: u64, capacity: u64) -> u64 {
        let q = self.queue().copied().unwrap_or_default();
        u64::from(match off {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => self.id,
            0x00c => VENDOR,
            0x010 if self.dev_features_sel == 1 => FEATURES_HI,
            0x034 if self.queue_sel < self.nr_queues() => QUEUE_NUM_MAX,
            0x038 => q.num,
            0x044 => q.ready,
            0x060 => self.isr,
            0x070 => self.status,
            0x080 => q.desc as u32,
            0x084 => (q.desc >> 32) as u32,
            0x090 => q.driver as u32,
            0x094 => (q.driver >> 32) as u32,
            0x0a0 => q.device as u32,
            0x0a4 => (q.device >> 32) as u32,
            0x0fc => 0,
            // virtio-blk config: capacity in 512-byte sectors (a 64-bit
            // read at 0x100 gets both halves).
            0x100 if self.id == 2 => return capacity,
            0x104 if self.id == 2 => (capacity >> 32) as u32,
            _ => 0,
        })
    }
    /// A register write; `Some(queue)` for a QueueNotify.
    fn write(&mut self, off: u64, v: u64) -> Option<u32> {
        let v32 = v as u32;
        let set_lo = |x: &mut u64| *x = (*x & !0xffff_ffff) | u64::from(v32);
        let set_hi = |x: &mut u64| *x = (*x & 0xffff_ffff) | (u64::from(v32) << 32);
        match off {
            0x014 => self.dev_features_sel = v32,
            0x020 => {
                let s = self.drv_features_sel as usize;
                if s < 2 {
                    self.drv_features[s] = v32;
                }
            }
            0x024 => self.drv_features_sel = v32,
            0x030 => self.queue_sel = v32,
            0x038 => {
                if let Some(q) = self.queue() {
                    q.num = v32.min(QUEUE_NUM_MAX);
                }
            }
            0x044 => {
                if let Some(q) = self.queue() {
                    q.ready = v32 & 1;
                    q.last_avail = 0;
                }
            }
            0x050 => return Some(v32),
            0x064 => self.isr &= !v32,
            0x070 => {
                self.status = v32;
                if v32 == 0 {
                    // Device reset (virtio 1.x 4.2.2.1).
                    let id = self.id;
                    *self = Self::new(id);
                }
            }
            0x080 => self.queue().into_iter().for_each(|q| set_lo(&mut q.desc)),
            0x084 => self.queue().into_iter().for_each(|q| set_hi(&mut q.desc)),
            0x090 => self.queue().into_iter().for_each(|q| set_lo(&mut q.driver)),
            0x094 => self.queue().into_iter().for_each(|q| set_hi(&mut q.driver)),
            0x0a0 => self.queue().into_iter().for_each(|q| set_lo(&mut q.device)),
            0x0a4 => self.queue().into_iter().for_each(|q| set_hi(&mut q.device)),
            _ => {}
        }
        None
    }
}

/// A descriptor.
#[derive(Clone, Copy, Default)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
}

/// Longest descriptor chain handled.
const MAX_CHAIN: usize = 8;

/// The host end of a guest's virtio console: the bytes of its transmitq,
/// printed on the host's console a line at a time as `[vmH] text`, so that
/// lines of different guests do not interleave. A line longer than the
/// buffer is printed in pieces.
struct ConsoleLines {
    vm: u64,
    line: [u8; 200],
    len: usize,
}

impl ConsoleLines {
    fn print_line(&mut self) {
        let s = core::str::from_utf8(&self.line[..self.len]).unwrap_or("<not UTF-8>");
        println!("[vm{}] {s}", self.vm);
        self.len = 0;
    }
}

impl embedded_io::ErrorType for ConsoleLines {
    type Error = core::convert::Infallible;
}

impl embedded_io::Write for ConsoleLines {
    /// Takes all of `buf`: complete lines are printed, the rest is kept.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &b in buf {
            if b == b'\n' || self.len == self.line.len() {
                self.print_line();
            }
            if b != b'\n' {
                self.line[self.len] = b;
                self.len += 1;
            }
        }
        Ok(buf.len())
    }

    /// Prints the unfinished line, if any.
    fn flush(&mut self) -> Result<(), Self::Error> {
        if self.len != 0 {
            self.print_line();
        }
        Ok(())
    }
}

/// The devices of one guest.
pub struct Devices {
    console: Dev,
    blk: Dev,
    console_out: ConsoleLines,
    disk_pa: u64,
    pool_ipa: u64,
    pool_pages: u64,
}

impl Devices {
    /// The devices of VM `vm`, over a RAM disk at `disk_pa` ([`DISK_BYTES`]
    /// of host RAM).
    pub fn new(vm: u64, disk_pa: u64) -> Self {
        Self {
            console: Dev::new(3),
            blk: Dev::new(2),
            console_out: ConsoleLines {
                vm,
                line: [0; 200],
                len: 0,
            },
            disk_pa,
            pool_ipa: 0,
            pool_pages: 0,
        }
    }
}

/// Whether `ipa` belongs to the demo's devices.
pub fn is_demo_device(ipa: u64) -> bool {
    (demo::CONSOLE_IPA..demo::BLK_IPA + demo::VIRTIO_MMIO_SIZE).contains(&ipa)
        || (demo::CTL_IPA..demo::CTL_IPA + 0x100).contains(&ipa)
}

/// An MMIO access to one of the demo's devices by guest `g`; the value of
/// a read.
pub fn mmio(g: &Guest, ipa: u64, write: bool, value: u64) -> u64 {
    let mem = Mem { ram_pa: g.ram_pa };
    let mut d = g.devices.lock();
    let capacity = DISK_BYTES / SECTOR;
    if (demo::CTL_IPA..demo::CTL_IPA + 0x100).contains(&ipa) {
        if write {
            control(g, &mut d, mem, ipa - demo::CTL_IPA, value);
        }
        return 0;
    }
    let (is_console, off) = if ipa < demo::BLK_IPA {
        (true, ipa - demo::CONSOLE_IPA)
    } else {
        (false, ipa - demo::BLK_IPA)
    };
    let dev = if is_console {
        &mut d.console
    } else {
        &mut d.blk
    };
    if !write {
        return dev.read(off, capacity);
    }
    let Some(q) = dev.write(off, value) else {
        return 0;
    };
    let r = if is_console {
        // Queue 0 (receiveq) only receives buffers: there is no input.
        if q == 1 {
            process(&mut d, mem, true)
        } else {
            Ok(())
        }
    } else if q == 0 {
        process(&mut d, mem, false)
    } else {
        Ok(())
    };
    if let Err(Bad(at)) = r {
        crate::fail(format_args!(
            "VM {}: its virtqueue points at IPA {at:#x}, which the host cannot access",
            g.handle.0
        ));
    }
    0
}

/// Processes every new available buffer of the console's transmitq or the
/// block device's requestq.
fn process(d: &mut Devices, mem: Mem, console: bool) -> Result<(), Bad> {
    let qi = usize::from(console);
    let q = if console {
        d.console.queues[qi]
    } else {
        d.blk.queues[qi]
    };
    if q.ready == 0 || q.num == 0 {
        return Ok(());
    }
    let num = u64::from(q.num);
    let avail_idx = mem.r16(q.driver + 2)?;
    let mut last = q.last_avail;
    // A guest cannot make more buffers available than the ring holds.
    if avail_idx.wrapping_sub(last) as u32 > q.num {
        return Err(Bad(q.driver));
    }
    while last != avail_idx {
        let head = mem.r16(q.driver + 4 + 2 * (u64::from(last) % num))?;
        // The chain.
        let mut chain = [Desc::default(); MAX_CHAIN];
        let mut n = 0;
        let mut i = head;
        loop {
            if u64::from(i) >= num || n == MAX_CHAIN {
                return Err(Bad(q.desc));
            }
            let at = q.desc + 16 * u64::from(i);
            let addr = mem.r64(at)?;
            let len = mem.bytes_le(at + 8, 4)? as u32;
            let flags = mem.bytes_le(at + 12, 2)? as u16;
            let next = mem.bytes_le(at + 14, 2)? as u16;
            if flags & DESC_INDIRECT != 0 {
                return Err(Bad(at));
            }
            chain[n] = Desc { addr, len, flags };
            n += 1;
            if flags & DESC_NEXT == 0 {
                break;
            }
            i = next;
        }
        let used_len = if console {
            console_tx(d, mem, &chain[..n])?;
            0
        } else {
            blk_request(d, mem, &chain[..n])?
        };
        let used_idx = mem.r16(q.device + 2)?;
        let slot = q.device + 4 + 8 * (u64::from(used_idx) % num);
        mem.w32(slot, u32::from(head))?;
        mem.w32(slot + 4, used_len)?;
        mem.w16(q.device + 2, used_idx.wrapping_add(1))?;
        last = last.wrapping_add(1);
    }
    let dev = if console { &mut d.console } else { &mut d.blk };
    dev.queues[qi].last_avail = last;
    dev.isr |= 1;
    Ok(())
}

/// Hands the bytes of a transmitq chain's device-readable buffers to the
/// guest's console output, a chunk at a time.
fn console_tx(d: &mut Devices, mem: Mem, chain: &[Desc]) -> Result<(), Bad> {
    let mut chunk = [0u8; 64];
    for desc in chain.iter().filter(|c| c.flags & DESC_WRITE == 0) {
        let len = u64::from(desc.len);
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            for (i, b) in chunk[..n as usize].iter_mut().enumerate() {
                *b = mem.r8(desc.addr + done + i as u64)?;
            }
            let Ok(()) = embedded_io::Write::write_all(&mut d.console_out, &chunk[..n as usize]);
            done += n;
        }
    }
    Ok(())
}

/// A virtio-blk request (virtio 1.x 5.2.6): header, data, status byte.
/// Returns the bytes written into the guest's buffers.
fn blk_request(d: &mut Devices, mem: Mem, chain: &[Desc]) -> Result<u32, Bad> {
    const IN: u64 = 0;
    const OUT: u64 = 1;
    const FLUSH: u64 = 4;
    const S_OK: u8 = 0;
    const S_IOERR: u8 = 1;
    const S_UNSUPP: u8 = 2;
    let (Some(hdr), Some(status)) = (chain.first(), chain.last()) else {
        return Ok(0);
    };
    if chain.len() < 2 || hdr.len < 16 || status.flags & DESC_WRITE == 0 || status.len < 1 {
        return Err(Bad(hdr.addr));
    }
    let kind = mem.bytes_le(hdr.addr, 4)?;
    let sector = mem.bytes_le(hdr.addr + 8, 8)?;
    let data = &chain[1..chain.len() - 1];
    let total: u64 = data.iter().map(|c| u64::from(c.len)).sum();
    let in_range = sector
        .checked_mul(SECTOR)
        .and_then(|s| s.checked_add(total))
        .is_some_and(|e| e <= DISK_BYTES);
    let mut written = 0u32;
    let st = match kind {
        IN | OUT if !in_range => S_IOERR,
        IN | OUT => {
            let mut off = sector * SECTOR;
            for c in data {
                let to_guest = c.flags & DESC_WRITE != 0;
                if to_guest != (kind == IN) {
                    return Err(Bad(c.addr));
                }
                for i in 0..u64::from(c.len) {
                    let disk = (d.disk_pa + off + i) as *mut u8;
                    if to_guest {
                        // SAFETY: inside this guest's RAM disk (range
                        // checked above), host memory nobody else uses.
                        mem.w8(c.addr + i, unsafe { disk.read_volatile() })?;
                    } else {
                        let b = mem.r8(c.addr + i)?;
                        // SAFETY: as above.
                        unsafe { disk.write_volatile(b) };
                    }
                }
                off += u64::from(c.len);
                if to_guest {
                    written += c.len;
                }
            }
            S_OK
        }
        FLUSH => S_OK,
        _ => S_UNSUPP,
    };
    mem.w8(status.addr, st)?;
    Ok(written + 1)
}

/// A write to the demo control device.
fn control(g: &Guest, d: &mut Devices, mem: Mem, off: u64, v: u64) {
    let h = g.handle.0;
    match off {
        demo::CTL_POOL_IPA => d.pool_ipa = v,
        demo::CTL_POOL_PAGES => d.pool_pages = v,
        demo::CTL_CMD => match v {
            demo::CMD_SHARED | demo::CMD_UNSHARED => {
                let pages = d.pool_pages;
                let Some(Ok(pa)) = pages
                    .checked_mul(PAGE)
                    .map(|len| mem.pa(d.pool_ipa, len, PAGE))
                else {
                    crate::fail(format_args!("VM {h}: its pool is not in its memory"));
                };
                if !g.protected {
                    crate::fail(format_args!("VM {h}: a normal VM reported sharing"));
                }
                let before = hyp_denied();
                if v == demo::CMD_SHARED {
                    let faults = probe_r(pa, pages);
                    println!(
                        "demo: VM {h}: the {pages} pages it shared (MEM_SHARE): {} readable by the host",
                        pages - faults
                    );
                    if faults != 0 {
                        crate::fail(format_args!(
                            "VM {h}: {faults} of {pages} shared pages were not readable"
                        ));
                    }
                    SHARED.fetch_add(pages, Ordering::SeqCst);
                } else {
                    let faults = probe_rw(pa, pages);
                    let counted = hyp_denied() - before;
                    println!(
                        "demo: VM {h}: after MEM_UNSHARE: {faults} of {} host reads+writes of those pages faulted (hypervisor counted {counted})",
                        2 * pages
                    );
                    if faults != 2 * pages || counted != faults {
                        crate::fail(format_args!(
                            "VM {h}: {} of {} accesses to unshared pages were not refused",
                            2 * pages - faults,
                            2 * pages
                        ));
                    }
                    EXPECT_DENIED.fetch_add(2 * pages, Ordering::SeqCst);
                }
            }
            demo::CMD_RESULT_OK => {
                GUESTS_OK.fetch_add(1, Ordering::SeqCst);
            }
            demo::CMD_RESULT_FAIL => {
                crate::fail(format_args!("VM {h} reported a failed check"));
            }
            _ => {}
        },
        _ => {}
    }
}

/// After VM_DESTROY of a protected VM: every reclaimed page must read zero.
pub fn check_scrubbed(g: &Guest, scrubbed: u64) {
    let h = g.handle.0;
    let pages = GUEST_RAM / PAGE;
    if scrubbed != pages {
        crate::fail(format_args!(
            "VM {h}: {scrubbed} pages scrubbed, {pages} donated"
        ));
    }
    let (nonzero, faults) = guarded(|| {
        let mut nonzero = 0u64;
        for w in 0..GUEST_RAM / 8 {
            if ldr64(g.ram_pa + 8 * w) != 0 {
                nonzero += 1;
            }
        }
        nonzero
    });
    println!(
        "demo: VM {h} destroyed: {scrubbed} pages scrubbed; the host read them back: {}",
        if nonzero == 0 && faults == 0 {
            "all zero"
        } else {
            "NOT ZERO"
        }
    );
    if nonzero != 0 || faults != 0 {
        crate::fail(format_args!(
            "VM {h}: {nonzero} non-zero words and {faults} faults in reclaimed memory"
        ));
    }
}

/// Searches all host RAM for the secrets of `handles` (8-byte aligned, as
/// the guests store them). The host holds each secret only XORed with a
/// mask, so the search cannot find its own needle.
pub fn scan_secrets(ram_base: u64, ram_size: u64, handles: &[u64]) {
    let mask = core::hint::black_box(0xa5c3_5a3c_9669_f00f_u64);
    let mut needles = [[0u64; 2]; 8];
    for (n, &h) in needles.iter_mut().zip(handles) {
        let s = demo::secret(h);
        *n = [s[0] ^ mask, s[1] ^ mask];
    }
    let needles = &needles[..handles.len().min(8)];
    // The search must be able to find a secret: plant VM handles[0]'s in a
    // scratch page, search that page, then erase it.
    if let (Some(&h), Some(page)) = (handles.first(), crate::alloc_pages(PAGE)) {
        let s = demo::secret(h);
        // SAFETY: a fresh page of host RAM nobody else uses.
        unsafe {
            ((page + 0x100) as *mut u64).write_volatile(s[0]);
            ((page + 0x108) as *mut u64).write_volatile(s[1]);
        }
        let hit = find(page, PAGE, needles, mask).0;
        for w in 0..PAGE / 8 {
            // SAFETY: as above.
            unsafe { ((page + 8 * w) as *mut u64).write_volatile(0) };
        }
        if hit != Some((0, page + 0x100)) {
            crate::fail(format_args!("the secret search missed a planted secret"));
        }
        println!(
            "demo: secret search self-test: found a planted copy of VM {h}'s secret, erased it"
        );
    }
    let (found, faults) = find(ram_base, ram_size, needles, mask);
    if let Some((i, at)) = found {
        crate::fail(format_args!(
            "the secret of VM {} is in host memory at {at:#x}",
            handles[i]
        ));
    }
    if faults != 0 {
        crate::fail(format_args!("{faults} faults reading the host's own RAM"));
    }
    println!(
        "demo: secrets of VM {} not found in {} MiB of host-readable RAM at {ram_base:#x}",
        Join(handles),
        ram_size >> 20
    );
}

struct Join<'a>(&'a [u64]);

impl core::fmt::Display for Join<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, h) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(if i + 1 == self.0.len() { " and " } else { ", " })?;
            }
            write!(f, "{h}")?;
        }
        Ok(())
    }
}

/// One `ldp` of the 16 bytes at `pa` (POISON twice if it faulted).
fn ldp(pa: u64) -> (u64, u64) {
    let (mut a, mut b) = (POISON, POISON);
    // SAFETY: as `ldr64`: a single load instruction.
    unsafe {
        asm!("ldp {a}, {b}, [{p}]", a = inout(reg) a, b = inout(reg) b, p = in(reg) pa, options(nostack, preserves_flags));
    }
    (a, b)
}

/// Searches `[base, base + size)` (8-byte steps) for any of the masked
/// `needles`: the needle index and address found, and the faults taken.
fn find(base: u64, size: u64, needles: &[[u64; 2]], mask: u64) -> (Option<(usize, u64)>, u64) {
    guarded(|| {
        let mut a = base;
        let end = base + size;
        // Two words per load; a secret starting at the second word of a
        // pair continues in the next pair.
        while a + 16 <= end {
            let (w0, w1) = ldp(a);
            let (x0, x1) = (w0 ^ mask, w1 ^ mask);
            for (i, n) in needles.iter().enumerate() {
                if x0 == n[0] && x1 == n[1] {
                    return Some((i, a));
                }
                if x1 == n[0] && a + 24 <= end && ldr64(a + 16) ^ mask == n[1] {
                    return Some((i, a + 8));
                }
            }
            a += 16;
        }
        None
    })
}
