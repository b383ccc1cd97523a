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
    Ok(Flat {
        bytes,
        load_addr,
        entry: header.e_entry(endian),
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

/// "ARM\x64" as a little-endian u32 at offset 56.
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
const HEADER_LEN: usize = 64;

fn u64_at(bytes: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[off..off + 8]);
    u64::from_le_bytes(b)
}

/// Checks the arm64 Image header at offset 0 of a flat image: the magic,
/// `image_size` (nonzero and at least the file size) and `flags` (little-endian,
/// reserved bits 4..63 clear).
pub fn check_image_header(image: &[u8]) -> Result<ImageHeader, String> {
    if image.len() < HEADER_LEN {
        return Err(format!(
            "the image is {} bytes, shorter than the 64-byte arm64 Image header",
            image.len()
        ));
    }
    let mut m = [0u8; 4];
    m.copy_from_slice(&image[56..60]);
    let magic = u32::from_le_bytes(m);
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
    if header.image_size < image.len() as u64 {
        return Err(format!(
            "Image header image_size {:#x} is smaller than the file ({:#x} bytes)",
            header.image_size,
            image.len()
        ));
    }
    if header.flags & 1 != 0 {
        return Err(format!(
            "Image header flags {:#x}: bit 0 says big-endian kernel",
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

    fn image(text_offset: u64, image_size: u64, flags: u64, magic: u32, len: usize) -> Vec<u8> {
        let mut img = vec![0u8; len];
        img[8..16].copy_from_slice(&text_offset.to_le_bytes());
        img[16..24].copy_from_slice(&image_size.to_le_bytes());
        img[24..32].copy_from_slice(&flags.to_le_bytes());
        img[56..60].copy_from_slice(&magic.to_le_bytes());
        img
    }

    #[test]
    fn header_ok() {
        let h = check_image_header(&image(0x20_0000, 0x1_0000, 0b1010, IMAGE_MAGIC, 0x1000))
            .expect("valid");
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0x20_0000,
                image_size: 0x1_0000,
                flags: 0b1010
            }
        );
    }

    #[test]
    fn header_errors() {
        let err = check_image_header(&[0; 63]).expect_err("short");
        assert!(err.contains("shorter"), "{err}");
        let err = check_image_header(&image(0, 0x1000, 0, 0x1234_5678, 0x100)).expect_err("magic");
        assert!(err.contains("magic"), "{err}");
        let err = check_image_header(&image(0, 0x80, 0, IMAGE_MAGIC, 0x100)).expect_err("size");
        assert!(err.contains("image_size"), "{err}");
        let err = check_image_header(&image(0, 0x100, 1, IMAGE_MAGIC, 0x100)).expect_err("BE");
        assert!(err.contains("big-endian"), "{err}");
        let err =
            check_image_header(&image(0, 0x100, 1 << 4, IMAGE_MAGIC, 0x100)).expect_err("reserved");
        assert!(err.contains("reserved"), "{err}");
    }
}
