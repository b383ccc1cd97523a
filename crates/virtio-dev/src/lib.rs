//! The device side of virtio-mmio: what the host VM serves its guests' virtio drivers with.
//!
//! The host VM (`crates/host`, the VMM of the pKVM model) gets a guest's accesses to a
//! virtio-mmio register window as MMIO exits and answers them with an [`MmioTransport`]; the
//! transport reaches the guest's virtqueues and buffers only through the [`GuestMemory`] trait
//! the host implements (the host's implementation catches the abort of a page the hypervisor
//! refuses and returns a [`Fault`]). Nothing here trusts the guest: every ring index,
//! descriptor and length is checked before it is used, a malformed request fails on its own
//! (a block request gets `VIRTIO_BLK_S_IOERR`) and a malformed queue marks the device broken
//! (`DEVICE_NEEDS_RESET` plus a configuration-change interrupt) until the driver resets it.
//! The crate never panics on guest data, never loops longer than a queue's size per request,
//! and touches guest memory only inside the rings and the buffers the descriptors name.
//!
//! # What is implemented (virtio 1.2)
//!
//! * [`transport`]: the virtio-mmio version 2 register block (section 4.2.2), feature
//!   negotiation (2.2, 3.1.1), device status and reset (2.1, 2.4), interrupts (4.2.2:
//!   InterruptStatus/InterruptACK), the device configuration space (2.5).
//! * [`queue`]: split virtqueues (2.7): available-ring popping and used-ring pushing with the
//!   checks listed there, and sequential readers/writers over a chain's buffers.
//! * [`blk`] (device ID 2, section 5.2), [`console`] (ID 3, 5.3, one port) and [`net`] (ID 1,
//!   5.1, one queue pair, no offloads), each over a host backend trait.
//!
//! Not offered: VIRTIO_F_INDIRECT_DESC (a descriptor with the INDIRECT flag is a queue error),
//! VIRTIO_F_EVENT_IDX, packed rings, notification data. VIRTIO_F_ACCESS_PLATFORM is offered when
//! the host asks for it ([`MmioTransport::new`]): a protected guest's Linux refuses devices
//! without it, because it must bounce DMA through memory it shared.
//!
//! # Limits (why: one request is served inside one MMIO exit, on the host's stack, 64 KiB per CPU)
//!
//! * [`QUEUE_SIZE_MAX`] (128) descriptors per queue, so a chain holds at most 128.
//! * [`MAX_DESC_LEN`] (64 KiB) per descriptor and [`MAX_CHAIN_BYTES`] (1 MiB) per chain; the
//!   block device advertises matching `size_max` and `seg_max` so Linux stays inside them.
//!
//! # Why not more of `virtio-drivers`
//!
//! That crate is the driver side: its virtqueue owns the rings in driver memory and its
//! descriptor, request and feature types are private to it. What fits the device side is
//! used from it: [`DeviceStatus`], [`InterruptStatus`], [`DeviceType`], the common feature bits
//! ([`Feature`]), the sector size and the net header's size (checked against ours).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_code)]

pub mod blk;
pub mod console;
mod mem;
pub mod net;
pub mod queue;
pub mod transport;

pub use mem::{Fault, GuestMemory};
pub use queue::{Chain, ChainDefect, Desc, Queues, Reader, Writer};
pub use transport::{Device, MmioTransport};
pub use virtio_drivers::device::common::Feature;
pub use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus};

/// Largest queue size a device offers (QueueNumMax), and so the longest chain.
pub const QUEUE_SIZE_MAX: u16 = 128;
/// Largest buffer one descriptor may name, in bytes.
pub const MAX_DESC_LEN: u32 = 64 << 10;
/// Largest total of a chain's buffer lengths, in bytes.
pub const MAX_CHAIN_BYTES: u64 = 1 << 20;
/// Queues a device here has at most (console and net: 2, block: 1).
pub const MAX_QUEUES: usize = 2;

/// Why a device stopped or a request failed, kept for the host's log
/// ([`MmioTransport::take_error`]). Guest mistakes, never host bugs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A guest address the host cannot access (not guest RAM, or refused by the hypervisor:
    /// a protected guest's private page).
    Fault(Fault),
    /// QueueReady was set with an invalid size (0, not a power of two, above the maximum) or
    /// a misaligned or wrapping ring (virtio 1.2 2.7: descriptor table 16-byte aligned, driver
    /// area 2, device area 4).
    BadQueue { queue: u16 },
    /// The available index ran ahead of the device by more than the queue size (2.7.6).
    AvailIdx { queue: u16, idx: u16, last: u16 },
    /// A descriptor index at or past the queue size (2.7.5).
    DescIndex { queue: u16, index: u16 },
    /// A chain longer than the queue: a loop (2.7.5.2).
    ChainTooLong { queue: u16 },
    /// An INDIRECT descriptor; VIRTIO_F_INDIRECT_DESC is never offered (2.7.5.3.1).
    Indirect { queue: u16 },
    /// A chain with a defect that failed its request (see [`ChainDefect`]).
    Chain { queue: u16, defect: ChainDefect },
    /// A well-formed chain whose content the device cannot serve (a request header too
    /// short, a net header with offloads, a frame too long, no status byte).
    Request { queue: u16 },
}

impl From<Fault> for Error {
    fn from(f: Fault) -> Self {
        Self::Fault(f)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Fault(Fault { ipa }) => write!(f, "guest address {ipa:#x} is not accessible"),
            Self::BadQueue { queue } => write!(f, "queue {queue}: invalid size or ring address"),
            Self::AvailIdx { queue, idx, last } => {
                write!(f, "queue {queue}: avail idx {idx} too far past {last}")
            }
            Self::DescIndex { queue, index } => {
                write!(f, "queue {queue}: descriptor index {index} out of range")
            }
            Self::ChainTooLong { queue } => write!(f, "queue {queue}: chain longer than the queue"),
            Self::Indirect { queue } => write!(f, "queue {queue}: indirect descriptor"),
            Self::Chain { queue, defect } => write!(f, "queue {queue}: bad chain: {defect:?}"),
            Self::Request { queue } => write!(f, "queue {queue}: malformed request"),
        }
    }
}
