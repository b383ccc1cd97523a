//! virtio-console (device ID 3, virtio 1.2 section 5.3), one port, no features.
//!
//! Queue 0 is receiveq (port 0), queue 1 transmitq (5.3.2). The bytes of every transmitq
//! buffer go to an [`embedded_io::Write`] sink (the host prints them). Input the host pushes
//! ([`MmioTransport::push_input`]) waits in a small buffer ([`INPUT_BYTES`]) until the
//! driver has receive buffers posted, and goes into them in order: that is the guest's
//! console input. Input is kept across a device reset (bytes typed while the driver
//! restarts are not lost).

use crate::queue::{Broken, Chain, Queues};
use crate::transport::Device;
use crate::{DeviceType, Error, GuestMemory, MmioTransport, QUEUE_SIZE_MAX};

/// receiveq, port 0.
pub const QUEUE_RX: u16 = 0;
/// transmitq, port 0.
pub const QUEUE_TX: u16 = 1;
/// Input bytes buffered while the driver has no receive buffer posted.
pub const INPUT_BYTES: usize = 256;

/// A virtio console over the output sink `W`.
#[derive(Debug)]
pub struct Console<W> {
    out: W,
    input: [u8; INPUT_BYTES],
    /// Oldest buffered input byte, and how many there are (a ring).
    head: usize,
    len: usize,
}

impl<W: embedded_io::Write> Console<W> {
    /// A console whose transmitted bytes go to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            input: [0; INPUT_BYTES],
            head: 0,
            len: 0,
        }
    }

    /// The output sink.
    pub fn output(&mut self) -> &mut W {
        &mut self.out
    }

    /// Input bytes waiting for a receive buffer.
    #[must_use]
    pub fn pending_input(&self) -> usize {
        self.len
    }

    /// Buffers as much of `bytes` as fits; returns how much.
    fn buffer(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(INPUT_BYTES - self.len);
        for &b in &bytes[..n] {
            self.input[(self.head + self.len) % INPUT_BYTES] = b;
            self.len += 1;
        }
        n
    }

    /// The buffered input as at most two slices, oldest first.
    fn pending(&self) -> (&[u8], &[u8]) {
        let end = self.head + self.len;
        if end <= INPUT_BYTES {
            (&self.input[self.head..end], &[])
        } else {
            (&self.input[self.head..], &self.input[..end - INPUT_BYTES])
        }
    }

    fn consume(&mut self, n: usize) {
        self.head = (self.head + n) % INPUT_BYTES;
        self.len -= n;
    }

    /// Moves buffered input into posted receive buffers.
    fn deliver<M: GuestMemory + ?Sized>(&mut self, q: &mut Queues<'_, M>) -> Result<(), Broken> {
        let mut chain = Chain::empty();
        for _ in 0..QUEUE_SIZE_MAX {
            if self.len == 0 {
                break;
            }
            if !q.pop(QUEUE_RX, &mut chain)? {
                break;
            }
            if let Some(defect) = chain.defect() {
                q.report(Error::Chain {
                    queue: QUEUE_RX,
                    defect,
                });
                q.push(QUEUE_RX, &chain, 0)?;
                continue;
            }
            let mut w = chain.writer();
            let (a, b) = self.pending();
            let mut fault = None;
            for part in [a, b] {
                match w.write(q.mem(), part) {
                    Ok(n) if n == part.len() => {}
                    Ok(_) => break,
                    Err(f) => {
                        fault = Some(f);
                        break;
                    }
                }
            }
            let written = w.written();
            self.consume(written as usize);
            if written == 0 && fault.is_none() {
                // No device-writable buffer in a receive chain.
                q.report(Error::Request { queue: QUEUE_RX });
            }
            q.push(QUEUE_RX, &chain, written)?;
            if let Some(f) = fault {
                q.report(f.into());
                break;
            }
        }
        Ok(())
    }

    /// Hands every transmitq buffer's bytes to the sink.
    fn transmit<M: GuestMemory + ?Sized>(&mut self, q: &mut Queues<'_, M>) -> Result<(), Broken> {
        let mut chunk = [0u8; 64];
        let mut chain = Chain::empty();
        for _ in 0..QUEUE_SIZE_MAX {
            if !q.pop(QUEUE_TX, &mut chain)? {
                break;
            }
            if let Some(defect) = chain.defect() {
                q.report(Error::Chain {
                    queue: QUEUE_TX,
                    defect,
                });
            }
            let mut r = chain.reader();
            loop {
                match r.read(q.mem(), &mut chunk) {
                    Ok(0) => break,
                    // A sink error loses the bytes; the guest cannot be told (no status).
                    Ok(n) => {
                        let _ = self.out.write_all(&chunk[..n]);
                    }
                    Err(f) => {
                        q.report(f.into());
                        break;
                    }
                }
            }
            q.push(QUEUE_TX, &chain, 0)?;
        }
        Ok(())
    }
}

impl<W: embedded_io::Write> Device for Console<W> {
    fn device_type(&self) -> DeviceType {
        DeviceType::Console
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_count(&self) -> u16 {
        2
    }

    /// 5.3.4: `cols`, `rows`, `max_nr_ports`, `emerg_wr`; their features are not offered,
    /// so all read 0.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn notify<M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut Queues<'_, M>,
        queue: u16,
    ) -> Result<(), Broken> {
        match queue {
            QUEUE_RX => self.deliver(q),
            QUEUE_TX => self.transmit(q),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {}
}

impl<W: embedded_io::Write> MmioTransport<Console<W>> {
    /// Input for the guest: buffers as much of `bytes` as fits (returned) and moves what it
    /// can into the driver's receive buffers now; the rest follows when the driver posts
    /// more (its receiveq notification). Check
    /// [`interrupt_pending`](Self::interrupt_pending) afterwards.
    pub fn push_input<M: GuestMemory + ?Sized>(&mut self, mem: &M, bytes: &[u8]) -> usize {
        let n = self.device_mut().buffer(bytes);
        let _ = self.run(mem, |d, q| d.deliver(q));
        n
    }
}
