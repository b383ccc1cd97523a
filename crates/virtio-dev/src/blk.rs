//! virtio-blk (device ID 2, virtio 1.2 section 5.2) over a [`BlockBackend`].
//!
//! One request queue (5.2.2). A request (5.2.6) is a 16-byte device-readable header (`type`,
//! `reserved`, `sector`), the data (device-readable for OUT, device-writable for IN and
//! GET_ID) and a one-byte device-writable status, the chain's last byte. Served: IN, OUT,
//! FLUSH (VIRTIO_BLK_F_FLUSH is offered), GET_ID; any other type gets `VIRTIO_BLK_S_UNSUPP`.
//! `VIRTIO_BLK_S_IOERR` for: a transfer not a whole number of sectors (5.2.6.2), one past
//! the capacity, a malformed layout, a chain with a [`ChainDefect`](crate::ChainDefect), a
//! data buffer the host cannot access, a backend error. A request whose status byte cannot
//! be found or written breaks the device: the driver could not learn its outcome.
//!
//! Offered too: VIRTIO_BLK_F_SIZE_MAX and VIRTIO_BLK_F_SEG_MAX, with `size_max` =
//! [`MAX_DESC_LEN`] and `seg_max` such that the largest request fits [`MAX_CHAIN_BYTES`], so
//! a driver that honours them never has a request refused for its size.

use crate::queue::{Broken, Chain, Queues};
use crate::transport::{copy_config, Device};
use crate::{DeviceType, Error, GuestMemory, MAX_CHAIN_BYTES, MAX_DESC_LEN, QUEUE_SIZE_MAX};

/// Bytes per sector (5.2.4: `capacity` counts 512-byte sectors).
pub const SECTOR_SIZE: usize = virtio_drivers::device::blk::SECTOR_SIZE;
/// The request queue.
pub const QUEUE_REQUEST: u16 = 0;

/// Feature bits (5.2.3).
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request types (5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status values (5.2.6).
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Bytes of a GET_ID answer (5.2.6: a 20-byte string, zero-padded).
pub const ID_BYTES: usize = 20;
/// The request header: `le32 type, le32 reserved, le64 sector`.
const HEADER: usize = 16;
/// `seg_max`: data segments of the largest request, plus header and status, fit
/// [`MAX_CHAIN_BYTES`].
const SEG_MAX: u32 = (MAX_CHAIN_BYTES / MAX_DESC_LEN as u64) as u32 - 1;
const _: () = assert!(SEG_MAX + 2 <= QUEUE_SIZE_MAX as u32);

/// The most a request hands the backend at once ([`BlockBackend::read_run`],
/// [`BlockBackend::write_run`]): one page, the device's bounce buffer.
pub const RUN_BYTES: usize = 4096;

/// A backend error; the request gets `VIRTIO_BLK_S_IOERR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoError;

/// The storage behind a block device. Sector numbers are checked against
/// [`capacity`](Self::capacity) before any call.
pub trait BlockBackend {
    /// Capacity in 512-byte sectors.
    fn capacity(&self) -> u64;
    /// Reads sector `sector` into `buf`.
    ///
    /// # Errors
    ///
    /// [`IoError`] if it cannot.
    fn read(&mut self, sector: u64, buf: &mut [u8; SECTOR_SIZE]) -> Result<(), IoError>;
    /// Writes `data` to sector `sector`.
    ///
    /// # Errors
    ///
    /// [`IoError`] if it cannot.
    fn write(&mut self, sector: u64, data: &[u8; SECTOR_SIZE]) -> Result<(), IoError>;
    /// Reads the sectors from `sector` on into `buf` (a whole number of
    /// sectors, at most [`RUN_BYTES`]): one backend request where the
    /// storage takes runs; sector by sector otherwise (the default).
    ///
    /// # Errors
    ///
    /// [`IoError`] if it cannot.
    fn read_run(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        for (i, s) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
            let s: &mut [u8; SECTOR_SIZE] = s.try_into().map_err(|_| IoError)?;
            self.read(sector + i as u64, s)?;
        }
        Ok(())
    }
    /// Writes `data` (a whole number of sectors, at most [`RUN_BYTES`]) from
    /// `sector` on; sector by sector unless the storage takes runs.
    ///
    /// # Errors
    ///
    /// [`IoError`] if it cannot.
    fn write_run(&mut self, sector: u64, data: &[u8]) -> Result<(), IoError> {
        for (i, s) in data.chunks_exact(SECTOR_SIZE).enumerate() {
            let s: &[u8; SECTOR_SIZE] = s.try_into().map_err(|_| IoError)?;
            self.write(sector + i as u64, s)?;
        }
        Ok(())
    }
    /// Makes completed writes durable.
    ///
    /// # Errors
    ///
    /// [`IoError`] if it cannot.
    fn flush(&mut self) -> Result<(), IoError>;
    /// The device ID string GET_ID answers (zero-padded).
    fn id(&self) -> [u8; ID_BYTES] {
        [0; ID_BYTES]
    }
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block<B> {
    backend: B,
    /// The bounce page between the guest's buffers and the backend (here,
    /// not on the stack: a host serves requests on a small stack).
    page: Page,
}

/// The bounce page, 16-byte aligned: copies between it and guest memory
/// whose addresses agree modulo 8 can go a word pair at a time (the
/// host's `GuestMemory` does, where unaligned accesses are not allowed).
#[derive(Debug)]
#[repr(C, align(16))]
struct Page([u8; RUN_BYTES]);

impl<B: BlockBackend> Block<B> {
    /// A block device over `backend`.
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            page: Page([0; RUN_BYTES]),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Serves one request: its status, and the bytes written before it.
    fn serve<M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut Queues<'_, M>,
        chain: &Chain,
    ) -> (u8, u32) {
        const Q: u16 = QUEUE_REQUEST;
        let mem = q.mem();
        if let Some(defect) = chain.defect() {
            q.report(Error::Chain { queue: Q, defect });
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let mut r = chain.reader();
        let mut w = chain.writer();
        let mut hdr = [0u8; HEADER];
        match r.read(mem, &mut hdr) {
            Ok(HEADER) => {}
            Ok(_) => {
                q.report(Error::Request { queue: Q });
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            Err(f) => {
                q.report(f.into());
                return (VIRTIO_BLK_S_IOERR, 0);
            }
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = hdr;
        let kind = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        // The writable part ends with the status byte (the caller checked there is one).
        let data_out = r.remaining();
        let data_in = chain.writable_len().saturating_sub(1);
        let sectors_ok = |len: u64| {
            len.is_multiple_of(SECTOR_SIZE as u64)
                && sector
                    .checked_add(len / SECTOR_SIZE as u64)
                    .is_some_and(|end| end <= self.backend.capacity())
        };
        let buf = &mut self.page.0;
        // The runs of a request: (first sector, bytes), at most RUN_BYTES each.
        let runs = |len: u64| {
            (0..len.div_ceil(RUN_BYTES as u64)).map(move |i| {
                let at = i * RUN_BYTES as u64;
                (
                    sector + at / SECTOR_SIZE as u64,
                    (len - at).min(RUN_BYTES as u64) as usize,
                )
            })
        };
        let status = match kind {
            VIRTIO_BLK_T_IN => {
                if data_out != 0 {
                    q.report(Error::Request { queue: Q });
                    VIRTIO_BLK_S_IOERR
                } else if !sectors_ok(data_in) {
                    VIRTIO_BLK_S_IOERR
                } else {
                    let mut st = VIRTIO_BLK_S_OK;
                    for (s, n) in runs(data_in) {
                        if self.backend.read_run(s, &mut buf[..n]).is_err() {
                            st = VIRTIO_BLK_S_IOERR;
                            break;
                        }
                        if let Err(f) = w.write(mem, &buf[..n]) {
                            q.report(f.into());
                            st = VIRTIO_BLK_S_IOERR;
                            break;
                        }
                    }
                    st
                }
            }
            VIRTIO_BLK_T_OUT => {
                if data_in != 0 {
                    q.report(Error::Request { queue: Q });
                    VIRTIO_BLK_S_IOERR
                } else if !sectors_ok(data_out) {
                    VIRTIO_BLK_S_IOERR
                } else {
                    let mut st = VIRTIO_BLK_S_OK;
                    for (s, n) in runs(data_out) {
                        match r.read(mem, &mut buf[..n]) {
                            Ok(got) if got == n => {}
                            Ok(_) => {
                                q.report(Error::Request { queue: Q });
                                st = VIRTIO_BLK_S_IOERR;
                                break;
                            }
                            Err(f) => {
                                q.report(f.into());
                                st = VIRTIO_BLK_S_IOERR;
                                break;
                            }
                        }
                        if self.backend.write_run(s, &buf[..n]).is_err() {
                            st = VIRTIO_BLK_S_IOERR;
                            break;
                        }
                    }
                    st
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.backend.flush() {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(IoError) => VIRTIO_BLK_S_IOERR,
            },
            VIRTIO_BLK_T_GET_ID => {
                let id = self.backend.id();
                let n = data_in.min(ID_BYTES as u64) as usize;
                match w.write(mem, &id[..n]) {
                    Ok(_) => VIRTIO_BLK_S_OK,
                    Err(f) => {
                        q.report(f.into());
                        VIRTIO_BLK_S_IOERR
                    }
                }
            }
            _ => VIRTIO_BLK_S_UNSUPP,
        };
        (status, w.written())
    }
}

impl<B: BlockBackend> Device for Block<B> {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH
    }

    fn queue_count(&self) -> u16 {
        1
    }

    /// 5.2.4: `le64 capacity` at 0, `le32 size_max` at 8, `le32 seg_max` at 12; the rest
    /// (geometry, blk_size, topology, ...) belongs to features not offered and reads 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 16];
        cfg[..8].copy_from_slice(&self.backend.capacity().to_le_bytes());
        cfg[8..12].copy_from_slice(&MAX_DESC_LEN.to_le_bytes());
        cfg[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        copy_config(&cfg, offset, data);
    }

    fn notify<M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut Queues<'_, M>,
        queue: u16,
    ) -> Result<(), Broken> {
        if queue != QUEUE_REQUEST {
            return Ok(());
        }
        // At most a queue's worth per notification, even if the driver keeps adding.
        let mut chain = Chain::empty();
        for _ in 0..QUEUE_SIZE_MAX {
            if !q.pop(queue, &mut chain)? {
                break;
            }
            // The status byte: the chain's last byte, device-writable.
            let Some(status_at) = chain.last_writable_byte() else {
                return Err(q.fail(Error::Request { queue }));
            };
            let (status, written) = self.serve(q, &chain);
            if let Err(f) = q.mem().write(status_at, &[status]) {
                return Err(q.fail(f.into()));
            }
            q.push(queue, &chain, written.saturating_add(1))?;
        }
        Ok(())
    }

    fn reset(&mut self) {}
}
