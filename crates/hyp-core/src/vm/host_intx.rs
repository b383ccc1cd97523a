//! The host's PCIe INTx lines: which physical SPIs they are (from the PCIe host bridge's
//! `interrupt-map` in the board's device tree, [`from_interrupt_map`], pure), and the set the
//! hypervisor routes to host vCPU 0 ([`route`], [`is_host_intx`]).
//!
//! Each line is a level-sensitive SPI, group 1, routed to physical CPU 0: the CPU that runs
//! host vCPU 0, which is always present (it is the boot CPU and the host's first vCPU, whatever
//! `hyp.cpus=` says) and is where the host serves its devices. When one fires, EL2 drops its
//! priority but leaves it active, and hands it to the host as a hardware-linked virtual
//! interrupt (`vgic::HostIf`), so the host's EOI deactivates it. Only these INTIDs are ever
//! linked: every other physical interrupt stays the hypervisor's.

/// Why the device tree's INTx routing was not used.
pub type MapError = &'static str;

/// The INTIDs of INTA..INTD of device 0, once routed.
#[cfg(target_arch = "aarch64")]
static INTX: spin::Once<[u32; 4]> = spin::Once::new();

/// The bridge's `interrupt-map` (big-endian cells already decoded into `map`) as the INTIDs of
/// INTA..INTD of device 0, checked to follow the standard swizzle (device *d*'s pin *p* is
/// `intx[(d + p - 1) % 4]`, PCI-to-PCI Bridge Architecture 9.1) for every entry, each a
/// level-sensitive SPI.
///
/// An entry (Devicetree Specification 2.4.3.1 "interrupt-map"): the child unit address
/// (`#address-cells` of the bridge: 3, `phys.hi` holds the device number in bits \[15:11\]),
/// the child interrupt specifier (`#interrupt-cells`: 1, the pin, 1 = INTA), the interrupt
/// parent's phandle, the parent unit address and the parent interrupt specifier, whose sizes
/// `parent_cells(phandle)` gives as (`#address-cells`, `#interrupt-cells`). A GIC's specifier
/// (Linux `Documentation/devicetree/bindings/interrupt-controller/arm,gic-v3.yaml`) is (type:
/// 0 = SPI, number, flags: bits \[3:0\] = 4 for level high); the INTID is number + 32.
///
/// # Errors
///
/// A malformed map, a parent that is not a 3-cell interrupt controller, an entry that is not a
/// level-sensitive SPI, a pin of device 0 missing, or an entry off the swizzle.
pub fn from_interrupt_map(
    map: &[u32],
    parent_cells: impl Fn(u32) -> Option<(usize, usize)>,
) -> Result<[u32; 4], MapError> {
    const CHILD_ADDR: usize = 3;
    const CHILD_IRQ: usize = 1;
    // (device, pin, INTID) of every entry, at most 32 (QEMU virt has 16).
    let mut entries = [(0u8, 0u8, 0u32); 32];
    let mut n = 0;
    let mut at = 0;
    while at < map.len() {
        let head = CHILD_ADDR + CHILD_IRQ;
        let phandle = *map.get(at + head).ok_or("interrupt-map entry cut short")?;
        let (addr, irq) = parent_cells(phandle).ok_or("interrupt-map parent unknown")?;
        if irq != 3 {
            return Err("interrupt-map parent is not a GIC (#interrupt-cells != 3)");
        }
        let spec_at = at + head + 1 + addr;
        let spec = map
            .get(spec_at..spec_at + 3)
            .ok_or("interrupt-map entry cut short")?;
        let device = ((map[at] >> 11) & 0x1f) as u8;
        let pin = map[at + CHILD_ADDR];
        if !(1..=4).contains(&pin) {
            return Err("interrupt-map pin outside INTA..INTD");
        }
        if spec[0] != 0 {
            return Err("INTx is not an SPI");
        }
        if spec[2] & 0xf != 4 {
            return Err("INTx is not level-sensitive (active high)");
        }
        let intid = spec[1].checked_add(32).filter(|i| *i < 1020);
        let intid = intid.ok_or("INTx SPI number out of range")?;
        if n == entries.len() {
            return Err("interrupt-map has too many entries");
        }
        entries[n] = (device, pin as u8, intid);
        n += 1;
        at = spec_at + 3;
    }
    let mut intx = [0u32; 4];
    for &(d, p, intid) in &entries[..n] {
        if d == 0 {
            intx[usize::from(p) - 1] = intid;
        }
    }
    if intx.contains(&0) {
        return Err("interrupt-map lacks a pin of device 0");
    }
    for &(d, p, intid) in &entries[..n] {
        if intx[(usize::from(d) + usize::from(p) - 1) % 4] != intid {
            return Err("interrupt-map does not follow the standard INTx swizzle");
        }
    }
    Ok(intx)
}

/// Records `intx` as the host's device interrupts (boot CPU, once) and configures each SPI at
/// the physical distributor: level-sensitive, group 1, routed to CPU 0, enabled. GICv3 only:
/// linking needs EOImode 1 at EL2, which the hypervisor uses on GICv3 (`arch::gic`).
///
/// # Errors
///
/// On a GICv2 board.
#[cfg(target_arch = "aarch64")]
pub fn route(g: &crate::arch::gic::Phys, intx: [u32; 4]) -> Result<(), MapError> {
    if g.version() != vgic::Version::V3 {
        return Err("hardware-linked host interrupts need GICv3");
    }
    INTX.call_once(|| intx);
    for intid in intx {
        g.spi_setup(intid);
    }
    Ok(())
}

/// Whether `intid` is one of the host's routed INTx lines.
#[cfg(target_arch = "aarch64")]
pub fn is_host_intx(intid: u32) -> bool {
    INTX.get().is_some_and(|s| s.contains(&intid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIC: u32 = 0x8002;

    /// QEMU virt's map (hw/arm/virt.c `create_pcie_irq_map`): 4 devices x 4 pins, GIC parent
    /// with 2 address cells, SPI 3 + (d + p - 1) % 4.
    fn qemu_map() -> Vec<u32> {
        let mut m = Vec::new();
        for d in 0..4u32 {
            for p in 1..=4u32 {
                m.extend([d << 11, 0, 0, p, GIC, 0, 0, 0, 3 + (d + p - 1) % 4, 4]);
            }
        }
        m
    }

    fn gic(ph: u32) -> Option<(usize, usize)> {
        (ph == GIC).then_some((2, 3))
    }

    #[test]
    fn qemu_virt_map_gives_spis_3_to_6() {
        assert_eq!(from_interrupt_map(&qemu_map(), gic), Ok([35, 36, 37, 38]));
    }

    #[test]
    fn bad_maps_are_refused() {
        let m = qemu_map();
        assert!(
            from_interrupt_map(&m[..m.len() - 1], gic).is_err(),
            "cut short"
        );
        assert!(from_interrupt_map(&m, |_| None).is_err(), "unknown parent");
        assert!(
            from_interrupt_map(&m, |_| Some((2, 2))).is_err(),
            "not a GIC"
        );
        let mut edge = m.clone();
        edge[9] = 1;
        assert!(from_interrupt_map(&edge, gic).is_err(), "edge");
        let mut ppi = m.clone();
        ppi[7] = 1;
        assert!(from_interrupt_map(&ppi, gic).is_err(), "PPI");
        let mut off = m.clone();
        off[10 * 5 + 8] = 9; // device 1 INTA off the swizzle
        assert!(from_interrupt_map(&off, gic).is_err(), "swizzle");
        let mut pin = m.clone();
        pin[3] = 5;
        assert!(from_interrupt_map(&pin, gic).is_err(), "pin 5");
        assert!(
            from_interrupt_map(&m[10..40], gic).is_err(),
            "device 0 INTA missing"
        );
        assert!(from_interrupt_map(&[], gic).is_err(), "empty");
        let mut huge = m.clone();
        huge[8] = u32::MAX;
        assert!(
            from_interrupt_map(&huge, gic).is_err(),
            "SPI number overflow"
        );
    }
}
