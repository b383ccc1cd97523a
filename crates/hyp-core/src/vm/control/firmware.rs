//! A protected VM's boot through its firmware (`crates/pvmfw`), as AVF's
//! pvmfw: the host chooses what a protected VM runs, so VCPU_INIT of one no
//! longer sets where it starts. The hypervisor copies the firmware from its
//! own image into pages of the VM's own memory (the runs the host donated
//! for its state, which the host can neither map nor read), maps them at
//! `hyp_abi::layout::PVMFW_IPA`, and starts vCPU 0 there with the host's
//! claims (x0 = its device tree, x1 = its kernel entry) next to facts the
//! host cannot forge (x2, x3 = the VM's RAM, x4 = its vCPUs). The firmware
//! checks the claims, measures the kernel and initrd, reports the
//! measurement (MEASUREMENT_SET, recorded here once) and jumps to the
//! kernel. The pages are scrubbed with the VM's other own pages when it is
//! destroyed, and the whole IPA space is unmapped first.

use super::{
    Control, HostError, HostResult, PhysMem, Power, RegionKind, VmExtra, VmMeta, PAGE_SIZE,
};
use crate::vm::memcache::HypAlloc;
use hyp_abi::layout::{PVMFW_IPA, PVMFW_SIZE};
use s2mm::{Attrs, Ipa, Pa, PageState, Vttbr};

/// Pages of the firmware window, every one mapped for a protected VM.
pub const FIRMWARE_PAGES: u64 = PVMFW_SIZE / PAGE_SIZE;

/// Table pages a map of the window may need (one per level below the root),
/// checked to be available before anything changes.
const FIRMWARE_TABLES: u64 = 3;

/// What a VM's firmware measured: SHA-256 of the kernel, and of the initrd
/// when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// The kernel's digest.
    pub kernel: [u8; 32],
    /// The initrd's digest, if there is one.
    pub initrd: Option<[u8; 32]>,
}

/// Whether a guest PC lies in the firmware window: the only place
/// MEASUREMENT_SET is accepted from.
#[must_use]
pub const fn in_firmware(pc: u64) -> bool {
    pc >= PVMFW_IPA && pc - PVMFW_IPA < PVMFW_SIZE
}

/// A digest from four big-endian words (MEASUREMENT_SET's registers).
fn digest(w: &[u64]) -> [u8; 32] {
    let mut d = [0u8; 32];
    for (c, w) in d.chunks_exact_mut(8).zip(w) {
        c.copy_from_slice(&w.to_be_bytes());
    }
    d
}

/// The measurement MEASUREMENT_SET reports in x1..x9 (`x` = those nine):
/// the kernel's digest, the initrd's, and whether there is an initrd.
#[must_use]
pub fn measurement_from_regs(x: &[u64]) -> Measurement {
    let mut r = [0u64; 9];
    for (d, s) in r.iter_mut().zip(x) {
        *d = *s;
    }
    Measurement {
        kernel: digest(&r[0..4]),
        initrd: (r[8] == 1).then(|| digest(&r[4..8])),
    }
}

/// MEASUREMENT_GET's answer x0..x3 for half `half` (0 or 1) of item `item`
/// (kernel or initrd) of `m`.
#[must_use]
pub fn measurement_answer(m: &Measurement, item: u64, half: u64) -> [u64; 4] {
    let d = if item == hyp_abi::pvmfw::ITEM_KERNEL {
        Some(m.kernel)
    } else {
        m.initrd
    };
    let Some(d) = d else {
        return [0; 4];
    };
    let at = if half == 0 { 0 } else { 16 };
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[at + i..at + i + 8]);
        u64::from_be_bytes(b)
    };
    [0, word(0), word(8), 1]
}

impl VmMeta {
    /// The VM's RAM as one run of IPAs `(base, bytes)`: what the host gave,
    /// if it is donated and contiguous.
    fn ram_run(&self) -> Option<(u64, u64)> {
        let mut base = u64::MAX;
        let mut end = 0;
        let mut bytes = 0;
        for r in self.regions.iter().flatten() {
            if r.kind != RegionKind::Donated {
                return None;
            }
            base = base.min(r.ipa);
            end = end.max(r.ipa_end());
            bytes += r.pages * PAGE_SIZE;
        }
        // Regions never overlap (give refuses an IPA in use), so they tile
        // [base, end) exactly when their sizes add up to it.
        (bytes != 0 && end - base == bytes).then_some((base, bytes))
    }

    /// Copies `fw` into fresh pages of the VM's own memory and maps them at
    /// the firmware window (the rest of the window zeroed: BSS and stack).
    fn load_firmware<A: HypAlloc>(&mut self, hyp: &A, v: &mut Vttbr, fw: &[u8]) -> HostResult<()> {
        if fw.len() as u64 > PVMFW_SIZE {
            log::error!("the firmware ({} bytes) exceeds its window", fw.len());
            return Err(HostError::NotSupported);
        }
        if self.cache.available() < FIRMWARE_PAGES + FIRMWARE_TABLES {
            return Err(HostError::NoMemory);
        }
        for i in 0..FIRMWARE_PAGES {
            let pa = self.cache.alloc(hyp, 1, 1).ok_or(HostError::NoMemory)?;
            let off = (i * PAGE_SIZE) as usize;
            let bytes = fw.get(off..).unwrap_or(&[]);
            let n = bytes.len().min(PAGE_SIZE as usize);
            // SAFETY: `pa` is a page of the VM's own memory just handed out
            // (HypAlloc: `hyp_ptr` reaches it for PAGE_SIZE bytes), and
            // `n` <= PAGE_SIZE bytes of `fw` are read.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), hyp.hyp_ptr(pa).as_ptr(), n) };
            let (s2, mut alloc) = self.tables(hyp);
            // `map` cleans the page to PoC without FWB: the firmware runs
            // with its MMU off. The caller invalidates the I-caches.
            s2.map(
                &mut alloc,
                v,
                Ipa(PVMFW_IPA + i * PAGE_SIZE),
                Pa(pa),
                PAGE_SIZE,
                Attrs::RAM_RWX,
                PageState::Owned,
            )
            .map_err(super::s2err)?;
        }
        Ok(())
    }
}

impl<A: HypAlloc, M: PhysMem, X: VmExtra> Control<A, M, X> {
    /// VCPU_INIT with the firmware `fw`: a protected VM's vCPU 0 starts in
    /// the firmware (module docs) with x0 = `ctx`, x1 = `entry` and the VM's
    /// RAM and vCPUs in x2..x4; any other VM's call is [`Control::vcpu_init`].
    ///
    /// # Errors
    ///
    /// [`Control::vcpu_init`]'s, and [`HostError::Invalid`] (the VM's RAM is
    /// not one run of donated IPAs), [`HostError::NoMemory`] (its own pages
    /// cannot hold the firmware and its tables: top up and call again;
    /// nothing changed).
    pub fn vcpu_init_firmware(
        &self,
        v: &mut Vttbr,
        handle: u64,
        vcpu: u64,
        entry: u64,
        ctx: u64,
        fw: &[u8],
    ) -> HostResult<()> {
        let mut vm = self.vm(handle)?;
        if !vm.protected {
            return vm.vcpu_init(vcpu, entry, ctx);
        }
        let idx = vm.check_init(vcpu, entry)?;
        let (base, bytes) = vm.ram_run().ok_or(HostError::Invalid)?;
        vm.load_firmware(&self.alloc, v, fw)?;
        vm.vcpus[idx].power = Power::OnPending {
            entry: PVMFW_IPA,
            ctx,
        };
        vm.boot_args = [entry, base, bytes, vm.nr_vcpus as u64];
        vm.boot_entry_set = true;
        Ok(())
    }

    /// x1..x4 for vCPU `vcpu` of VM `handle` starting now (its run began
    /// with a boot entry): the firmware's boot facts for vCPU 0 of a
    /// protected VM, once; zeros otherwise. Called on the boot path only, so
    /// every other VCPU_RUN does not carry them.
    #[must_use]
    #[cold]
    #[inline(never)]
    pub fn take_boot_args(&self, handle: u64, vcpu: u64) -> [u64; 4] {
        match self.vm(handle) {
            Ok(mut vm) if vcpu == 0 => core::mem::take(&mut vm.boot_args),
            _ => [0; 4],
        }
    }

    /// MEASUREMENT_SET from VM `handle`: records `m` once.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`], [`HostError::Denied`] (not protected, or
    /// already measured).
    pub fn measurement_set(&self, handle: u64, m: Measurement) -> HostResult<()> {
        let mut vm = self.vm(handle)?;
        if !vm.protected || vm.measurement.is_some() {
            return Err(HostError::Denied);
        }
        vm.measurement = Some(m);
        Ok(())
    }

    /// MEASUREMENT_GET: what VM `handle`'s firmware reported, if it did.
    ///
    /// # Errors
    ///
    /// [`HostError::NoVm`].
    pub fn measurement(&self, handle: u64) -> HostResult<Option<Measurement>> {
        Ok(self.vm(handle)?.measurement)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ctl, host_vttbr, state_pa, NoMem, RAM};
    use super::super::{CompState, VM_CREATE_PAGES};
    use super::*;
    use crate::vm::memcache::host::TestAlloc;
    use hyp_abi::layout::RAM_IPA;

    /// Host RAM for guest memory (below the VM state `state_pa` hands out).
    const GUEST: u64 = RAM.base + 0x20_0000;
    /// Host RAM for VM_TOPUP runs.
    const TOPUP: u64 = RAM.base + 0x80_0000;

    const FW: [u8; 5000] = [0x5a; 5000];

    /// A protected VM with `vcpus` vCPUs, topped up, given 16 pages at
    /// RAM_IPA and 16 more at `second` (contiguous when it is 16 pages on).
    fn protected_vm(c: &Control<TestAlloc, NoMem>, v: &mut Vttbr, vcpus: u64, second: u64) -> u64 {
        let h = c
            .create(
                v,
                vcpus,
                hyp_abi::FLAG_PROTECTED,
                state_pa(0),
                VM_CREATE_PAGES,
            )
            .expect("create");
        c.topup(v, h, TOPUP, 64).expect("topup");
        c.give(v, h, GUEST, RAM_IPA, 16, RegionKind::Donated)
            .expect("give");
        c.give(
            v,
            h,
            GUEST + 16 * PAGE_SIZE,
            second,
            16,
            RegionKind::Donated,
        )
        .expect("give");
        h
    }

    #[test]
    fn protected_vm_starts_in_its_firmware() {
        let c = ctl();
        let mut v = host_vttbr();
        let h = protected_vm(&c, &mut v, 2, RAM_IPA + 16 * PAGE_SIZE);
        c.vcpu_init_firmware(&mut v, h, 0, RAM_IPA, RAM_IPA + 0x1000, &FW)
            .expect("init");
        let (start, claim) = c.begin_run(h, 0, 0).expect("run");
        assert_eq!(start.boot, Some((PVMFW_IPA, RAM_IPA + 0x1000, 4)));
        assert_eq!(
            c.take_boot_args(h, 0),
            [RAM_IPA, RAM_IPA, 32 * PAGE_SIZE, 2]
        );
        assert_eq!(c.take_boot_args(h, 0), [0; 4]);
        c.end_run(claim, 0, super::super::RunEnd::Runnable);
        // Every page of the window is the guest's own, the first holding
        // the firmware's bytes.
        for i in 0..FIRMWARE_PAGES {
            let (pa, st) = c.guest_state(h, PVMFW_IPA + i * PAGE_SIZE).expect("mapped");
            assert_eq!(st, CompState::Owned);
            let b = c.alloc().hyp_ptr(pa).as_ptr();
            // SAFETY: a page of the VM's own memory (the test allocator's).
            let first = unsafe { b.read() };
            assert_eq!(first, if i < 2 { 0x5a } else { 0 });
        }
        // Once only.
        assert_eq!(
            c.vcpu_init_firmware(&mut v, h, 0, RAM_IPA, 0, &FW),
            Err(HostError::Denied)
        );
        assert_eq!(c.audit(), 0);
    }

    #[test]
    fn firmware_boot_needs_contiguous_ram_and_pages() {
        let c = ctl();
        let mut v = host_vttbr();
        // A gap of 16 pages between the two runs.
        let h = protected_vm(&c, &mut v, 1, RAM_IPA + 32 * PAGE_SIZE);
        assert_eq!(
            c.vcpu_init_firmware(&mut v, h, 0, RAM_IPA, 0, &FW),
            Err(HostError::Invalid)
        );
        let h2 = c
            .create(
                &mut v,
                1,
                hyp_abi::FLAG_PROTECTED,
                state_pa(1),
                VM_CREATE_PAGES,
            )
            .expect("create");
        c.give(
            &mut v,
            h2,
            GUEST + 0x4_0000,
            RAM_IPA,
            16,
            RegionKind::Donated,
        )
        .expect("give");
        assert_eq!(
            c.vcpu_init_firmware(&mut v, h2, 0, RAM_IPA, 0, &FW),
            Err(HostError::NoMemory)
        );
    }

    #[test]
    fn measurement_is_set_once() {
        let c = ctl();
        let mut v = host_vttbr();
        let h = c
            .create(
                &mut v,
                1,
                hyp_abi::FLAG_PROTECTED,
                state_pa(0),
                VM_CREATE_PAGES,
            )
            .expect("create");
        let m = Measurement {
            kernel: [1; 32],
            initrd: None,
        };
        assert_eq!(c.measurement(h), Ok(None));
        assert_eq!(c.measurement_set(h, m), Ok(()));
        assert_eq!(c.measurement_set(h, m), Err(HostError::Denied));
        assert_eq!(c.measurement(h), Ok(Some(m)));
        let n = c
            .create(&mut v, 1, 0, state_pa(1), VM_CREATE_PAGES)
            .expect("create");
        assert_eq!(c.measurement_set(n, m), Err(HostError::Denied));
    }

    #[test]
    fn measurement_registers_round_trip() {
        let mut kernel = [0u8; 32];
        let mut initrd = [0u8; 32];
        for i in 0..32 {
            kernel[i] = i as u8;
            initrd[i] = 0x80 | i as u8;
        }
        let regs = |d: &[u8; 32]| -> [u64; 4] {
            core::array::from_fn(|i| {
                u64::from_be_bytes(d[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            })
        };
        let mut x = [0u64; 9];
        x[..4].copy_from_slice(&regs(&kernel));
        let m = measurement_from_regs(&x);
        assert_eq!(
            m,
            Measurement {
                kernel,
                initrd: None
            }
        );
        assert_eq!(
            measurement_answer(&m, 0, 1),
            [0, 0x1011_1213_1415_1617, 0x1819_1a1b_1c1d_1e1f, 1]
        );
        assert_eq!(measurement_answer(&m, 1, 0), [0; 4]);
        x[4..8].copy_from_slice(&regs(&initrd));
        x[8] = 1;
        let m = measurement_from_regs(&x);
        assert_eq!(m.initrd, Some(initrd));
        assert_eq!(
            measurement_answer(&m, 1, 0),
            [0, 0x8081_8283_8485_8687, 0x8889_8a8b_8c8d_8e8f, 1]
        );
    }

    #[test]
    fn audit_flags_a_firmware_window_page_that_is_not_the_vms_own() {
        let c = ctl();
        let mut v = host_vttbr();
        let h = c
            .create(
                &mut v,
                1,
                hyp_abi::FLAG_PROTECTED,
                state_pa(0),
                VM_CREATE_PAGES,
            )
            .expect("create");
        assert_eq!(c.audit(), 0);
        // Any other frame there (here a device mapping of a host page).
        c.map_device(&mut v, h, PVMFW_IPA, GUEST, PAGE_SIZE)
            .expect("map");
        assert_eq!(c.audit(), 1);
    }

    #[test]
    fn firmware_window() {
        assert!(in_firmware(PVMFW_IPA));
        assert!(in_firmware(PVMFW_IPA + PVMFW_SIZE - 4));
        assert!(!in_firmware(PVMFW_IPA + PVMFW_SIZE));
        assert!(!in_firmware(PVMFW_IPA - 4));
        assert!(!in_firmware(RAM_IPA));
    }
}
