//! What the device tests share: a Vec-backed guest memory with faulting ranges and an access
//! log, a minimal driver that sets a device up and builds chains, and backends.
#![allow(dead_code)] // Each test file uses a different part.

use std::cell::{Cell, RefCell};
use std::ops::Range;

use virtio_dev::blk::{BlockBackend, IoError, SECTOR_SIZE};
use virtio_dev::net::NetBackend;
use virtio_dev::transport::reg;
use virtio_dev::{Device, DeviceStatus, Fault, Feature, GuestMemory, MmioTransport};

/// Guest RAM: [`BASE`, `BASE + SIZE`).
pub const BASE: u64 = 0x4000_0000;
pub const SIZE: usize = 1 << 20;
/// Where the tests put buffers.
pub const BUF: u64 = BASE + 0x1_0000;

/// One access the device made (or tried).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub ipa: u64,
    pub len: u64,
}

/// Guest memory over a Vec: accesses outside it or overlapping a faulting range fail with
/// the first inaccessible byte. Every access is logged, failed ones too.
pub struct FakeMem {
    bytes: RefCell<Vec<u8>>,
    faulting: RefCell<Vec<Range<u64>>>,
    log: RefCell<Vec<Access>>,
    /// A racing driver: each read of the halfword here adds one to it afterwards.
    pub bump_after_read: Cell<Option<u64>>,
}

impl Default for FakeMem {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeMem {
    pub fn new() -> Self {
        Self {
            bytes: RefCell::new(vec![0; SIZE]),
            faulting: RefCell::new(Vec::new()),
            log: RefCell::new(Vec::new()),
            bump_after_read: Cell::new(None),
        }
    }

    /// Makes `[start, end)` fault.
    pub fn fault(&self, range: Range<u64>) {
        self.faulting.borrow_mut().push(range);
    }

    pub fn log(&self) -> Vec<Access> {
        self.log.borrow().clone()
    }

    pub fn clear_log(&self) {
        self.log.borrow_mut().clear();
    }

    fn check(&self, write: bool, ipa: u64, len: u64) -> Result<usize, Fault> {
        self.log.borrow_mut().push(Access { write, ipa, len });
        let end = ipa.checked_add(len).ok_or(Fault { ipa })?;
        if ipa < BASE {
            return Err(Fault { ipa });
        }
        if end > BASE + SIZE as u64 {
            return Err(Fault {
                ipa: ipa.max(BASE + SIZE as u64),
            });
        }
        for r in self.faulting.borrow().iter() {
            if ipa < r.end && r.start < end {
                return Err(Fault {
                    ipa: ipa.max(r.start),
                });
            }
        }
        Ok((ipa - BASE) as usize)
    }

    /// Test set-up and inspection: not logged, never faults.
    pub fn put(&self, ipa: u64, data: &[u8]) {
        let o = (ipa - BASE) as usize;
        self.bytes.borrow_mut()[o..o + data.len()].copy_from_slice(data);
    }

    pub fn get(&self, ipa: u64, len: usize) -> Vec<u8> {
        let o = (ipa - BASE) as usize;
        self.bytes.borrow()[o..o + len].to_vec()
    }

    pub fn put16(&self, ipa: u64, v: u16) {
        self.put(ipa, &v.to_le_bytes());
    }

    pub fn get16(&self, ipa: u64) -> u16 {
        let b = self.get(ipa, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    pub fn get32(&self, ipa: u64) -> u32 {
        let b = self.get(ipa, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl GuestMemory for FakeMem {
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let o = self.check(false, ipa, buf.len() as u64)?;
        buf.copy_from_slice(&self.bytes.borrow()[o..o + buf.len()]);
        Ok(())
    }

    fn write(&self, ipa: u64, data: &[u8]) -> Result<(), Fault> {
        let o = self.check(true, ipa, data.len() as u64)?;
        self.bytes.borrow_mut()[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn read_u16(&self, ipa: u64) -> Result<u16, Fault> {
        assert!(ipa.is_multiple_of(2), "unaligned ring access at {ipa:#x}");
        let mut b = [0; 2];
        self.read(ipa, &mut b)?;
        let v = u16::from_le_bytes(b);
        if self.bump_after_read.get() == Some(ipa) {
            self.put16(ipa, v.wrapping_add(1));
        }
        Ok(v)
    }

    fn write_u16(&self, ipa: u64, value: u16) -> Result<(), Fault> {
        assert!(ipa.is_multiple_of(2), "unaligned ring access at {ipa:#x}");
        self.write(ipa, &value.to_le_bytes())
    }
}

/// Descriptor flags.
pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
pub const INDIRECT: u16 = 4;

/// Where queue `q`'s areas are.
pub fn desc_area(q: u16) -> u64 {
    BASE + 0x4000 * u64::from(q)
}
pub fn avail_area(q: u16) -> u64 {
    desc_area(q) + 0x1000
}
pub fn used_area(q: u16) -> u64 {
    desc_area(q) + 0x2000
}

/// A 32-bit register write.
pub fn w<D: Device>(t: &mut MmioTransport<D>, mem: &FakeMem, off: u64, v: u32) -> bool {
    t.write(mem, off, 4, u64::from(v))
}

/// A 32-bit register read.
pub fn r<D: Device>(t: &MmioTransport<D>, off: u64) -> u32 {
    t.read(off, 4) as u32
}

pub const ACK_DRIVER: u32 = DeviceStatus::ACKNOWLEDGE.bits() | DeviceStatus::DRIVER.bits();

/// Negotiates `features` (status must read back with FEATURES_OK): whether it did.
pub fn negotiate<D: Device>(t: &mut MmioTransport<D>, mem: &FakeMem, features: u64) -> bool {
    w(t, mem, reg::STATUS, 0);
    w(t, mem, reg::STATUS, ACK_DRIVER);
    w(t, mem, reg::DRIVER_FEATURES_SEL, 0);
    w(t, mem, reg::DRIVER_FEATURES, features as u32);
    w(t, mem, reg::DRIVER_FEATURES_SEL, 1);
    w(t, mem, reg::DRIVER_FEATURES, (features >> 32) as u32);
    w(
        t,
        mem,
        reg::STATUS,
        ACK_DRIVER | DeviceStatus::FEATURES_OK.bits(),
    );
    r(t, reg::STATUS) & DeviceStatus::FEATURES_OK.bits() != 0
}

/// Configures queue `q` with `size` at [`desc_area`] and friends and makes it ready.
pub fn queue<D: Device>(t: &mut MmioTransport<D>, mem: &FakeMem, q: u16, size: u32) {
    w(t, mem, reg::QUEUE_SEL, u32::from(q));
    w(t, mem, reg::QUEUE_NUM, size);
    for (lo, a) in [
        (reg::QUEUE_DESC_LOW, desc_area(q)),
        (reg::QUEUE_DRIVER_LOW, avail_area(q)),
        (reg::QUEUE_DEVICE_LOW, used_area(q)),
    ] {
        w(t, mem, lo, a as u32);
        w(t, mem, lo + 4, (a >> 32) as u32);
    }
    w(t, mem, reg::QUEUE_READY, 1);
}

/// Sets DRIVER_OK (after FEATURES_OK).
pub fn driver_ok<D: Device>(t: &mut MmioTransport<D>, mem: &FakeMem) {
    let s = ACK_DRIVER | DeviceStatus::FEATURES_OK.bits() | DeviceStatus::DRIVER_OK.bits();
    w(t, mem, reg::STATUS, s);
}

/// The whole driver start-up with VERSION_1 and every queue at `size`.
pub fn start<D: Device>(t: &mut MmioTransport<D>, mem: &FakeMem, queues: u16, size: u32) {
    assert!(negotiate(t, mem, Feature::VERSION_1.bits()));
    for q in 0..queues {
        queue(t, mem, q, size);
    }
    driver_ok(t, mem);
    assert_eq!(
        r(t, reg::STATUS),
        ACK_DRIVER | DeviceStatus::FEATURES_OK.bits() | DeviceStatus::DRIVER_OK.bits()
    );
}

/// Writes descriptor `i` of queue `q`.
pub fn desc(mem: &FakeMem, q: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    mem.put(desc_area(q) + 16 * u64::from(i), &d);
}

/// Makes `head` available on queue `q` of size `size` (ring slot = current idx).
pub fn offer(mem: &FakeMem, q: u16, size: u16, head: u16) {
    let idx = mem.get16(avail_area(q) + 2);
    mem.put16(avail_area(q) + 4 + 2 * u64::from(idx % size), head);
    mem.put16(avail_area(q) + 2, idx.wrapping_add(1));
}

/// A buffer of a chain: guest address, length, device-writable.
pub type Buf = (u64, u32, bool);

/// Writes a chain of `bufs` (addr, len, writable) into descriptors `first..` of queue `q`
/// and offers it; returns the head.
pub fn chain(mem: &FakeMem, q: u16, size: u16, first: u16, bufs: &[Buf]) -> u16 {
    for (k, &(addr, len, wr)) in bufs.iter().enumerate() {
        let i = first + k as u16;
        let mut flags = if wr { WRITE } else { 0 };
        if k + 1 < bufs.len() {
            flags |= NEXT;
        }
        desc(mem, q, i, addr, len, flags, i + 1);
    }
    offer(mem, q, size, first);
    first
}

/// Used-ring entry `n` of queue `q` (id, len).
pub fn used(mem: &FakeMem, q: u16, size: u16, n: u16) -> (u32, u32) {
    let at = used_area(q) + 4 + 8 * u64::from(n % size);
    (mem.get32(at), mem.get32(at + 4))
}

pub fn used_idx(mem: &FakeMem, q: u16) -> u16 {
    mem.get16(used_area(q) + 2)
}

/// Notifies queue `q`: the interrupt level afterwards.
pub fn notify<D: Device>(t: &mut MmioTransport<D>, mem: &FakeMem, q: u16) -> bool {
    w(t, mem, reg::QUEUE_NOTIFY, u32::from(q))
}

/// Whether the device shows DEVICE_NEEDS_RESET and a configuration interrupt.
pub fn needs_reset<D: Device>(t: &MmioTransport<D>) -> bool {
    let s = r(t, reg::STATUS) & DeviceStatus::DEVICE_NEEDS_RESET.bits() != 0;
    let i = r(t, reg::INTERRUPT_STATUS) & 2 != 0;
    assert_eq!(
        s, i,
        "NEEDS_RESET and the config interrupt go together here"
    );
    s
}

/// A RAM disk.
pub struct RamDisk {
    pub data: Vec<u8>,
    pub flushes: usize,
    pub fail: bool,
}

impl RamDisk {
    pub fn new(sectors: usize) -> Self {
        Self {
            data: (0..sectors * SECTOR_SIZE)
                .map(|i| (i * 7 + i / 512) as u8)
                .collect(),
            flushes: 0,
            fail: false,
        }
    }
}

impl BlockBackend for RamDisk {
    fn capacity(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }
    fn read(&mut self, sector: u64, buf: &mut [u8; SECTOR_SIZE]) -> Result<(), IoError> {
        if self.fail {
            return Err(IoError);
        }
        let o = sector as usize * SECTOR_SIZE;
        buf.copy_from_slice(&self.data[o..o + SECTOR_SIZE]);
        Ok(())
    }
    fn write(&mut self, sector: u64, data: &[u8; SECTOR_SIZE]) -> Result<(), IoError> {
        if self.fail {
            return Err(IoError);
        }
        let o = sector as usize * SECTOR_SIZE;
        self.data[o..o + SECTOR_SIZE].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), IoError> {
        if self.fail {
            return Err(IoError);
        }
        self.flushes += 1;
        Ok(())
    }
    fn id(&self) -> [u8; 20] {
        *b"fake-disk-0001\0\0\0\0\0\0"
    }
}

/// Console output collected.
#[derive(Default)]
pub struct Sink(pub Vec<u8>);

impl embedded_io::ErrorType for Sink {
    type Error = core::convert::Infallible;
}

impl embedded_io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Frames transmitted.
#[derive(Default)]
pub struct Frames(pub Vec<Vec<u8>>);

impl NetBackend for Frames {
    fn transmit(&mut self, frame: &[u8]) {
        self.0.push(frame.to_vec());
    }
}

/// A backend that takes at most `room` more frames until given more.
#[derive(Debug, Default)]
pub struct Limited {
    pub frames: Vec<Vec<u8>>,
    pub room: usize,
}

impl NetBackend for Limited {
    fn transmit(&mut self, frame: &[u8]) {
        assert!(self.room > 0, "transmit without room");
        self.room -= 1;
        self.frames.push(frame.to_vec());
    }

    fn can_transmit(&mut self) -> bool {
        self.room > 0
    }
}
