//! ELF to flat binary, and the arm64 Image header check.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};

/// Largest flat image we are willing to write (guards against a stray segment
/// far away from the others turning into gigabytes of zeros).
const MAX_FLAT_SIZE: u64 = 256 * 1024 * 1024;

/// A flat binary: the PT_LOAD segments laid out by physical address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flat {
    /// Contents, starting at `load_addr`.
    pub bytes: Vec<u8>,
    /// Physical address of `bytes[0]` (lowest PT_LOAD `p_paddr`).
    pub load_addr: u64,
    /// ELF `e_entry`.
    pub entry: u64,
    /// One past the last byte any PT_LOAD segment occupies in memory (BSS and
    /// stacks included), so `mem_end - load_addr` is what the image needs.
    pub mem_end: u64,
}

/// Converts an AArch64 ELF64 to a flat binary: PT_LOAD segments concatenated
/// by physical address from the lowest one, gaps zero-filled; `p_memsz` beyond
/// `p_filesz` at the end of the image is not stored.
pub fn elf_to_flat(data: &[u8]) -> Result<Flat, String> {
    let header = elf::FileHeader64::<object::Endianness>::parse(data)
        .map_err(|e| format!("not an ELF64 file: {e}"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("bad ELF header: {e}"))?;
    let machine = header.e_machine(endian);
    if machine != elf::EM_AARCH64 {
        return Err(format!(
            "ELF machine is {machine}, not AArch64 ({})",
            elf::EM_AARCH64
        ));
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| format!("bad program headers: {e}"))?;
    // (paddr, memsz, file bytes)
    let mut segments: Vec<(u64, u64, &[u8])> = Vec::new();
    for ph in phdrs {
        if ph.p_type(endian) != elf::PT_LOAD || ph.p_memsz(endian) == 0 {
            continue;
        }
        let bytes = ph
            .data(endian, data)
            .map_err(|_| "a PT_LOAD segment lies outside the file".to_owned())?;
        let memsz = ph.p_memsz(endian);
        if (bytes.len() as u64) > memsz {
            return Err(format!(
                "PT_LOAD at {:#x}: p_filesz {:#x} > p_memsz {memsz:#x}",
                ph.p_paddr(endian),
                bytes.len()
            ));
        }
        segments.push((ph.p_paddr(endian), memsz, bytes));
    }
    segments.sort_by_key(|s| s.0);
    let Some(&(load_addr, _, _)) = segments.first() else {
        return Err("the ELF has no PT_LOAD segment".to_owned());
    };
    for pair in segments.windows(2) {
        let (a, a_mem, _) = pair[0];
        let (b, _, _) = pair[1];
        if a.checked_add(a_mem).is_none_or(|end| end > b) {
            return Err(format!(
                "PT_LOAD segments overlap: [{a:#x}..+{a_mem:#x}) and the one at {b:#x}"
            ));
        }
    }
    let end = segments
        .iter()
        .filter(|s| !s.2.is_empty())
        .map(|s| s.0 + s.2.len() as u64)
        .max()
        .unwrap_or(load_addr);
    let size = end - load_addr;
    if size > MAX_FLAT_SIZE {
        return Err(format!(
            "the flat image would be {size:#x} bytes (segments from {load_addr:#x} to {end:#x}); \
             check the linker script's physical addresses"
        ));
    }
    let mut bytes = vec![0u8; size as usize];
    for (paddr, _, file) in segments.iter().filter(|s| !s.2.is_empty()) {
        let off = (paddr - load_addr) as usize;
        bytes[off..off + file.len()].copy_from_slice(file);
    }
    let mem_end = segments
        .iter()
        .map(|s| s.0 + s.1)
        .max()
        .unwrap_or(load_addr);
    Ok(Flat {
        bytes,
        load_addr,
        entry: header.e_entry(endian),
        mem_end,
    })
}

/// The fields of a Linux arm64 Image header we check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset from a 2 MiB aligned RAM base where the image wants to be loaded.
    pub text_offset: u64,
    /// Effective image size (including BSS) in bytes.
    pub image_size: u64,
    /// Bit 0: big-endian; bits 1-2: page size; bit 3: placement.
    pub flags: u64,
}

/// What the image must say about itself: where it is linked, the base of the
/// RAM it is loaded into, and how much memory it occupies (BSS included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Physical address of the image's first byte (the board's load_address).
    pub load_address: u64,
    /// Base of the RAM region holding `load_address` (a loader adds
    /// `text_offset` to a 2 MiB aligned base there).
    pub ram_base: u64,
    /// Bytes from `load_address` to the end of the last segment in memory.
    pub mem_size: u64,
}

/// "ARM\x64" as a little-endian u32 at offset 56.
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
const HEADER_LEN: usize = 64;

/// `flags` bits 1-2: the kernel's page size; 1 = 4 KiB.
const FLAGS_PAGE_4K: u64 = 1 << 1;
/// `flags` bit 3: 1 = the image may be placed at any 2 MiB aligned base.
const FLAGS_ANYWHERE: u64 = 1 << 3;

fn u32_at(bytes: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[off..off + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[off..off + 8]);
    u64::from_le_bytes(b)
}

/// Checks the arm64 Image header at offset 0 of a flat image against what a
/// loader (QEMU, the Pi firmware) relies on (Linux
/// Documentation/arch/arm64/booting.rst, "Call the kernel image"):
///
/// * `code0` is a `B` into the image, `code1` is zero (no UEFI stub);
/// * `text_offset` puts the image at `load_address` when added to the RAM base;
/// * `image_size` covers the image in memory, BSS and stacks included;
/// * `flags`: little-endian, 4 KiB pages, placement near the RAM base (the
///   image is not relocatable), reserved bits 4..63 clear;
/// * the magic "ARM\x64" at offset 56.
pub fn check_image_header(image: &[u8], want: &Expected) -> Result<ImageHeader, String> {
    if image.len() < HEADER_LEN {
        return Err(format!(
            "the image is {} bytes, shorter than the 64-byte arm64 Image header",
            image.len()
        ));
    }
    let magic = u32_at(image, 56);
    if magic != IMAGE_MAGIC {
        return Err(format!(
            "no arm64 Image header: magic at offset 56 is {magic:#010x}, expected {IMAGE_MAGIC:#010x} \
             (\"ARM\\x64\"); the entry assembly must start with the Image header"
        ));
    }
    let header = ImageHeader {
        text_offset: u64_at(image, 8),
        image_size: u64_at(image, 16),
        flags: u64_at(image, 24),
    };
    let code0 = u32_at(image, 0);
    // B imm26: 0b000101 in bits 31:26, a signed word offset in 25:0.
    let target = (i64::from((code0 << 6) as i32) >> 4) as u64;
    if code0 >> 26 != 0b000101 || target >= header.image_size || target < HEADER_LEN as u64 {
        return Err(format!(
            "Image header code0 {code0:#010x} is not a branch past the header into the image"
        ));
    }
    let code1 = u32_at(image, 4);
    if code1 != 0 {
        return Err(format!("Image header code1 is {code1:#x}, expected 0"));
    }
    let wanted_offset = want.load_address.wrapping_sub(want.ram_base);
    if header.text_offset != wanted_offset {
        return Err(format!(
            "Image header text_offset {:#x}: loaded at RAM base {:#x} the image would start at \
             {:#x}, but it is linked at {:#x}",
            header.text_offset,
            want.ram_base,
            want.ram_base.wrapping_add(header.text_offset),
            want.load_address
        ));
    }
    if header.image_size < image.len() as u64 || header.image_size < want.mem_size {
        return Err(format!(
            "Image header image_size {:#x} does not cover the image: {:#x} bytes in the file, \
             {:#x} in memory with BSS and stacks",
            header.image_size,
            image.len(),
            want.mem_size
        ));
    }
    if header.flags & 1 != 0 {
        return Err(format!(
            "Image header flags {:#x}: bit 0 says big-endian kernel",
            header.flags
        ));
    }
    if header.flags & (0b11 << 1) != FLAGS_PAGE_4K {
        return Err(format!(
            "Image header flags {:#x}: bits 1-2 must say 4 KiB pages (1)",
            header.flags
        ));
    }
    if header.flags & FLAGS_ANYWHERE != 0 {
        return Err(format!(
            "Image header flags {:#x}: bit 3 says the image may be placed anywhere, but it is \
             linked at a fixed address",
            header.flags
        ));
    }
    if header.flags >> 4 != 0 {
        return Err(format!(
            "Image header flags {:#x}: reserved bits 4..63 must be zero",
            header.flags
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian AArch64 ELF64 with the given PT_LOAD segments
    /// (paddr, file bytes, memsz) and entry.
    fn elf(entry: u64, segs: &[(u64, &[u8], u64)], machine: u16) -> Vec<u8> {
        let phoff = 64u64;
        let mut data_off = phoff + 56 * segs.len() as u64;
        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF");
        out.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, LE, version, SysV
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out.extend_from_slice(&machine.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&entry.to_le_bytes());
        out.extend_from_slice(&phoff.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        out.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        out.extend_from_slice(&56u16.to_le_bytes()); // phentsize
        out.extend_from_slice(&(segs.len() as u16).to_le_bytes());
        out.extend_from_slice(&64u16.to_le_bytes()); // shentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // shnum
        out.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
        assert_eq!(out.len(), 64);
        for (paddr, bytes, memsz) in segs {
            out.extend_from_slice(&elf::PT_LOAD.to_le_bytes());
            out.extend_from_slice(&5u32.to_le_bytes()); // R+X
            out.extend_from_slice(&data_off.to_le_bytes());
            out.extend_from_slice(&(paddr + 0x1000_0000).to_le_bytes()); // vaddr differs
            out.extend_from_slice(&paddr.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&memsz.to_le_bytes());
            out.extend_from_slice(&8u64.to_le_bytes());
            data_off += bytes.len() as u64;
        }
        for (_, bytes, _) in segs {
            out.extend_from_slice(bytes);
        }
        out
    }

    #[test]
    fn flat_concatenates_by_paddr_with_gaps() {
        // Out of order in the file, a gap of 4 bytes, BSS at the end not stored.
        let data = elf(
            0x4008_0000,
            &[
                (0x4008_0008, &[5, 6], 0x100),
                (0x4008_0000, &[1, 2, 3, 4], 4),
            ],
            elf::EM_AARCH64,
        );
        let flat = elf_to_flat(&data).expect("converts");
        assert_eq!(flat.load_addr, 0x4008_0000);
        assert_eq!(flat.entry, 0x4008_0000);
        assert_eq!(flat.bytes, [1, 2, 3, 4, 0, 0, 0, 0, 5, 6]);
        assert_eq!(flat.mem_end, 0x4008_0108, "BSS counts in memory");
    }

    #[test]
    fn flat_zero_fills_inner_bss() {
        let data = elf(
            0x1000,
            &[(0x1000, &[1], 4), (0x1004, &[2], 1)],
            elf::EM_AARCH64,
        );
        assert_eq!(elf_to_flat(&data).expect("converts").bytes, [1, 0, 0, 0, 2]);
    }

    #[test]
    fn flat_rejects_bad_input() {
        let err = elf_to_flat(b"not an elf").expect_err("garbage");
        assert!(err.contains("ELF"), "{err}");
        let err = elf_to_flat(&elf(0, &[(0, &[1], 1)], 62)).expect_err("x86-64");
        assert!(err.contains("AArch64"), "{err}");
        let err = elf_to_flat(&elf(0, &[], elf::EM_AARCH64)).expect_err("no segments");
        assert!(err.contains("no PT_LOAD"), "{err}");
        let err = elf_to_flat(&elf(0, &[(0, &[1, 2], 8), (4, &[3], 1)], elf::EM_AARCH64))
            .expect_err("overlap");
        assert!(err.contains("overlap"), "{err}");
        let err = elf_to_flat(&elf(
            0,
            &[(0, &[1], 1), (0x8000_0000, &[2], 1)],
            elf::EM_AARCH64,
        ))
        .expect_err("huge gap");
        assert!(err.contains("linker script"), "{err}");
    }

    /// A 4 KiB flat image with a header: `b` to 0x40, the given fields.
    fn image(text_offset: u64, image_size: u64, flags: u64, magic: u32, len: usize) -> Vec<u8> {
        let mut img = vec![0u8; len];
        img[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b .+0x40
        img[8..16].copy_from_slice(&text_offset.to_le_bytes());
        img[16..24].copy_from_slice(&image_size.to_le_bytes());
        img[24..32].copy_from_slice(&flags.to_le_bytes());
        img[56..60].copy_from_slice(&magic.to_le_bytes());
        img
    }

    const RPI4: Expected = Expected {
        load_address: 0x8_0000,
        ram_base: 0,
        mem_size: 0x1_0000,
    };

    #[test]
    fn header_ok() {
        let h = check_image_header(
            &image(0x8_0000, 0x1_0000, 0b0010, IMAGE_MAGIC, 0x1000),
            &RPI4,
        )
        .expect("valid");
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0x8_0000,
                image_size: 0x1_0000,
                flags: 0b0010
            }
        );
        let virt = Expected {
            load_address: 0x4020_0000,
            ram_base: 0x4000_0000,
            mem_size: 0x1000,
        };
        check_image_header(
            &image(0x20_0000, 0x1000, 0b0010, IMAGE_MAGIC, 0x1000),
            &virt,
        )
        .expect("valid at 0x40200000");
    }

    #[test]
    fn header_errors() {
        let check = |img: &[u8]| check_image_header(img, &RPI4).expect_err("must fail");
        let ok = || image(0x8_0000, 0x1_0000, 0b0010, IMAGE_MAGIC, 0x1000);
        let err = check(&[0; 63]);
        assert!(err.contains("shorter"), "{err}");
        let err = check(&image(0x8_0000, 0x1_0000, 2, 0x1234_5678, 0x100));
        assert!(err.contains("magic"), "{err}");
        let mut img = ok();
        img[0..4].copy_from_slice(&0xd503_201fu32.to_le_bytes()); // nop
        let err = check(&img);
        assert!(err.contains("code0"), "{err}");
        let mut img = ok();
        img[0..4].copy_from_slice(&0x1400_0001u32.to_le_bytes()); // b into the header
        assert!(check(&img).contains("code0"));
        let mut img = ok();
        img[4] = 1;
        assert!(check(&img).contains("code1"));
        let err = check(&image(0x20_0000, 0x1_0000, 2, IMAGE_MAGIC, 0x1000));
        assert!(
            err.contains("text_offset") && err.contains("0x200000"),
            "{err}"
        );
        // Covers the file but not BSS.
        let err = check(&image(0x8_0000, 0x2000, 2, IMAGE_MAGIC, 0x1000));
        assert!(err.contains("image_size") && err.contains("BSS"), "{err}");
        let err = check(&image(0x8_0000, 0x1_0000, 3, IMAGE_MAGIC, 0x1000));
        assert!(err.contains("big-endian"), "{err}");
        let err = check(&image(0x8_0000, 0x1_0000, 0b0100, IMAGE_MAGIC, 0x1000));
        assert!(err.contains("4 KiB"), "{err}");
        let err = check(&image(0x8_0000, 0x1_0000, 0b1010, IMAGE_MAGIC, 0x1000));
        assert!(err.contains("anywhere"), "{err}");
        let err = check(&image(0x8_0000, 0x1_0000, 0b1_0010, IMAGE_MAGIC, 0x1000));
        assert!(err.contains("reserved"), "{err}");
    }
}
