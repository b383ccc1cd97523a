//! The firmware's rules: what a protected VM's boot inputs must be before it
//! runs them. The host claims a kernel entry and a device tree; the
//! hypervisor states the VM's RAM and vCPUs ([`Facts`], which the host
//! cannot forge). Every check here is pure (it reads byte slices and a
//! parsed [`Fdt`]), so xtask's unit tests include this file and run it on
//! device trees written by the host's own writer (`crates/host/src/dtb.rs`)
//! and hostile variants of them.
//!
//! The rules, as constants the host cannot change:
//! - the kernel is an arm64 Image (Linux's booting.rst header: magic,
//!   `image_size`), entered at its first byte, placed `text_offset` above a
//!   2 MiB boundary, wholly inside RAM;
//! - the device tree lies inside RAM (at most [`MAX_DTB`] bytes) and parses;
//! - exactly one memory node (`device_type = "memory"`), whose one `reg`
//!   range is exactly the VM's RAM;
//! - at most one `/reserved-memory` region, and it is a
//!   `restricted-dma-pool` with one `reg` range inside RAM, page aligned,
//!   at most [`MAX_POOL`] bytes, neither `no-map` nor `reusable`, and
//!   overlapping neither the kernel, the initrd nor the device tree (the
//!   guest shares the pool with the host, who could rewrite them there);
//! - every `compatible` string of every node is of a known kind
//!   ([`KNOWN`]): the devices the hypervisor emulates, the host's
//!   `virtio,mmio` transports, and the standard boot nodes;
//! - every `virtio,mmio` node's `reg` lies in the host's MMIO window
//!   (`hyp_abi::layout::HOST_MMIO_IPA`) and its `memory-region` names the
//!   pool (so all its DMA bounces through memory the guest chose to share);
//! - no more cpu nodes than the VM has vCPUs;
//! - `/chosen`'s initrd, if any, lies in RAM and overlaps neither the
//!   kernel nor the device tree.
//!
//! A boot without a device tree (no FDT magic at the host's x0) is allowed:
//! the kernel gets the host's x0 as it is, which cannot mislead it about
//! its devices (the demo's small guest-rt programs take a number there;
//! Linux cannot boot without a tree).

use core::fmt;
use fdt::node::FdtNode;
use fdt::Fdt;
use hyp_abi::layout::{HOST_MMIO_IPA, HOST_MMIO_SIZE};

/// The largest restricted DMA pool the firmware accepts: 16 MiB.
pub const MAX_POOL: u64 = 16 << 20;
/// The largest device tree the firmware reads: 2 MiB.
pub const MAX_DTB: u64 = 2 << 20;
/// The stage-2 granule: the pool is shared with the host in whole pages.
pub const PAGE: u64 = 4096;
/// An arm64 Image's base alignment (booting.rst: 2 MiB + `text_offset`).
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// The arm64 Image header's magic, "ARM\x64" (little-endian word at 56).
pub const ARM64_MAGIC: u32 = 0x644d_5241;
/// Bytes of the arm64 Image header.
pub const HEADER_LEN: usize = 64;
/// A flattened device tree's magic (big-endian word at 0).
pub const FDT_MAGIC: u32 = 0xd00d_feed;

/// The `compatible` strings the firmware lets a protected VM see.
pub const KNOWN: &[&str] = &[
    // The root.
    "linux,dummy-virt",
    // The host's virtio-mmio transports.
    "virtio,mmio",
    // The emulated PL011.
    "arm,pl011",
    "arm,primecell",
    // The vGIC (v3; v2 as QEMU virt names it).
    "arm,gic-v3",
    "arm,cortex-a15-gic",
    // The architected timer, PSCI, the UART's clock, the CPUs.
    "arm,armv8-timer",
    "arm,psci-1.0",
    "arm,psci-0.2",
    "arm,psci",
    "fixed-clock",
    "arm,armv8",
    // The pool.
    "restricted-dma-pool",
];

/// What the hypervisor says about the VM (x2..x4 at the firmware's entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// First IPA of the VM's RAM.
    pub ram_base: u64,
    /// Bytes of RAM.
    pub ram_size: u64,
    /// The VM's vCPUs.
    pub vcpus: u64,
}

impl Facts {
    /// Whether `[at, at + len)` lies in RAM (`len` > 0).
    #[must_use]
    pub fn in_ram(&self, at: u64, len: u64) -> bool {
        len != 0
            && at >= self.ram_base
            && at
                .checked_add(len)
                .is_some_and(|end| end <= self.ram_base + self.ram_size)
    }
}

/// A broken rule, with the value that broke it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal<'a> {
    /// The kernel's header does not lie in RAM.
    KernelOutsideRam(u64),
    /// No arm64 Image magic.
    KernelMagic(u32),
    /// `[entry, entry + image_size)` is empty or leaves RAM.
    KernelSize(u64, u64),
    /// The entry minus `text_offset` is not 2 MiB aligned.
    KernelAlign(u64),
    /// The device tree does not lie in RAM (address, size).
    DtbOutsideRam(u64, u64),
    /// Larger than [`MAX_DTB`].
    DtbTooLarge(u64),
    /// The blob does not parse.
    DtbParse,
    /// The blob breaks the flattened device tree format (what, offset):
    /// checked before the parser sees it.
    DtbMalformed(&'static str, u64),
    /// The device tree overlaps the kernel.
    DtbOverlapsKernel(u64),
    /// Not exactly one memory node.
    MemoryNodes(usize),
    /// The memory node's range is not the VM's RAM.
    MemoryRange(u64, u64),
    /// More than one reserved-memory region.
    ReservedRegions(usize),
    /// A reserved-memory region that is not a restricted DMA pool.
    NotAPool(&'a str),
    /// The pool has no single `reg` range.
    PoolReg(&'a str),
    /// The pool leaves RAM.
    PoolOutsideRam(u64, u64),
    /// The pool is not page aligned.
    PoolUnaligned(u64, u64),
    /// The pool is larger than [`MAX_POOL`].
    PoolTooLarge(u64),
    /// The pool is `no-map` or `reusable`.
    PoolFlag(&'a str),
    /// The pool overlaps the kernel, initrd or device tree.
    PoolOverlaps(&'static str, u64),
    /// A node with a `compatible` string not in [`KNOWN`].
    UnknownDevice(&'a str, &'a str),
    /// A virtio-mmio node outside the host's MMIO window (or with no
    /// single `reg` range: address 0).
    VirtioOutsideWindow(&'a str, u64),
    /// A virtio-mmio node whose `memory-region` is not the pool.
    VirtioWithoutPool(&'a str),
    /// More cpu nodes than vCPUs.
    Cpus(usize, u64),
    /// The initrd's range is malformed or leaves RAM.
    InitrdOutsideRam(u64, u64),
    /// The initrd overlaps the kernel or the device tree.
    InitrdOverlaps(&'static str, u64),
}

impl fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::KernelOutsideRam(a) => write!(f, "kernel entry {a:#x} is not in RAM"),
            Self::KernelMagic(m) => {
                write!(f, "kernel has no arm64 Image header (magic {m:#x})")
            }
            Self::KernelSize(a, s) => {
                write!(f, "kernel image {a:#x}+{s:#x} is empty or leaves RAM")
            }
            Self::KernelAlign(b) => write!(f, "kernel base {b:#x} is not 2 MiB aligned"),
            Self::DtbOutsideRam(a, s) => {
                write!(f, "device tree {a:#x}+{s:#x} is not in RAM")
            }
            Self::DtbTooLarge(s) => {
                write!(f, "device tree of {s:#x} bytes exceeds {MAX_DTB:#x}")
            }
            Self::DtbParse => write!(f, "device tree does not parse"),
            Self::DtbMalformed(what, at) => {
                write!(f, "device tree is malformed: {what} at offset {at:#x}")
            }
            Self::DtbOverlapsKernel(a) => write!(f, "device tree at {a:#x} overlaps the kernel"),
            Self::MemoryNodes(n) => write!(f, "{n} memory nodes (exactly 1 allowed)"),
            Self::MemoryRange(a, s) => {
                write!(f, "memory node {a:#x}+{s:#x} is not the VM's RAM")
            }
            Self::ReservedRegions(n) => {
                write!(f, "{n} reserved-memory regions (at most 1 allowed)")
            }
            Self::NotAPool(n) => {
                write!(f, "reserved-memory region {n} is not a restricted-dma-pool")
            }
            Self::PoolReg(n) => write!(f, "pool {n} has no single reg range"),
            Self::PoolOutsideRam(a, s) => write!(f, "pool {a:#x}+{s:#x} is not in RAM"),
            Self::PoolUnaligned(a, s) => {
                write!(f, "pool {a:#x}+{s:#x} is not page aligned")
            }
            Self::PoolTooLarge(s) => {
                write!(f, "pool of {s:#x} bytes exceeds the limit {MAX_POOL:#x}")
            }
            Self::PoolFlag(p) => write!(f, "pool is {p}"),
            Self::PoolOverlaps(what, a) => write!(f, "pool overlaps the {what} at {a:#x}"),
            Self::UnknownDevice(n, c) => {
                write!(f, "node {n} is of an unknown kind (compatible \"{c}\")")
            }
            Self::VirtioOutsideWindow(n, a) => write!(
                f,
                "virtio device {n} at {a:#x} is outside the host MMIO window {HOST_MMIO_IPA:#x}+{HOST_MMIO_SIZE:#x}"
            ),
            Self::VirtioWithoutPool(n) => {
                write!(f, "virtio device {n} does not use the DMA pool")
            }
            Self::Cpus(n, v) => write!(f, "{n} cpu nodes for {v} vCPUs"),
            Self::InitrdOutsideRam(s, e) => write!(f, "initrd {s:#x}..{e:#x} is not in RAM"),
            Self::InitrdOverlaps(what, a) => write!(f, "initrd overlaps the {what} at {a:#x}"),
        }
    }
}

/// The kernel as its header describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// Entry = load address.
    pub base: u64,
    /// `image_size`: bytes from `base` the kernel uses (measured).
    pub size: u64,
}

fn le64(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Checks the kernel's arm64 Image header (`header`, read at `entry`, which
/// the caller checked with [`kernel_header_in_ram`]).
///
/// # Errors
///
/// The broken rule.
pub fn check_kernel(
    facts: &Facts,
    entry: u64,
    header: &[u8; HEADER_LEN],
) -> Result<Kernel, Refusal<'static>> {
    let magic = le64(header, 56) as u32;
    if magic != ARM64_MAGIC {
        return Err(Refusal::KernelMagic(magic));
    }
    let (text_offset, size) = (le64(header, 8), le64(header, 16));
    if !facts.in_ram(entry, size) {
        return Err(Refusal::KernelSize(entry, size));
    }
    let base = entry.wrapping_sub(text_offset);
    if text_offset > entry || !base.is_multiple_of(KERNEL_ALIGN) {
        return Err(Refusal::KernelAlign(base));
    }
    Ok(Kernel { base: entry, size })
}

/// Whether the header at `entry` can be read from RAM.
///
/// # Errors
///
/// [`Refusal::KernelOutsideRam`].
pub fn kernel_header_in_ram(facts: &Facts, entry: u64) -> Result<(), Refusal<'static>> {
    if facts.in_ram(entry, HEADER_LEN as u64) && entry.is_multiple_of(4) {
        Ok(())
    } else {
        Err(Refusal::KernelOutsideRam(entry))
    }
}

/// The device tree's extent from its first 8 bytes (`head`, read at `at`):
/// `Ok(None)` when they do not start with the FDT magic (no device tree),
/// else its size once checked to lie in RAM.
///
/// # Errors
///
/// [`Refusal::DtbOutsideRam`], [`Refusal::DtbTooLarge`].
pub fn dtb_extent(facts: &Facts, at: u64, head: [u8; 8]) -> Result<Option<u64>, Refusal<'static>> {
    let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if magic != FDT_MAGIC {
        return Ok(None);
    }
    let size = u64::from(u32::from_be_bytes([head[4], head[5], head[6], head[7]]));
    if size > MAX_DTB {
        return Err(Refusal::DtbTooLarge(size));
    }
    if !facts.in_ram(at, size) {
        return Err(Refusal::DtbOutsideRam(at, size));
    }
    Ok(Some(size))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Deepest node nesting accepted (the host's trees are 3 deep).
const MAX_DEPTH: usize = 16;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;

/// Checks that `blob` is a well-formed flattened device tree (devicetree
/// specification v0.4, chapter 5) in the strict shape the host's writer
/// produces: header fields inside the blob, version 17, an empty memory
/// reservation map (a `/memreserve/` would hide RAM from the kernel), and a
/// structure block of exactly one root node, each node's properties before
/// its children, every name a NUL-terminated UTF-8 string inside its
/// block, every property inside the structure block, `#address-cells` and
/// `#size-cells` one cell each, no NOP tokens, then FDT_END. The `fdt` crate panics on some malformed blobs; after this
/// check it has nothing to panic on, so every bad blob is a refusal.
///
/// # Errors
///
/// [`Refusal::DtbMalformed`] with what is wrong and where.
pub fn check_blob(blob: &[u8]) -> Result<(), Refusal<'static>> {
    let bad = |what, at: usize| Refusal::DtbMalformed(what, at as u64);
    let field = |i: usize| be32(blob, 4 * i).ok_or(bad("truncated header", 4 * i));
    let total = field(1)? as usize;
    let (off_struct, off_strings, off_rsv) =
        (field(2)? as usize, field(3)? as usize, field(4)? as usize);
    let (version, strings_size, struct_size) = (field(5)?, field(8)? as usize, field(9)? as usize);
    if total != blob.len() {
        return Err(bad("totalsize is not the blob's size", 4));
    }
    if version != 17 {
        return Err(bad("version is not 17", 20));
    }
    let within = |off: usize, len: usize| off.checked_add(len).is_some_and(|e| e <= total);
    if !within(off_rsv, 16) || !off_rsv.is_multiple_of(8) {
        return Err(bad("memory reservation map outside the blob", 16));
    }
    if blob[off_rsv..off_rsv + 16].iter().any(|&b| b != 0) {
        return Err(bad("memory reservation entries", off_rsv));
    }
    if !within(off_struct, struct_size)
        || !off_struct.is_multiple_of(4)
        || !struct_size.is_multiple_of(4)
    {
        return Err(bad("structure block outside the blob", 8));
    }
    if !within(off_strings, strings_size) {
        return Err(bad("strings block outside the blob", 12));
    }
    let st = &blob[off_struct..off_struct + struct_size];
    let strings = &blob[off_strings..off_strings + strings_size];
    // A NUL-terminated UTF-8 string at `at` of `b`: its length.
    let cstr = |b: &[u8], at: usize| -> Option<usize> {
        let rest = b.get(at..)?;
        let n = rest.iter().position(|&c| c == 0)?;
        core::str::from_utf8(&rest[..n]).ok()?;
        Some(n)
    };
    let mut at = 0;
    let mut depth = 0usize;
    // Whether the current node has had a child (no property may follow).
    let mut had_child = [false; MAX_DEPTH + 1];
    loop {
        let tok =
            be32(st, at).ok_or(bad("structure block ends before FDT_END", off_struct + at))?;
        let here = off_struct + at;
        at += 4;
        match tok {
            FDT_BEGIN_NODE => {
                if depth == 0 && at != 4 {
                    return Err(bad("a second root node", here));
                }
                if depth == MAX_DEPTH {
                    return Err(bad("nodes nested too deep", here));
                }
                let n = cstr(st, at).ok_or(bad("node name", here))?;
                if depth == 0 && n != 0 {
                    return Err(bad("the root node has a name", here));
                }
                had_child[depth] = true;
                depth += 1;
                had_child[depth] = false;
                at = (at + n + 1).next_multiple_of(4);
            }
            FDT_END_NODE => {
                if depth == 0 {
                    return Err(bad("FDT_END_NODE outside a node", here));
                }
                depth -= 1;
            }
            FDT_PROP => {
                if depth == 0 {
                    return Err(bad("a property outside a node", here));
                }
                if had_child[depth] {
                    return Err(bad("a property after a child node", here));
                }
                let len = be32(st, at).ok_or(bad("property header", here))? as usize;
                let name = be32(st, at + 4).ok_or(bad("property header", here))? as usize;
                let n = cstr(strings, name).ok_or(bad("property name", here))?;
                at += 8;
                if at.checked_add(len).is_none_or(|e| e > st.len()) {
                    return Err(bad("property value past the structure block", here));
                }
                // Cell counts are one cell (the parser assumes it).
                let pname = &strings[name..name + n];
                if (pname == b"#address-cells" || pname == b"#size-cells") && len != 4 {
                    return Err(bad("a cell count that is not one cell", here));
                }
                at = (at + len).next_multiple_of(4);
            }
            FDT_END if depth == 0 && at > 4 => return Ok(()),
            _ => return Err(bad("unexpected token", here)),
        }
    }
}

/// Whether `dtb` may hold a device tree: its address in RAM, 8 bytes
/// readable (the caller then reads the header).
#[must_use]
pub fn may_hold_dtb(facts: &Facts, dtb: u64) -> bool {
    facts.in_ram(dtb, 8) && dtb.is_multiple_of(8)
}

/// What a device tree that keeps every rule describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// virtio-mmio devices.
    pub devices: usize,
    /// The restricted DMA pool `(IPA, bytes)`, if any.
    pub pool: Option<(u64, u64)>,
    /// The initrd `[start, end)`, if any.
    pub initrd: Option<(u64, u64)>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// The one `reg` range of `node`, if it has exactly one with a size.
fn one_reg(node: &FdtNode<'_, '_>) -> Option<(u64, u64)> {
    let mut regs = node.reg()?;
    let r = regs.next()?;
    if regs.next().is_some() {
        return None;
    }
    Some((r.starting_address as u64, r.size? as u64))
}

fn prop_u32(node: &FdtNode<'_, '_>, name: &str) -> Option<u32> {
    let v = node.property(name)?.value;
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

/// A `/chosen` address property: one or two cells.
fn prop_addr(node: &FdtNode<'_, '_>, name: &str) -> Option<u64> {
    let v = node.property(name)?.value;
    match v.len() {
        4 => Some(u64::from(u32::from_be_bytes(v.try_into().ok()?))),
        8 => Some(u64::from_be_bytes(v.try_into().ok()?)),
        _ => None,
    }
}

/// Checks the device tree `fdt` (at `dtb`, `dtb_size` bytes) against every
/// rule, for a kernel at `kernel`.
///
/// # Errors
///
/// The first broken rule.
pub fn check_dt<'a>(
    fdt: &Fdt<'a>,
    facts: &Facts,
    kernel: Kernel,
    dtb: (u64, u64),
) -> Result<Summary, Refusal<'a>> {
    let kspan = (kernel.base, kernel.size);
    if overlaps(dtb, kspan) {
        return Err(Refusal::DtbOverlapsKernel(dtb.0));
    }
    // Memory: exactly one node, exactly the VM's RAM.
    let is_memory =
        |n: &FdtNode<'_, '_>| n.property("device_type").and_then(|p| p.as_str()) == Some("memory");
    let memory = fdt.all_nodes().filter(is_memory).count();
    if memory != 1 {
        return Err(Refusal::MemoryNodes(memory));
    }
    for node in fdt.all_nodes().filter(is_memory) {
        let r = one_reg(&node).unwrap_or((0, 0));
        if r != (facts.ram_base, facts.ram_size) {
            return Err(Refusal::MemoryRange(r.0, r.1));
        }
    }
    // The initrd.
    let mut initrd = None;
    if let Some(chosen) = fdt.find_node("/chosen") {
        let s = prop_addr(&chosen, "linux,initrd-start");
        let e = prop_addr(&chosen, "linux,initrd-end");
        if s.is_some() || e.is_some() {
            let (s, e) = (s.unwrap_or(0), e.unwrap_or(0));
            if e <= s || !facts.in_ram(s, e - s) {
                return Err(Refusal::InitrdOutsideRam(s, e));
            }
            if overlaps((s, e - s), kspan) {
                return Err(Refusal::InitrdOverlaps("kernel", kernel.base));
            }
            if overlaps((s, e - s), dtb) {
                return Err(Refusal::InitrdOverlaps("device tree", dtb.0));
            }
            initrd = Some((s, e));
        }
    }
    // The pool.
    let mut pool = None;
    let mut pool_phandle = None;
    if let Some(rm) = fdt.find_node("/reserved-memory") {
        let n = rm.children().count();
        if n > 1 {
            return Err(Refusal::ReservedRegions(n));
        }
        for p in rm.children() {
            if !p
                .compatible()
                .is_some_and(|c| c.all().eq(["restricted-dma-pool"]))
            {
                return Err(Refusal::NotAPool(p.name));
            }
            let r = one_reg(&p).ok_or(Refusal::PoolReg(p.name))?;
            if r.1 > MAX_POOL {
                return Err(Refusal::PoolTooLarge(r.1));
            }
            if !facts.in_ram(r.0, r.1) {
                return Err(Refusal::PoolOutsideRam(r.0, r.1));
            }
            if !r.0.is_multiple_of(PAGE) || !r.1.is_multiple_of(PAGE) {
                return Err(Refusal::PoolUnaligned(r.0, r.1));
            }
            for flag in ["no-map", "reusable"] {
                if p.property(flag).is_some() {
                    return Err(Refusal::PoolFlag(flag));
                }
            }
            if overlaps(r, kspan) {
                return Err(Refusal::PoolOverlaps("kernel", kernel.base));
            }
            if overlaps(r, dtb) {
                return Err(Refusal::PoolOverlaps("device tree", dtb.0));
            }
            if let Some((s, e)) = initrd {
                if overlaps(r, (s, e - s)) {
                    return Err(Refusal::PoolOverlaps("initrd", s));
                }
            }
            pool = Some(r);
            pool_phandle = prop_u32(&p, "phandle");
        }
    }
    // Devices.
    let mut devices = 0;
    let mut cpus = 0;
    for node in fdt.all_nodes() {
        if node.property("device_type").and_then(|p| p.as_str()) == Some("cpu") {
            cpus += 1;
        }
        let Some(compat) = node.compatible() else {
            continue;
        };
        let mut virtio = false;
        for c in compat.all() {
            if !KNOWN.contains(&c) {
                return Err(Refusal::UnknownDevice(node.name, c));
            }
            virtio |= c == "virtio,mmio";
        }
        if virtio {
            let (at, size) = one_reg(&node).unwrap_or((0, 0));
            let window = (HOST_MMIO_IPA, HOST_MMIO_SIZE);
            if size == 0 || at < window.0 || at.saturating_add(size) > window.0 + window.1 {
                return Err(Refusal::VirtioOutsideWindow(node.name, at));
            }
            match (pool_phandle, prop_u32(&node, "memory-region")) {
                (Some(p), Some(m)) if p == m => {}
                _ => return Err(Refusal::VirtioWithoutPool(node.name)),
            }
            devices += 1;
        }
    }
    if cpus > facts.vcpus as usize {
        return Err(Refusal::Cpus(cpus, facts.vcpus));
    }
    Ok(Summary {
        devices,
        pool,
        initrd,
    })
}
