//! A small flattened device tree (DTB) writer, enough for the host to
//! describe a guest machine to a Linux kernel.
//!
//! Format: the Devicetree Specification v0.4, chapter 5 "Flattened
//! Devicetree (DTB) Format": a 40-byte big-endian header, the memory
//! reservation block (here only its terminating empty entry), the structure
//! block (FDT_BEGIN_NODE name, FDT_PROP len nameoff value, FDT_END_NODE,
//! FDT_END; every token 32-bit aligned) and the strings block (property
//! names, NUL-terminated, referenced by offset). Written from the spec, not
//! from libfdt.
//!
//! Every byte is written with a volatile byte store: the host runs with its
//! MMU off, where memory is Device-nGnRnE and an unaligned access (which a
//! compiler-generated `memcpy` may issue) faults. Depends on `core` only, so
//! xtask's unit tests include this file and check its output with a DTB
//! parser.

/// FDT header magic.
const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const END: u32 = 9;
/// Header (10 u32) and the memory reservation block's terminating entry.
const HEADER: usize = 40;
const RSVMAP_END: usize = HEADER + 16;
/// Room for property names.
const STRINGS_MAX: usize = 512;

/// Why a tree could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdtError {
    /// The output buffer (or the strings table) is full.
    Full,
    /// `end_node` without a node, or `finish` with nodes open.
    Unbalanced,
}

/// Writes one device tree into a caller's buffer.
pub struct FdtWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
    strings: [u8; STRINGS_MAX],
    strings_len: usize,
    depth: usize,
    error: Option<FdtError>,
}

impl<'a> FdtWriter<'a> {
    /// Starts a tree in `buf` (which should be 8-byte aligned).
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            pos: RSVMAP_END,
            strings: [0; STRINGS_MAX],
            strings_len: 0,
            depth: 0,
            error: None,
        }
    }

    fn put(&mut self, at: usize, b: u8) {
        match self.buf.get_mut(at) {
            // SAFETY: `slot` is a valid, exclusive byte of the buffer.
            Some(slot) => unsafe { core::ptr::write_volatile(slot, b) },
            None => self.error = Some(FdtError::Full),
        }
    }

    fn put_u32_at(&mut self, at: usize, v: u32) {
        for (i, b) in v.to_be_bytes().into_iter().enumerate() {
            self.put(at + i, b);
        }
    }

    fn u32(&mut self, v: u32) {
        self.put_u32_at(self.pos, v);
        self.pos += 4;
    }

    fn bytes(&mut self, s: &[u8]) {
        for &b in s {
            self.put(self.pos, b);
            self.pos += 1;
        }
    }

    fn align4(&mut self) {
        while !self.pos.is_multiple_of(4) {
            self.put(self.pos, 0);
            self.pos += 1;
        }
    }

    /// Offset of `name` in the strings block, adding it if new.
    fn name_offset(&mut self, name: &str) -> u32 {
        let name = name.as_bytes();
        let mut off = 0;
        while off < self.strings_len {
            let end = off
                + self.strings[off..self.strings_len]
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(0);
            if end - off == name.len() && (0..name.len()).all(|i| self.strings[off + i] == name[i])
            {
                return off as u32;
            }
            off = end + 1;
        }
        if self.strings_len + name.len() + 1 > STRINGS_MAX {
            self.error = Some(FdtError::Full);
            return 0;
        }
        let off = self.strings_len;
        for (i, &b) in name.iter().enumerate() {
            self.strings[off + i] = b;
        }
        self.strings[off + name.len()] = 0;
        self.strings_len += name.len() + 1;
        off as u32
    }

    /// Opens node `name` (`""` for the root).
    pub fn begin_node(&mut self, name: &str) {
        self.u32(BEGIN_NODE);
        self.bytes(name.as_bytes());
        self.bytes(&[0]);
        self.align4();
        self.depth += 1;
    }

    /// Closes the innermost open node.
    pub fn end_node(&mut self) {
        if self.depth == 0 {
            self.error = Some(FdtError::Unbalanced);
            return;
        }
        self.u32(END_NODE);
        self.depth -= 1;
    }

    fn prop_header(&mut self, name: &str, len: usize) {
        let off = self.name_offset(name);
        self.u32(PROP);
        self.u32(len as u32);
        self.u32(off);
    }

    /// A property with raw bytes.
    pub fn prop(&mut self, name: &str, value: &[u8]) {
        self.prop_header(name, value.len());
        self.bytes(value);
        self.align4();
    }

    /// An empty (boolean) property.
    pub fn prop_empty(&mut self, name: &str) {
        self.prop(name, &[]);
    }

    /// A property of big-endian 32-bit cells.
    pub fn prop_cells(&mut self, name: &str, cells: &[u32]) {
        self.prop_header(name, cells.len() * 4);
        for &c in cells {
            self.u32(c);
        }
    }

    /// A single-cell property.
    pub fn prop_u32(&mut self, name: &str, v: u32) {
        self.prop_cells(name, &[v]);
    }

    /// A 64-bit (two-cell) property.
    pub fn prop_u64(&mut self, name: &str, v: u64) {
        self.prop_cells(name, &[(v >> 32) as u32, v as u32]);
    }

    /// `reg` entries of two address and two size cells each.
    pub fn prop_reg64(&mut self, name: &str, ranges: &[(u64, u64)]) {
        self.prop_header(name, ranges.len() * 16);
        for &(base, size) in ranges {
            for v in [base, size] {
                self.u32((v >> 32) as u32);
                self.u32(v as u32);
            }
        }
    }

    /// A string list (each NUL-terminated).
    pub fn prop_strs(&mut self, name: &str, list: &[&str]) {
        let len = list.iter().map(|s| s.len() + 1).sum();
        self.prop_header(name, len);
        for s in list {
            self.bytes(s.as_bytes());
            self.bytes(&[0]);
        }
        self.align4();
    }

    /// A string property.
    pub fn prop_str(&mut self, name: &str, s: &str) {
        self.prop_strs(name, &[s]);
    }

    /// Ends the tree and writes the header; returns the total size.
    ///
    /// # Errors
    ///
    /// [`FdtError::Full`] when something did not fit, [`FdtError::Unbalanced`]
    /// when nodes are still open.
    pub fn finish(mut self) -> Result<usize, FdtError> {
        if self.depth != 0 {
            return Err(FdtError::Unbalanced);
        }
        self.u32(END);
        let struct_size = self.pos - RSVMAP_END;
        let strings_off = self.pos;
        for i in 0..self.strings_len {
            let b = self.strings[i];
            self.put(strings_off + i, b);
        }
        let total = (strings_off + self.strings_len).next_multiple_of(8);
        for i in strings_off + self.strings_len..total {
            self.put(i, 0);
        }
        // The memory reservation block: one terminating (0, 0) entry.
        for i in HEADER..RSVMAP_END {
            self.put(i, 0);
        }
        let header = [
            MAGIC,
            total as u32,
            RSVMAP_END as u32, // off_dt_struct
            strings_off as u32,
            HEADER as u32, // off_mem_rsvmap
            17,            // version
            16,            // last_comp_version
            0,             // boot_cpuid_phys
            self.strings_len as u32,
            struct_size as u32,
        ];
        for (i, v) in header.into_iter().enumerate() {
            self.put_u32_at(i * 4, v);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}
