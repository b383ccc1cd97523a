//! Split virtqueues (virtio 1.2 section 2.7), device side, with every guest value checked.
//!
//! A queue is three areas in guest memory: the descriptor table (16 bytes per descriptor,
//! 2.7.5), the driver area or available ring (`flags`, `idx`, `ring[size]`, 2.7.6) and the
//! device area or used ring (`flags`, `idx`, `ring[size]` of `{id, len}`, 2.7.8). A device
//! [`Queues::pop`]s the next available chain, serves it through a [`Reader`] over its
//! device-readable buffers and a [`Writer`] over its device-writable ones, and
//! [`Queues::push`]es it to the used ring.
//!
//! Checks, and what a failure does:
//!
//! | check | on failure |
//! |---|---|
//! | size a power of two, 1..=[`QUEUE_SIZE_MAX`]; rings aligned (2.7: 16/2/4) and not wrapping | device broken at QueueReady |
//! | available idx at most `size` past the last one seen (2.7.6) | device broken |
//! | descriptor index below `size` (2.7.5) | device broken |
//! | chain at most `size` long: a loop is a chain that never ends (2.7.5.2) | device broken |
//! | no INDIRECT flag: VIRTIO_F_INDIRECT_DESC is not offered (2.7.5.3.1) | device broken |
//! | a ring access faults | device broken |
//! | no zero-length buffer, each at most [`MAX_DESC_LEN`], all at most [`MAX_CHAIN_BYTES`], none wrapping | the request fails ([`ChainDefect`]) |
//! | device-readable buffers before device-writable ones (2.7.4.2) | the request fails |
//!
//! "Device broken" is the transport's DEVICE_NEEDS_RESET (2.1.2): nothing more is processed
//! until the driver resets the device. A failed request is completed by its device (a block
//! request with `VIRTIO_BLK_S_IOERR` if its status byte can be found) and never has its
//! buffers touched through a [`Reader`] or [`Writer`].

use core::sync::atomic::{fence, Ordering};

use crate::{Error, Fault, GuestMemory, MAX_CHAIN_BYTES, MAX_DESC_LEN, MAX_QUEUES, QUEUE_SIZE_MAX};

/// Descriptor flags (2.7.5).
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver does not want used-buffer notifications (2.7.7).
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// InterruptStatus bits (4.2.2): a used buffer, a configuration change.
pub(crate) const INT_USED: u32 = 1;
pub(crate) const INT_CONFIG: u32 = 2;

/// One queue's configuration registers and the device's ring positions.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QueueState {
    /// QueueNum: what the driver chose (checked at QueueReady).
    pub(crate) size: u16,
    pub(crate) ready: bool,
    /// QueueDesc, QueueDriver, QueueDevice.
    pub(crate) desc: u64,
    pub(crate) driver: u64,
    pub(crate) device: u64,
    /// The next available-ring entry to take, and the next used-ring entry to fill: the
    /// device's own copies, never read back from guest memory.
    pub(crate) last_avail: u16,
    pub(crate) next_used: u16,
}

impl QueueState {
    /// Whether the configuration may be made ready: a power-of-two size up to the maximum
    /// (2.7: split queue sizes are powers of two), rings aligned as 2.7's table requires
    /// (descriptor table 16, driver area 2, device area 4) and none wrapping past 2^64.
    pub(crate) fn valid(&self) -> bool {
        let n = u64::from(self.size);
        let fits = |addr: u64, len: u64, align: u64| {
            addr.is_multiple_of(align) && addr.checked_add(len).is_some()
        };
        self.size.is_power_of_two()
            && self.size <= QUEUE_SIZE_MAX
            && fits(self.desc, 16 * n, 16)
            && fits(self.driver, 6 + 2 * n, 2)
            && fits(self.device, 6 + 8 * n, 4)
    }
}

/// The transport's queue and interrupt state, lent to a device while it works.
#[derive(Debug, Default)]
pub(crate) struct Rings {
    pub(crate) queues: [QueueState; MAX_QUEUES],
    /// Queues the device has.
    pub(crate) count: u16,
    /// InterruptStatus.
    pub(crate) isr: u32,
    /// DEVICE_NEEDS_RESET: set on a queue error, cleared only by a reset.
    pub(crate) broken: bool,
    /// The first error not yet taken by the host.
    pub(crate) error: Option<Error>,
    /// A hostile host's bytes added to every used-ring length ([`Queues::push`]); 0 for a
    /// device that follows 2.7.8 (kept across resets).
    pub(crate) overstate: u32,
    /// Used-ring lengths written past their chain's writable bytes so far.
    pub(crate) overstated: u64,
}

impl Rings {
    pub(crate) fn record(&mut self, e: Error) {
        self.error.get_or_insert(e);
    }

    /// Marks the device broken (2.1.2: DEVICE_NEEDS_RESET, then a configuration change
    /// notification).
    pub(crate) fn break_device(&mut self, e: Error) -> Broken {
        self.record(e);
        if !self.broken {
            self.broken = true;
            self.isr |= INT_CONFIG;
        }
        Broken
    }
}

/// The device is broken (DEVICE_NEEDS_RESET is set): stop processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broken;

/// A descriptor as the device uses it: a guest buffer and its direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest IPA of the buffer.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE), else device-readable.
    pub writable: bool,
}

/// What is wrong with a chain whose structure is sound; its request fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainDefect {
    /// A buffer of length 0.
    ZeroLength,
    /// A buffer over [`MAX_DESC_LEN`], or all of them over [`MAX_CHAIN_BYTES`].
    TooLarge,
    /// A buffer that wraps past the end of the address space.
    Wraps,
    /// A device-writable buffer before a device-readable one (2.7.4.2).
    WritableBeforeReadable,
}

/// A descriptor chain taken from the available ring, copied out of guest memory once (so
/// the driver changing the table afterwards changes nothing) and checked.
#[derive(Clone, Debug)]
pub struct Chain {
    head: u16,
    descs: [Desc; QUEUE_SIZE_MAX as usize],
    count: usize,
    /// Descriptors before the first device-writable one.
    readable: usize,
    defect: Option<ChainDefect>,
}

impl Chain {
    /// An empty chain for [`Queues::pop`] to fill. A chain is 2 KiB (room
    /// for a queue's worth of descriptors): devices keep one and pop into
    /// it, as moving it by value costs more than serving a request.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            head: 0,
            descs: [Desc::default(); QUEUE_SIZE_MAX as usize],
            count: 0,
            readable: 0,
            defect: None,
        }
    }

    /// Checks the buffers (not the structure: [`Queues::pop`] did that).
    fn check(&mut self) {
        let descs = &self.descs[..self.count];
        self.readable = descs.iter().take_while(|d| !d.writable).count();
        let mut total = 0u64;
        for d in descs {
            total += u64::from(d.len);
        }
        self.defect = if descs.iter().any(|d| d.len == 0) {
            Some(ChainDefect::ZeroLength)
        } else if descs.iter().any(|d| d.len > MAX_DESC_LEN) || total > MAX_CHAIN_BYTES {
            Some(ChainDefect::TooLarge)
        } else if descs
            .iter()
            .any(|d| d.addr.checked_add(u64::from(d.len)).is_none())
        {
            Some(ChainDefect::Wraps)
        } else if descs[self.readable..].iter().any(|d| !d.writable) {
            Some(ChainDefect::WritableBeforeReadable)
        } else {
            None
        };
    }

    /// The head descriptor's index (the used-ring `id`).
    #[must_use]
    pub fn head(&self) -> u16 {
        self.head
    }

    /// All descriptors, in chain order.
    #[must_use]
    pub fn descriptors(&self) -> &[Desc] {
        &self.descs[..self.count]
    }

    /// What is wrong with the buffers, if anything; a defective chain has no readable or
    /// writable bytes for [`Reader`] and [`Writer`].
    #[must_use]
    pub fn defect(&self) -> Option<ChainDefect> {
        self.defect
    }

    fn readable_descs(&self) -> &[Desc] {
        if self.defect.is_some() {
            return &[];
        }
        &self.descs[..self.readable]
    }

    fn writable_descs(&self) -> &[Desc] {
        if self.defect.is_some() {
            return &[];
        }
        &self.descs[self.readable..self.count]
    }

    /// Total bytes of the device-readable buffers (0 for a defective chain).
    #[must_use]
    pub fn readable_len(&self) -> u64 {
        self.readable_descs().iter().map(|d| u64::from(d.len)).sum()
    }

    /// Total bytes of the device-writable buffers (0 for a defective chain).
    #[must_use]
    pub fn writable_len(&self) -> u64 {
        self.writable_descs().iter().map(|d| u64::from(d.len)).sum()
    }

    /// A reader over the device-readable buffers, in order.
    #[must_use]
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            descs: self.readable_descs(),
            idx: 0,
            off: 0,
        }
    }

    /// A writer over the device-writable buffers, in order.
    #[must_use]
    pub fn writer(&self) -> Writer<'_> {
        Writer {
            descs: self.writable_descs(),
            idx: 0,
            off: 0,
            written: 0,
        }
    }

    /// The IPA of the last byte of the last buffer, if that buffer is device-writable, not
    /// empty, not over [`MAX_DESC_LEN`] and not wrapping, even in a defective chain: where a
    /// block request's status byte goes (5.2.6), so a failed request can still say so.
    #[must_use]
    pub fn last_writable_byte(&self) -> Option<u64> {
        let d = self.descriptors().last()?;
        if !d.writable || d.len == 0 || d.len > MAX_DESC_LEN {
            return None;
        }
        d.addr.checked_add(u64::from(d.len) - 1)
    }
}

/// Reads a chain's device-readable buffers in order, never past them.
#[derive(Debug)]
pub struct Reader<'c> {
    descs: &'c [Desc],
    idx: usize,
    off: u32,
}

impl Reader<'_> {
    /// Bytes not yet read.
    #[must_use]
    pub fn remaining(&self) -> u64 {
        let rest: u64 = self
            .descs
            .iter()
            .skip(self.idx)
            .map(|d| u64::from(d.len))
            .sum();
        rest - u64::from(self.off)
    }

    /// Reads up to `buf.len()` bytes; returns how many (less only at the end of the buffers).
    ///
    /// # Errors
    ///
    /// [`Fault`] if a buffer is not accessible.
    pub fn read<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        buf: &mut [u8],
    ) -> Result<usize, Fault> {
        let mut done = 0;
        while done < buf.len() {
            let Some(d) = self.descs.get(self.idx) else {
                break;
            };
            let n = (buf.len() - done).min((d.len - self.off) as usize);
            mem.read(d.addr + u64::from(self.off), &mut buf[done..done + n])?;
            done += n;
            self.off += n as u32;
            if self.off == d.len {
                self.idx += 1;
                self.off = 0;
            }
        }
        Ok(done)
    }
}

/// Writes a chain's device-writable buffers in order, never past them.
#[derive(Debug)]
pub struct Writer<'c> {
    descs: &'c [Desc],
    idx: usize,
    off: u32,
    written: u32,
}

impl Writer<'_> {
    /// Bytes that still fit.
    #[must_use]
    pub fn remaining(&self) -> u64 {
        let rest: u64 = self
            .descs
            .iter()
            .skip(self.idx)
            .map(|d| u64::from(d.len))
            .sum();
        rest - u64::from(self.off)
    }

    /// Bytes written so far (what the used ring's `len` reports, 2.7.8).
    #[must_use]
    pub fn written(&self) -> u32 {
        self.written
    }

    /// Writes as much of `data` as fits; returns how much.
    ///
    /// # Errors
    ///
    /// [`Fault`] if a buffer is not accessible.
    pub fn write<M: GuestMemory + ?Sized>(&mut self, mem: &M, data: &[u8]) -> Result<usize, Fault> {
        let mut done = 0;
        while done < data.len() {
            let Some(d) = self.descs.get(self.idx) else {
                break;
            };
            let n = (data.len() - done).min((d.len - self.off) as usize);
            mem.write(d.addr + u64::from(self.off), &data[done..done + n])?;
            done += n;
            self.off += n as u32;
            // At most MAX_CHAIN_BYTES in all, which fits a u32.
            self.written += n as u32;
            if self.off == d.len {
                self.idx += 1;
                self.off = 0;
            }
        }
        Ok(done)
    }
}

/// A device's access to its queues and to guest memory while it serves a notification or
/// a host request. Errors that break the device are recorded here and returned as
/// [`Broken`]; the transport then shows DEVICE_NEEDS_RESET.
pub struct Queues<'a, M: ?Sized> {
    mem: &'a M,
    rings: &'a mut Rings,
    /// DRIVER_OK is set (3.1.1: no buffer is used before).
    live: bool,
}

impl<'a, M: GuestMemory + ?Sized> Queues<'a, M> {
    pub(crate) fn new(mem: &'a M, rings: &'a mut Rings, live: bool) -> Self {
        Self { mem, rings, live }
    }

    /// The guest's memory.
    #[must_use]
    pub fn mem(&self) -> &'a M {
        self.mem
    }

    /// Records a failed request for the host's log ([`crate::MmioTransport::take_error`]);
    /// the device goes on.
    pub fn report(&mut self, e: Error) {
        self.rings.record(e);
    }

    /// Marks the device broken with `e`.
    pub fn fail(&mut self, e: Error) -> Broken {
        self.rings.break_device(e)
    }

    fn ready(&self, queue: u16) -> Option<QueueState> {
        if !self.live || self.rings.broken || queue >= self.rings.count {
            return None;
        }
        self.rings
            .queues
            .get(usize::from(queue))
            .copied()
            .filter(|q| q.ready)
    }

    /// Whether `queue` has an available chain, without taking it: `false` if the queue is
    /// not ready. An unreadable available ring answers `true`, so that the next
    /// [`pop`](Self::pop) reports it.
    #[must_use]
    pub fn has_available(&self, queue: u16) -> bool {
        let Some(q) = self.ready(queue) else {
            return false;
        };
        self.mem.read_u16(q.driver + 2) != Ok(q.last_avail)
    }

    /// Takes the next available chain of `queue` into `chain` (whatever it held is
    /// replaced): `false` if there is none (or the queue is not ready), and then `chain`
    /// is unchanged.
    ///
    /// # Errors
    ///
    /// [`Broken`] for the structural errors in the module's table (the device is now
    /// broken; `chain` holds nothing usable).
    pub fn pop(&mut self, queue: u16, chain: &mut Chain) -> Result<bool, Broken> {
        let Some(q) = self.ready(queue) else {
            return Ok(false);
        };
        let size = q.size;
        // avail->idx: the driver's count of chains made available (2.7.6).
        let idx = match self.mem.read_u16(q.driver + 2) {
            Ok(i) => i,
            Err(f) => return Err(self.fail(f.into())),
        };
        let pending = idx.wrapping_sub(q.last_avail);
        if pending == 0 {
            return Ok(false);
        }
        if pending > size {
            let e = Error::AvailIdx {
                queue,
                idx,
                last: q.last_avail,
            };
            return Err(self.fail(e));
        }
        // 2.7.13.3: the driver writes the ring entry and the descriptors before it
        // increments avail->idx (with a barrier between); the device reads them after
        // reading idx, so its reads must not move above that load.
        fence(Ordering::Acquire);
        let slot = q.driver + 4 + 2 * u64::from(q.last_avail % size);
        let head = match self.mem.read_u16(slot) {
            Ok(h) => h,
            Err(f) => return Err(self.fail(f.into())),
        };
        chain.head = head;
        chain.count = 0;
        chain.readable = 0;
        chain.defect = None;
        let mut i = head;
        loop {
            if i >= size {
                return Err(self.fail(Error::DescIndex { queue, index: i }));
            }
            if chain.count == usize::from(size) {
                return Err(self.fail(Error::ChainTooLong { queue }));
            }
            let mut raw = [0u8; 16];
            if let Err(f) = self.mem.read(q.desc + 16 * u64::from(i), &mut raw) {
                return Err(self.fail(f.into()));
            }
            let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
            let flags = u16::from_le_bytes([f0, f1]);
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(self.fail(Error::Indirect { queue }));
            }
            chain.descs[chain.count] = Desc {
                addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
                len: u32::from_le_bytes([l0, l1, l2, l3]),
                writable: flags & VIRTQ_DESC_F_WRITE != 0,
            };
            chain.count += 1;
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            i = u16::from_le_bytes([n0, n1]);
        }
        chain.check();
        if let Some(q) = self.rings.queues.get_mut(usize::from(queue)) {
            q.last_avail = q.last_avail.wrapping_add(1);
        }
        Ok(true)
    }

    /// Returns `chain` to the driver through `queue`'s used ring with `len` bytes written
    /// (at most its writable length, unless the host asked for more with
    /// [`crate::MmioTransport::overstate_used_lengths`]), and raises the used-buffer
    /// interrupt unless the driver suppressed it.
    ///
    /// # Errors
    ///
    /// [`Broken`] if the used ring is not accessible (the device is now broken).
    pub fn push(&mut self, queue: u16, chain: &Chain, len: u32) -> Result<(), Broken> {
        let Some(q) = self.ready(queue) else {
            return Err(Broken);
        };
        let mut len = u64::from(len).min(chain.writable_len()) as u32;
        if self.rings.overstate != 0 {
            len = len.saturating_add(self.rings.overstate);
            self.rings.overstated += 1;
        }
        let slot = q.device + 4 + 8 * u64::from(q.next_used % q.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(chain.head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        if let Err(f) = self.mem.write(slot, &elem) {
            return Err(self.fail(f.into()));
        }
        // 2.7.8.1: the device sets the element (and wrote the buffers) before it updates
        // used->idx, which is what the driver reads first.
        fence(Ordering::Release);
        let next = q.next_used.wrapping_add(1);
        if let Err(f) = self.mem.write_u16(q.device + 2, next) {
            return Err(self.fail(f.into()));
        }
        if let Some(s) = self.rings.queues.get_mut(usize::from(queue)) {
            s.next_used = next;
        }
        // 2.7.7: without VIRTIO_F_EVENT_IDX the device should not notify when the driver
        // set VIRTQ_AVAIL_F_NO_INTERRUPT. The flag is read after used->idx is written
        // (the driver clears it, then re-checks used->idx: a full barrier on both sides).
        fence(Ordering::SeqCst);
        let flags = match self.mem.read_u16(q.driver) {
            Ok(f) => f,
            Err(f) => return Err(self.fail(f.into())),
        };
        if flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0 {
            self.rings.isr |= INT_USED;
        }
        Ok(())
    }
}
