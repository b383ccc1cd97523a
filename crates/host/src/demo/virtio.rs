//! The demo's virtio devices (issue 18 item 3): a console and a RAM-disk
//! block device per guest from the `virtio-dev` crate, over the guest's
//! memory as the host reaches it ([`GuestRam`], every access guarded: a
//! page the hypervisor refuses is a [`Fault`], not a crash).

use alloc::boxed::Box;
use guest_rt::println;
use virtio_dev::blk::{Block, BlockBackend, IoError, SECTOR_SIZE};
use virtio_dev::console::Console;
use virtio_dev::{Fault, GuestMemory, MmioTransport};

use super::{copy, guarded, ldrh, strh, DISK_BYTES};
use crate::{Guest, GUEST_RAM_IPA, PAGE};

/// A guest's memory as the host reaches it (it chose where to put it): the
/// [`GuestMemory`] the virtio devices use. Every access is guarded: a page
/// the hypervisor refuses (a protected guest's private memory) is a
/// [`Fault`], not a crash.
#[derive(Clone, Copy)]
pub struct GuestRam {
    ram_pa: u64,
    size: u64,
}

impl GuestRam {
    /// The guest RAM the host put at `ram_pa`, `size` bytes from
    /// [`GUEST_RAM_IPA`].
    #[must_use]
    pub fn new(ram_pa: u64, size: u64) -> Self {
        Self { ram_pa, size }
    }

    /// Host PA of guest `[ipa, ipa + len)`, if it is guest RAM.
    pub(super) fn pa(self, ipa: u64, len: u64) -> Result<u64, Fault> {
        let end = ipa.checked_add(len).ok_or(Fault { ipa })?;
        if ipa < GUEST_RAM_IPA || end > GUEST_RAM_IPA + self.size {
            return Err(Fault { ipa });
        }
        Ok(self.ram_pa + (ipa - GUEST_RAM_IPA))
    }

    /// Runs `f` over `[ipa, ipa + len)` a page at a time, guarded: `f(pa,
    /// offset, n)` accesses `n` bytes at `pa`, which are `offset` bytes
    /// into the range. Stage 2 refuses whole pages, so a fault names the
    /// first byte of the page (or part of one) that faulted.
    fn pages(self, ipa: u64, len: u64, mut f: impl FnMut(u64, usize, usize)) -> Result<(), Fault> {
        let pa = self.pa(ipa, len)?;
        let mut done = 0;
        while done < len {
            let n = (PAGE - (pa + done) % PAGE).min(len - done);
            if guarded(|| f(pa + done, done as usize, n as usize)).1 != 0 {
                return Err(Fault { ipa: ipa + done });
            }
            done += n;
        }
        Ok(())
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.pages(ipa, buf.len() as u64, |pa, at, n| {
            copy::read_guest(pa, &mut buf[at..at + n]);
        })
    }

    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), Fault> {
        self.pages(ipa, data.len() as u64, |pa, at, n| {
            copy::write_guest(pa, &data[at..at + n]);
        })
    }

    fn read_u16(&self, ipa: u64) -> Result<u16, Fault> {
        let pa = self.pa(ipa, 2)?;
        match guarded(|| ldrh(pa)) {
            (v, 0) => Ok(v),
            _ => Err(Fault { ipa }),
        }
    }

    fn write_u16(&self, ipa: u64, value: u16) -> Result<(), Fault> {
        let pa = self.pa(ipa, 2)?;
        match guarded(|| strh(pa, value)).1 {
            0 => Ok(()),
            _ => Err(Fault { ipa }),
        }
    }
}

/// A guest's RAM disk: [`DISK_BYTES`] of host RAM at `pa`.
pub(super) struct RamDisk {
    pa: u64,
}

impl BlockBackend for RamDisk {
    fn capacity(&self) -> u64 {
        DISK_BYTES / SECTOR_SIZE as u64
    }

    fn read(&mut self, sector: u64, buf: &mut [u8; SECTOR_SIZE]) -> Result<(), IoError> {
        let at = self.pa + sector * SECTOR_SIZE as u64;
        for (i, w) in buf.chunks_exact_mut(8).enumerate() {
            // SAFETY: inside this guest's RAM disk (the device checked
            // `sector` against the capacity), 8-byte aligned host memory
            // nobody else uses.
            let v = unsafe { ((at + 8 * i as u64) as *const u64).read_volatile() };
            w.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8; SECTOR_SIZE]) -> Result<(), IoError> {
        let at = self.pa + sector * SECTOR_SIZE as u64;
        for (i, w) in data.chunks_exact(8).enumerate() {
            let mut v = [0u8; 8];
            v.copy_from_slice(w);
            // SAFETY: as in `read`.
            unsafe { ((at + 8 * i as u64) as *mut u64).write_volatile(u64::from_le_bytes(v)) };
        }
        Ok(())
    }

    /// RAM: every write is already as durable as it gets.
    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}

/// The host end of a guest's virtio console: the bytes of its transmitq,
/// printed on the host's console a line at a time as `[vmH] text`, so that
/// lines of different guests do not interleave. A line longer than the
/// buffer is printed in pieces.
pub(super) struct ConsoleLines {
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

/// A guest's virtio devices, in the order of their windows.
#[derive(Clone, Copy, Debug)]
pub(super) enum Which {
    Console = 0,
    Blk = 1,
}

/// The devices of one guest. The console (its line and input buffers) and
/// the block device (its bounce page) are on the heap: every [`Guest`] is built on CPU 0's 16 KiB stack, eight at
/// a time, and a few hundred bytes more each overflowed it.
pub struct Devices {
    pub(super) console: Box<MmioTransport<Console<ConsoleLines>>>,
    pub(super) blk: Box<MmioTransport<Block<RamDisk>>>,
    /// Each device's interrupt line as last reported ([`irq_level_changed`]).
    irq: [bool; 2],
    /// The demo control device's registers.
    pub(super) pool_ipa: u64,
    pub(super) pool_pages: u64,
}

impl Devices {
    /// The devices of VM `vm`, over a RAM disk at `disk_pa` ([`DISK_BYTES`]
    /// of host RAM). A protected VM's are offered VIRTIO_F_ACCESS_PLATFORM
    /// (it reaches only what the guest shares).
    pub fn new(vm: u64, disk_pa: u64, protected: bool) -> Self {
        let out = ConsoleLines {
            vm,
            line: [0; 200],
            len: 0,
        };
        Self {
            console: Box::new(MmioTransport::new(Console::new(out), protected)),
            blk: Box::new(MmioTransport::new(
                Block::new(RamDisk { pa: disk_pa }),
                protected,
            )),
            irq: [false; 2],
            pool_ipa: 0,
            pool_pages: 0,
        }
    }

    /// Whether device `which` is broken (DEVICE_NEEDS_RESET).
    pub(super) fn broken(&self, which: Which) -> bool {
        match which {
            Which::Console => self.console.is_broken(),
            Which::Blk => self.blk.is_broken(),
        }
    }

    /// Records device `which`'s interrupt line after an access and passes a
    /// change on: the one call site of [`irq_level_changed`].
    pub(super) fn sync_irq(&mut self, g: &Guest, which: Which, level: bool) {
        let line = &mut self.irq[which as usize];
        if *line != level {
            *line = level;
            irq_level_changed(g, which, level);
        }
    }
}

/// The INTID of device `which`'s interrupt.
fn intid(which: Which) -> u32 {
    match which {
        Which::Console => guest_rt::demo::CONSOLE_INTID,
        Which::Blk => guest_rt::demo::BLK_INTID,
    }
}

/// Before VM `h` first runs: its devices' interrupts declared
/// (IRQ_DECLARE), so that [`irq_level_changed`] may drive them.
pub fn declare_irqs(h: u64) {
    for which in [Which::Console, Which::Blk] {
        let id = intid(which);
        if let Err(e) = crate::call(hyp_abi::IRQ_DECLARE, [h, u64::from(id), 0, 0]) {
            crate::fail(format_args!("IRQ_DECLARE of INTID {id} for VM {h}: {e:?}"));
        }
    }
}

/// Device `which` of `g` raised (InterruptStatus became non-zero) or
/// lowered (the driver acknowledged everything) its level-triggered
/// interrupt line: the VM's SPI follows (IRQ_LINE; the hypervisor kicks a
/// vCPU it targets that is running elsewhere).
fn irq_level_changed(g: &Guest, which: Which, level: bool) {
    let r = crate::hostif::call_full(
        hyp_abi::IRQ_LINE,
        [g.handle.0, u64::from(intid(which)), u64::from(level), 0],
    );
    if let Some(e) = hyp_abi::HostError::from_code(r[0]) {
        crate::fail(format_args!(
            "IRQ_LINE of VM {}'s {which:?} interrupt: {e:?}",
            g.handle.0
        ));
    }
}
