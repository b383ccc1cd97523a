//! virtio-net (device ID 1, virtio 1.2 section 5.1), one queue pair, no offloads.
//!
//! Queue 0 is receiveq1, queue 1 transmitq1 (5.1.2). Offered: VIRTIO_NET_F_MAC, with the
//! MAC address in the configuration space (5.1.4); nothing else, so no checksum or
//! segmentation offload and no mergeable receive buffers. Every packet is preceded by a
//! `struct virtio_net_hdr` of [`NET_HDR_LEN`] bytes (5.1.6: with VIRTIO_F_VERSION_1 it always
//! has `num_buffers`).
//!
//! Transmit: each transmitq chain's device-readable bytes are the header and one Ethernet
//! frame, which goes to the [`NetBackend`]. The header must ask for nothing (no NEEDS_CSUM,
//! `gso_type` NONE: neither is negotiable here) and the frame must be 14 to [`MAX_FRAME`]
//! bytes; otherwise the chain is returned unsent. Receive: the host hands a frame to
//! [`MmioTransport::receive`], which writes a header (`num_buffers` 1) and the frame into the
//! next posted receive buffer, or reports why it could not. No frame is queued in between.

use crate::queue::{Broken, Chain, Queues};
use crate::transport::{copy_config, Device};
use crate::{DeviceType, Error, GuestMemory, MmioTransport, QUEUE_SIZE_MAX};

/// receiveq1.
pub const QUEUE_RX: u16 = 0;
/// transmitq1.
pub const QUEUE_TX: u16 = 1;
/// VIRTIO_NET_F_MAC (5.1.3): the device has a MAC address in its configuration.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// `struct virtio_net_hdr`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers (5.1.6).
pub const NET_HDR_LEN: usize = 12;
const _: () = assert!(size_of::<virtio_drivers::device::net::VirtioNetHdr>() == NET_HDR_LEN);
/// Smallest frame: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Largest frame: 1500 bytes of payload (no VIRTIO_NET_F_MTU), the Ethernet header and an
/// 802.1Q tag.
pub const MAX_FRAME: usize = 1518;

/// Where transmitted frames go.
pub trait NetBackend {
    /// One Ethernet frame from the guest (without the virtio header).
    fn transmit(&mut self, frame: &[u8]);

    /// Whether [`transmit`](Self::transmit) can take a frame now. While it
    /// cannot, the guest's frames stay in its transmitq (the driver sees
    /// its queue fill and waits) until the host calls
    /// [`MmioTransport::resume_transmit`] once it can again: back-pressure
    /// instead of a wait or a dropped frame.
    fn can_transmit(&mut self) -> bool {
        true
    }
}

/// A transmitted frame with its header, 8-byte aligned: copies in and out
/// of it can go by words (a host whose memory accesses must be aligned
/// copies byte by byte between buffers that differ modulo 8).
#[repr(C, align(8))]
struct FrameBuf([u8; NET_HDR_LEN + MAX_FRAME]);

/// Why [`MmioTransport::receive`] did not deliver a frame (it is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxError {
    /// Longer than [`MAX_FRAME`] or shorter than [`MIN_FRAME`].
    BadFrame,
    /// No receive buffer posted (or the driver is not running, or the device is broken).
    NoBuffer,
    /// The next receive buffer was too small, or malformed: it went back empty.
    BadBuffer,
    /// The receive buffer was not accessible.
    Fault,
    /// The used ring was not accessible: the device is now broken.
    Broken,
}

/// A virtio-net device over `B`.
#[derive(Debug)]
pub struct Net<B> {
    backend: B,
    mac: [u8; 6],
}

impl<B: NetBackend> Net<B> {
    /// A network device with address `mac` whose frames go to `backend`.
    pub fn new(backend: B, mac: [u8; 6]) -> Self {
        Self { backend, mac }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn transmit<M: GuestMemory + ?Sized>(&mut self, q: &mut Queues<'_, M>) -> Result<(), Broken> {
        let mut buf = FrameBuf([0; NET_HDR_LEN + MAX_FRAME]);
        let frame = &mut buf.0;
        let mut chain = Chain::empty();
        for _ in 0..QUEUE_SIZE_MAX {
            if !self.backend.can_transmit() || !q.pop(QUEUE_TX, &mut chain)? {
                break;
            }
            if let Some(defect) = chain.defect() {
                q.report(Error::Chain {
                    queue: QUEUE_TX,
                    defect,
                });
            } else {
                let len = chain.readable_len();
                let fits = (NET_HDR_LEN + MIN_FRAME) as u64..=(NET_HDR_LEN + MAX_FRAME) as u64;
                if fits.contains(&len) {
                    let len = len as usize;
                    match chain.reader().read(q.mem(), &mut frame[..len]) {
                        // flags == 0 and gso_type == VIRTIO_NET_HDR_GSO_NONE: no offload
                        // is negotiated (5.1.6.2.1).
                        Ok(n) if n == len && frame[0] == 0 && frame[1] == 0 => {
                            self.backend.transmit(&frame[NET_HDR_LEN..len]);
                        }
                        Ok(_) => q.report(Error::Request { queue: QUEUE_TX }),
                        Err(f) => q.report(f.into()),
                    }
                } else {
                    q.report(Error::Request { queue: QUEUE_TX });
                }
            }
            q.push(QUEUE_TX, &chain, 0)?;
        }
        Ok(())
    }

    fn receive<M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut Queues<'_, M>,
        frame: &[u8],
    ) -> Result<Result<(), RxError>, Broken> {
        let mut chain = Chain::empty();
        if !q.pop(QUEUE_RX, &mut chain)? {
            return Ok(Err(RxError::NoBuffer));
        }
        let total = NET_HDR_LEN + frame.len();
        if chain.defect().is_some() || chain.writable_len() < total as u64 {
            q.report(match chain.defect() {
                Some(defect) => Error::Chain {
                    queue: QUEUE_RX,
                    defect,
                },
                None => Error::Request { queue: QUEUE_RX },
            });
            q.push(QUEUE_RX, &chain, 0)?;
            return Ok(Err(RxError::BadBuffer));
        }
        let mut hdr = [0u8; NET_HDR_LEN];
        // num_buffers: 1 without VIRTIO_NET_F_MRG_RXBUF (5.1.6.4.1).
        hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        let mut w = chain.writer();
        let r = w.write(q.mem(), &hdr).and_then(|_| w.write(q.mem(), frame));
        let written = w.written();
        q.push(QUEUE_RX, &chain, written)?;
        match r {
            Ok(_) => Ok(Ok(())),
            Err(f) => {
                q.report(f.into());
                Ok(Err(RxError::Fault))
            }
        }
    }
}

impl<B: NetBackend> Device for Net<B> {
    fn device_type(&self) -> DeviceType {
        DeviceType::Network
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC
    }

    fn queue_count(&self) -> u16 {
        2
    }

    /// 5.1.4: `mac[6]`, then `status`, `max_virtqueue_pairs`, `mtu`, ... whose features are
    /// not offered: 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        copy_config(&self.mac, offset, data);
    }

    fn notify<M: GuestMemory + ?Sized>(
        &mut self,
        q: &mut Queues<'_, M>,
        queue: u16,
    ) -> Result<(), Broken> {
        // A receiveq notification only says buffers were posted; frames come from the host.
        match queue {
            QUEUE_TX => self.transmit(q),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {}
}

impl<B: NetBackend> MmioTransport<Net<B>> {
    /// Whether the guest has posted a receive buffer the next [`receive`](Self::receive) can
    /// use (the driver is running and receiveq1 has an available chain). Nothing is taken: a
    /// host that has a frame but gets `false` may keep it until the guest posts buffers (its
    /// receiveq notification) rather than drop it.
    pub fn can_receive<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> bool {
        self.run(mem, |_, q| Ok(q.has_available(QUEUE_RX)))
            .unwrap_or(false)
    }

    /// Takes up the guest's transmitq again (what its notification does), for
    /// a backend whose [`NetBackend::can_transmit`] said no and now says yes.
    /// Check [`interrupt_pending`](Self::interrupt_pending) afterwards.
    pub fn resume_transmit<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        // A broken device stays broken; `run` recorded why.
        let _ = self.run(mem, |d, q| d.transmit(q));
    }

    /// Delivers `frame` (an Ethernet frame, without the virtio header) into the guest's
    /// next receive buffer. Check [`interrupt_pending`](Self::interrupt_pending) afterwards.
    ///
    /// # Errors
    ///
    /// [`RxError`]: why the frame was dropped.
    pub fn receive<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        frame: &[u8],
    ) -> Result<(), RxError> {
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            return Err(RxError::BadFrame);
        }
        match self.run(mem, |d, q| d.receive(q, frame)) {
            Ok(r) => r,
            Err(Broken) => Err(RxError::Broken),
        }
    }
}
