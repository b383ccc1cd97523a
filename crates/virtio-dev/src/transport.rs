//! The virtio-mmio version 2 transport (virtio 1.2 section 4.2.2): the register block a
//! guest's driver reads and writes, with feature negotiation, status, reset, queue set-up,
//! notifications, interrupts and the device configuration space.
//!
//! The host feeds it every access the guest makes to the device's window ([`read`] and
//! [`write`], with the offset and access size of the MMIO exit). A queue notification is
//! served inside the [`write`] that makes it: the device pops, serves and pushes every chain
//! available. [`write`] returns the interrupt line's level afterwards; the line is
//! level-triggered: high while InterruptStatus is not 0 (4.2.2: a bit stays set from the
//! event until the driver acknowledges it through InterruptACK).
//!
//! [`read`]: MmioTransport::read
//! [`write`]: MmioTransport::write

use crate::queue::{Broken, QueueState, Queues, Rings};
use crate::{DeviceStatus, DeviceType, Error, Feature, GuestMemory, MAX_QUEUES, QUEUE_SIZE_MAX};

/// MagicValue: "virt" (4.2.2).
pub const MAGIC: u32 = 0x7472_6976;
/// Version: 2, the modern (non-legacy) interface (4.2.2).
pub const VERSION: u32 = 2;
/// VendorID this crate's devices report: "HYHP".
pub const VENDOR_ID: u32 = 0x5048_5948;

/// Register offsets (4.2.2, table "MMIO Device Register Layout").
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// The device configuration space starts here.
    pub const CONFIG: u64 = 0x100;
}

/// A virtio device behind the transport: what differs between block, console and net.
pub trait Device {
    /// Its device ID (section 5).
    fn device_type(&self) -> DeviceType;
    /// Device-type feature bits it offers (bits 0 to 23, 2.2); the transport adds
    /// VIRTIO_F_VERSION_1 and, if asked, VIRTIO_F_ACCESS_PLATFORM.
    fn features(&self) -> u64;
    /// Queues it has (at most [`MAX_QUEUES`]).
    fn queue_count(&self) -> u16;
    /// Reads its configuration space from `offset` into `data`; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver notified `queue`: serve what is available. Called only with DRIVER_OK set,
    /// the device not broken and the queue ready.
    ///
    /// # Errors
    ///
    /// [`Broken`] when a queue error broke the device (recorded in `queues`).
    fn notify<M: GuestMemory + ?Sized>(
        &mut self,
        queues: &mut Queues<'_, M>,
        queue: u16,
    ) -> Result<(), Broken>;
    /// The driver reset the device (2.4): forget what the driver set up.
    fn reset(&mut self);
}

/// One virtio-mmio device: the transport registers and the device behind them.
#[derive(Debug)]
pub struct MmioTransport<D> {
    device: D,
    /// Features offered.
    offered: u64,
    /// Device status as the driver set it (DEVICE_NEEDS_RESET comes from `rings.broken`).
    status: DeviceStatus,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a non-zero DriverFeatures word past the second (bits 64 and up,
    /// none of which is offered).
    driver_features_beyond: bool,
    queue_sel: u32,
    rings: Rings,
}

impl<D: Device> MmioTransport<D> {
    /// A device, reset. `access_platform` offers VIRTIO_F_ACCESS_PLATFORM (6.1): the device
    /// reaches only what the platform lets it (a protected guest's shared pages), so the
    /// driver must use DMA addresses, which a protected Linux guest insists on.
    pub fn new(device: D, access_platform: bool) -> Self {
        let mut offered = Feature::VERSION_1.bits() | device.features();
        if access_platform {
            offered |= Feature::ACCESS_PLATFORM.bits();
        }
        let count = device.queue_count().min(MAX_QUEUES as u16);
        Self {
            device,
            offered,
            status: DeviceStatus::empty(),
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond: false,
            queue_sel: 0,
            rings: Rings {
                count,
                ..Rings::default()
            },
        }
    }

    /// The device behind the transport.
    #[must_use]
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device behind the transport, mutably (its backend).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Features offered.
    #[must_use]
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Features the driver accepted (meaningful once FEATURES_OK is set).
    #[must_use]
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The Status register as the driver reads it.
    #[must_use]
    pub fn status(&self) -> DeviceStatus {
        let mut s = self.status;
        s.set(DeviceStatus::DEVICE_NEEDS_RESET, self.rings.broken);
        s
    }

    /// Whether a queue error broke the device (DEVICE_NEEDS_RESET) until the driver
    /// resets it.
    #[must_use]
    pub fn is_broken(&self) -> bool {
        self.rings.broken
    }

    /// InterruptStatus: bit 0 a used buffer, bit 1 a configuration change.
    #[must_use]
    pub fn interrupt_status(&self) -> u32 {
        self.rings.isr
    }

    /// The level of the device's interrupt line: InterruptStatus is not 0.
    #[must_use]
    pub fn interrupt_pending(&self) -> bool {
        self.rings.isr != 0
    }

    /// The first error since the last call (a broken device's cause, or a failed request),
    /// for the host's log.
    pub fn take_error(&mut self) -> Option<Error> {
        self.rings.error.take()
    }

    /// Makes the device lie, as a hostile host's would: every used-ring element from now
    /// on reports `extra` more bytes than the device wrote (saturating at `u32::MAX`), past
    /// the chain's buffers, which 2.7.8.1 forbids. 0 restores honest lengths. For the
    /// host's attacks on its guests' drivers (what a driver does with such a length is its
    /// own check); the device itself still writes only inside the buffers.
    pub fn overstate_used_lengths(&mut self, extra: u32) {
        self.rings.overstate = extra;
    }

    /// Used-ring lengths written past their buffers so far
    /// ([`overstate_used_lengths`](Self::overstate_used_lengths)).
    #[must_use]
    pub fn overstated_used_lengths(&self) -> u64 {
        self.rings.overstated
    }

    fn selected(&self) -> Option<&QueueState> {
        let s = usize::try_from(self.queue_sel).ok()?;
        (s < usize::from(self.rings.count)).then(|| &self.rings.queues[s])
    }

    /// The selected queue, if it exists and is not ready: a ready queue's configuration is
    /// frozen (4.2.3.2 sets a queue up before QueueReady; the device does not follow a live
    /// queue being moved under it).
    fn selected_mut_unready(&mut self) -> Option<&mut QueueState> {
        let s = usize::try_from(self.queue_sel).ok()?;
        let q = self.rings.queues[..usize::from(self.rings.count)].get_mut(s)?;
        (!q.ready).then_some(q)
    }

    /// A read of `size` bytes at `offset` in the register window. Control registers take
    /// only aligned 32-bit reads, the configuration space 8-, 16-, 32- and 64-bit aligned
    /// ones (4.2.2.2); anything else, and write-only or unknown registers, read 0.
    #[must_use]
    pub fn read(&self, offset: u64, size: u8) -> u64 {
        if offset >= reg::CONFIG {
            if !config_access_ok(offset, size) {
                return 0;
            }
            let mut bytes = [0u8; 8];
            self.device
                .read_config(offset - reg::CONFIG, &mut bytes[..usize::from(size)]);
            return u64::from_le_bytes(bytes);
        }
        if size != 4 || !offset.is_multiple_of(4) {
            return 0;
        }
        let q = self.selected().copied().unwrap_or_default();
        let v: u32 = match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type() as u32,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            // 4.2.2: 0 for a queue that does not exist.
            reg::QUEUE_NUM_MAX if self.selected().is_some() => u32::from(QUEUE_SIZE_MAX),
            reg::QUEUE_NUM => u32::from(q.size),
            reg::QUEUE_READY => u32::from(q.ready),
            reg::INTERRUPT_STATUS => self.rings.isr,
            reg::STATUS => self.status().bits(),
            reg::QUEUE_DESC_LOW => q.desc as u32,
            reg::QUEUE_DESC_HIGH => (q.desc >> 32) as u32,
            reg::QUEUE_DRIVER_LOW => q.driver as u32,
            reg::QUEUE_DRIVER_HIGH => (q.driver >> 32) as u32,
            reg::QUEUE_DEVICE_LOW => q.device as u32,
            reg::QUEUE_DEVICE_HIGH => (q.device >> 32) as u32,
            // 4.2.2: no shared memory regions: every region's length (and base) is -1.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            // These devices' configuration never changes while a driver runs.
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        };
        u64::from(v)
    }

    /// A write of `value` (`size` bytes) at `offset`; a QueueNotify is served here, with the
    /// guest's memory `mem`. Accesses of the wrong size, read-only and unknown registers,
    /// and the configuration space (nothing in it is writable) are ignored. Returns
    /// [`interrupt_pending`](Self::interrupt_pending) afterwards.
    pub fn write<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        offset: u64,
        size: u8,
        value: u64,
    ) -> bool {
        if offset >= reg::CONFIG || size != 4 || !offset.is_multiple_of(4) {
            return self.interrupt_pending();
        }
        let v = value as u32;
        let lo = |x: &mut u64| *x = (*x & !0xffff_ffff) | u64::from(v);
        let hi = |x: &mut u64| *x = (*x & 0xffff_ffff) | (u64::from(v) << 32);
        let features_fixed = self.status.contains(DeviceStatus::FEATURES_OK);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // 3.1.1: features are fixed once FEATURES_OK is set.
            reg::DRIVER_FEATURES if !features_fixed => match self.driver_features_sel {
                0 => lo(&mut self.driver_features),
                1 => hi(&mut self.driver_features),
                _ => self.driver_features_beyond |= v != 0,
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                if let Some(q) = self.selected_mut_unready() {
                    q.size = u16::try_from(v).unwrap_or(u16::MAX);
                }
            }
            reg::QUEUE_READY => self.queue_ready(v),
            reg::QUEUE_NOTIFY => self.notify(mem, v),
            reg::INTERRUPT_ACK => self.rings.isr &= !v,
            reg::STATUS => self.write_status(v),
            reg::QUEUE_DESC_LOW => self
                .selected_mut_unready()
                .into_iter()
                .for_each(|q| lo(&mut q.desc)),
            reg::QUEUE_DESC_HIGH => self
                .selected_mut_unready()
                .into_iter()
                .for_each(|q| hi(&mut q.desc)),
            reg::QUEUE_DRIVER_LOW => self
                .selected_mut_unready()
                .into_iter()
                .for_each(|q| lo(&mut q.driver)),
            reg::QUEUE_DRIVER_HIGH => self
                .selected_mut_unready()
                .into_iter()
                .for_each(|q| hi(&mut q.driver)),
            reg::QUEUE_DEVICE_LOW => self
                .selected_mut_unready()
                .into_iter()
                .for_each(|q| lo(&mut q.device)),
            reg::QUEUE_DEVICE_HIGH => self
                .selected_mut_unready()
                .into_iter()
                .for_each(|q| hi(&mut q.device)),
            _ => {}
        }
        self.interrupt_pending()
    }

    /// QueueReady: 1 makes the selected queue live if its configuration is valid; an
    /// invalid one breaks the device (there is no other way to refuse it). 0 stops it.
    fn queue_ready(&mut self, v: u32) {
        let Ok(s) = usize::try_from(self.queue_sel) else {
            return;
        };
        let Some(q) = self.rings.queues[..usize::from(self.rings.count)].get_mut(s) else {
            return;
        };
        if v & 1 == 0 {
            q.ready = false;
            return;
        }
        if q.ready {
            return;
        }
        if !q.valid() {
            let queue = s as u16;
            let _ = self.rings.break_device(Error::BadQueue { queue });
            return;
        }
        // A queue starts empty: the driver zeroes both indexes before making it ready.
        q.last_avail = 0;
        q.next_used = 0;
        q.ready = true;
    }

    fn notify<M: GuestMemory + ?Sized>(&mut self, mem: &M, v: u32) {
        // 4.2.2: without VIRTIO_F_NOTIFICATION_DATA the value is the queue index. 3.1.1:
        // nothing is consumed before DRIVER_OK; a broken device waits for its reset.
        let Ok(queue) = u16::try_from(v) else {
            return;
        };
        let live = self.rings.queues[..usize::from(self.rings.count)]
            .get(usize::from(queue))
            .is_some_and(|q| q.ready);
        if live && self.live() {
            let _ = self.run(mem, |d, q| d.notify(q, queue));
        }
    }

    fn live(&self) -> bool {
        self.status.contains(DeviceStatus::DRIVER_OK) && !self.rings.broken
    }

    /// Runs `f` on the device with access to its queues; queue operations find nothing
    /// before DRIVER_OK or once the device is broken. `Err` if `f` broke the device.
    pub(crate) fn run<M: GuestMemory + ?Sized, R>(
        &mut self,
        mem: &M,
        f: impl FnOnce(&mut D, &mut Queues<'_, M>) -> Result<R, Broken>,
    ) -> Result<R, Broken> {
        let live = self.live();
        let mut queues = Queues::new(mem, &mut self.rings, live);
        f(&mut self.device, &mut queues)
    }

    /// Status (2.1, 3.1.1): 0 resets the device; otherwise the driver adds bits.
    /// FEATURES_OK sticks only if the driver accepted VIRTIO_F_VERSION_1 and nothing that
    /// was not offered (2.2.1: else the device must not set it); DRIVER_OK only after
    /// FEATURES_OK. DEVICE_NEEDS_RESET belongs to the device.
    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let asked = DeviceStatus::from_bits_retain(v) - DeviceStatus::DEVICE_NEEDS_RESET;
        let mut new = self.status | asked;
        if new.contains(DeviceStatus::FEATURES_OK)
            && !self.status.contains(DeviceStatus::FEATURES_OK)
            && !self.features_acceptable()
        {
            new.remove(DeviceStatus::FEATURES_OK);
        }
        if !new.contains(DeviceStatus::FEATURES_OK) {
            new.remove(DeviceStatus::DRIVER_OK);
        }
        self.status = new;
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.offered == 0
            && !self.driver_features_beyond
            && self.driver_features & Feature::VERSION_1.bits() != 0
    }

    /// Device reset (2.4, 4.2.2.1): status, features, queues and InterruptStatus back to
    /// their initial values, the broken state gone. The device keeps its backend.
    fn reset(&mut self) {
        let count = self.rings.count;
        let error = self.rings.error.take();
        let (overstate, overstated) = (self.rings.overstate, self.rings.overstated);
        self.rings = Rings {
            count,
            error,
            overstate,
            overstated,
            ..Rings::default()
        };
        self.status = DeviceStatus::empty();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond = false;
        self.queue_sel = 0;
        self.device.reset();
    }
}

/// 4.2.2.2: configuration-space accesses are 8, 16 or 32 bits wide and aligned (64-bit
/// fields as two 32-bit halves; a naturally aligned 64-bit access is taken too).
fn config_access_ok(offset: u64, size: u8) -> bool {
    matches!(size, 1 | 2 | 4 | 8) && offset.is_multiple_of(u64::from(size))
}

/// Copies the configuration bytes at `offset` into `data`, zeros past the end of `cfg`.
pub(crate) fn copy_config(cfg: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| cfg.get(o))
            .copied()
            .unwrap_or(0);
    }
}
