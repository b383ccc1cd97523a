//! Board descriptions (platforms/*/board.toml): parsing and build-time checks.
//!
//! One `board.toml` per platform holds the board's facts: which crates and
//! targets build the hypervisor and its guests, how QEMU runs it, and the
//! physical memory map. This crate is used on the host only:
//!
//! * by `crates/platform-*/build.rs`, which [`check`](Board::check) the board
//!   and render `$OUT_DIR/board.rs` with [`codegen`] ([`build_script`] does
//!   both),
//! * by `xtask`, which builds the guests and the image, writes the payload
//!   [`Manifest`] and runs QEMU ([`Board::qemu_args`]),
//! * by the `hyp-tests` harness, which boots QEMU the same way.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// 2 MiB: the granule of RAM, hypervisor and VM regions (one level-2 block).
pub const MEMORY_ALIGN: u64 = 2 * 1024 * 1024;
/// 4 KiB: the granule of device regions (one page).
pub const DEVICE_ALIGN: u64 = 4 * 1024;

/// A parsed `board.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Human-readable board name, e.g. `qemu-virt`.
    pub name: String,
    /// The crate holding the hypervisor binary for this board.
    pub hyp_crate: String,
    /// The hypervisor binary (a `[[bin]]` of `hyp_crate`).
    pub hyp_bin: String,
    /// Rust target of the hypervisor.
    pub hyp_target: String,
    /// Rust target of the guest payloads.
    pub guest_target: String,
    /// Guest crates (each with a bin of the same name) linked into the image.
    #[serde(default)]
    pub guests: Vec<String>,
    /// Physical address the image is loaded at.
    pub load_address: u64,
    /// How QEMU emulates this board.
    pub qemu: QemuConfig,
    /// The physical memory map.
    #[serde(rename = "region", default)]
    pub regions: Vec<Region>,
}

/// The `[qemu]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// `-M` argument.
    pub machine: String,
    /// `-cpu` argument; omitted for machines with a fixed CPU (raspi4b).
    pub cpu: Option<String>,
    /// `-m` argument.
    pub memory: String,
    /// Default `-smp` argument.
    pub smp: u32,
    /// Extra arguments appended after `-kernel`.
    #[serde(default)]
    pub extra: Vec<String>,
}

/// What a region of the physical address space is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionKind {
    /// Physical RAM; may contain `hyp` and `vm` regions.
    Ram,
    /// The hypervisor's own memory; never given to a VM.
    Hyp,
    /// Memory the hypervisor may hand to VMs.
    Vm,
    /// MMIO.
    Device,
}

impl RegionKind {
    /// The variant name in the generated `RegionKind` enum.
    pub fn variant(self) -> &'static str {
        match self {
            RegionKind::Ram => "Ram",
            RegionKind::Hyp => "Hyp",
            RegionKind::Vm => "Vm",
            RegionKind::Device => "Device",
        }
    }

    /// The spelling in `board.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionKind::Ram => "ram",
            RegionKind::Hyp => "hyp",
            RegionKind::Vm => "vm",
            RegionKind::Device => "device",
        }
    }

    /// Required alignment of base and size.
    pub fn alignment(self) -> u64 {
        match self {
            RegionKind::Ram | RegionKind::Hyp | RegionKind::Vm => MEMORY_ALIGN,
            RegionKind::Device => DEVICE_ALIGN,
        }
    }
}

impl fmt::Display for RegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[region]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Lower-case identifier; the generated constant is its upper-case form.
    pub name: String,
    /// What the region is.
    pub kind: RegionKind,
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Region {
    /// One past the last byte (saturating; overflow is reported by `check`).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    fn overlaps(&self, other: &Region) -> bool {
        self.base < other.end() && other.base < self.end()
    }

    fn contains_region(&self, other: &Region) -> bool {
        self.base <= other.base && other.end() <= self.end()
    }

    fn contains(&self, addr: u64) -> bool {
        self.base <= addr && addr < self.end()
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} region `{}` [{:#x}..{:#x})",
            self.kind,
            self.name,
            self.base,
            self.end()
        )
    }
}

/// Everything that can be wrong with a board description.
#[derive(Debug)]
pub enum BoardError {
    /// The file could not be read.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for the schema.
    Parse { path: PathBuf, message: String },
    /// The description parsed but breaks a rule.
    Invalid(String),
}

impl fmt::Display for BoardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoardError::Io { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            BoardError::Parse { path, message } => {
                write!(f, "{}: {message}", path.display())
            }
            BoardError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for BoardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BoardError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn invalid(message: String) -> Result<(), BoardError> {
    Err(BoardError::Invalid(message))
}

/// Names the generated code already uses in `pub mod board`.
const RESERVED_NAMES: &[&str] = &["name", "load_address", "regions", "region", "region_kind"];

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Board {
    /// Reads and parses `path` (does not [`check`](Board::check) it).
    pub fn load(path: impl AsRef<Path>) -> Result<Board, BoardError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Io {
            path: path.to_owned(),
            source,
        })?;
        Board::parse(&text, path)
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Board, BoardError> {
        toml::from_str(text).map_err(|e| BoardError::Parse {
            path: path.as_ref().to_owned(),
            message: e.to_string(),
        })
    }

    /// Regions of one kind, in file order.
    pub fn regions_of(&self, kind: RegionKind) -> impl Iterator<Item = &Region> {
        self.regions.iter().filter(move |r| r.kind == kind)
    }

    /// The `hyp` region (after a successful [`check`](Board::check) there is exactly one).
    pub fn hyp_region(&self) -> Option<&Region> {
        self.regions_of(RegionKind::Hyp).next()
    }

    /// Checks every rule; the first broken one is returned, naming the regions involved.
    ///
    /// * region names are unique lower-case identifiers (they become constants),
    /// * sizes are nonzero and regions do not wrap around the address space,
    /// * `ram`, `hyp` and `vm` regions are 2 MiB aligned (base and size), `device` 4 KiB,
    /// * `ram` regions are disjoint from each other and from `device` regions,
    /// * `hyp`, `vm` and `device` regions are mutually disjoint; in particular
    ///   `hyp` memory lies outside every `vm` region,
    /// * every `hyp` and `vm` region lies inside one `ram` region,
    /// * there is exactly one `hyp` region and `load_address` lies inside it,
    /// * `qemu.smp` is at least 1.
    pub fn check(&self) -> Result<(), BoardError> {
        let board = &self.name;
        if self.qemu.smp == 0 {
            return invalid(format!("board `{board}`: qemu.smp must be at least 1"));
        }
        let mut names = BTreeSet::new();
        for r in &self.regions {
            if !is_identifier(&r.name) {
                return invalid(format!(
                    "board `{board}`: region name `{}` must match [a-z][a-z0-9_]* \
                     (it becomes the constant {})",
                    r.name,
                    r.name.to_uppercase()
                ));
            }
            if RESERVED_NAMES.contains(&r.name.as_str()) {
                return invalid(format!(
                    "board `{board}`: region name `{}` is reserved by the generated code",
                    r.name
                ));
            }
            if !names.insert(r.name.as_str()) {
                return invalid(format!(
                    "board `{board}`: two regions are named `{}`",
                    r.name
                ));
            }
            if r.size == 0 {
                return invalid(format!("board `{board}`: {r} has size 0"));
            }
            if r.base.checked_add(r.size).is_none() {
                return invalid(format!(
                    "board `{board}`: {} region `{}` at {:#x} with size {:#x} wraps around \
                     the address space",
                    r.kind, r.name, r.base, r.size
                ));
            }
            let align = r.kind.alignment();
            if r.base % align != 0 || r.size % align != 0 {
                return invalid(format!(
                    "board `{board}`: {r} is not {} aligned (base {:#x}, size {:#x}): \
                     {} regions need base and size multiples of {align:#x}",
                    if align == MEMORY_ALIGN {
                        "2 MiB"
                    } else {
                        "4 KiB"
                    },
                    r.base,
                    r.size,
                    r.kind
                ));
            }
        }
        for (i, a) in self.regions.iter().enumerate() {
            for b in &self.regions[i + 1..] {
                if !a.overlaps(b) {
                    continue;
                }
                use RegionKind::*;
                match (a.kind, b.kind) {
                    // Checked below: hyp/vm regions must lie inside one ram region.
                    (Ram, Hyp | Vm) | (Hyp | Vm, Ram) => {}
                    (Hyp, Vm) | (Vm, Hyp) => {
                        return invalid(format!(
                            "board `{board}`: hypervisor memory must lie outside every vm \
                             region, but {a} overlaps {b}"
                        ));
                    }
                    _ => {
                        return invalid(format!(
                            "board `{board}`: {a} overlaps {b} (only ram regions may contain \
                             others, and only hyp/vm regions)"
                        ));
                    }
                }
            }
        }
        for r in self
            .regions
            .iter()
            .filter(|r| matches!(r.kind, RegionKind::Hyp | RegionKind::Vm))
        {
            if !self
                .regions_of(RegionKind::Ram)
                .any(|ram| ram.contains_region(r))
            {
                return invalid(format!(
                    "board `{board}`: {r} does not lie inside a ram region"
                ));
            }
        }
        let hyps: Vec<&Region> = self.regions_of(RegionKind::Hyp).collect();
        let hyp = match hyps.as_slice() {
            [hyp] => *hyp,
            [] => return invalid(format!("board `{board}`: there is no hyp region")),
            [..] => {
                let names: Vec<&str> = hyps.iter().map(|r| r.name.as_str()).collect();
                return invalid(format!(
                    "board `{board}`: there must be exactly one hyp region, found {}: {}",
                    hyps.len(),
                    names.join(", ")
                ));
            }
        };
        if !hyp.contains(self.load_address) {
            return invalid(format!(
                "board `{board}`: load_address {:#x} lies outside the {hyp}",
                self.load_address
            ));
        }
        Ok(())
    }

    /// The QEMU command line after the program name: machine, CPU, memory,
    /// `-smp` (`smp` overrides the board's default), `-nographic`, `-kernel
    /// <image>` and the board's extra arguments.
    pub fn qemu_args(&self, image: &Path, smp: Option<u32>) -> Vec<String> {
        let q = &self.qemu;
        let mut args = vec!["-M".to_owned(), q.machine.clone()];
        if let Some(cpu) = &q.cpu {
            args.extend(["-cpu".to_owned(), cpu.clone()]);
        }
        args.extend([
            "-m".to_owned(),
            q.memory.clone(),
            "-smp".to_owned(),
            smp.unwrap_or(q.smp).to_string(),
            "-nographic".to_owned(),
            "-kernel".to_owned(),
            image.display().to_string(),
        ]);
        args.extend(q.extra.iter().cloned());
        args
    }
}

/// The payload manifest `xtask` writes next to the guest binaries
/// (`target/payloads/<board>/manifest.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The payloads, in board order.
    #[serde(rename = "payload", default)]
    pub payloads: Vec<ManifestEntry>,
}

/// One guest payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Guest name (the crate).
    pub name: String,
    /// Flat binary, relative to the manifest's directory.
    pub file: String,
    /// Intermediate physical address of the binary's first byte.
    pub load_ipa: u64,
    /// Entry point (ELF `e_entry`).
    pub entry: u64,
}

/// The name of the manifest file in a payload directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

impl Manifest {
    /// Reads `dir/manifest.toml`.
    pub fn load(dir: &Path) -> Result<Manifest, BoardError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| BoardError::Io {
            path: path.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| BoardError::Parse {
            path,
            message: e.to_string(),
        })
    }

    /// Renders the manifest as TOML.
    pub fn to_toml(&self) -> String {
        let mut out =
            String::from("# Written by `cargo xtask build`; read by crates/platform-*/build.rs.\n");
        for p in &self.payloads {
            // Hand-rendered so addresses stay in hex.
            let _ = write!(
                out,
                "\n[[payload]]\nname = {}\nfile = {}\nload_ipa = {:#x}\nentry = {:#x}\n",
                toml_string(&p.name),
                toml_string(&p.file),
                p.load_ipa,
                p.entry
            );
        }
        out
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A payload as the generated code sees it: the flat binary at an absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Guest name.
    pub name: String,
    /// Absolute path of the flat binary (`include_bytes!`).
    pub path: PathBuf,
    /// IPA of the first byte.
    pub load_ipa: u64,
    /// Entry point.
    pub entry: u64,
}

/// Renders the Rust source of `$OUT_DIR/board.rs`: `pub mod board` (the
/// memory map as constants) and `pub mod payloads` (the guest binaries).
pub fn codegen(board: &Board, payloads: &[Payload]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Generated from board.toml by crates/board (codegen). Do not edit.\n\n\
         /// The board description (platforms/<board>/board.toml), checked at build time.\n\
         pub mod board {{\n    \
         /// Board name.\n    \
         pub const NAME: &str = {:?};\n    \
         /// Physical address the image is loaded at.\n    \
         pub const LOAD_ADDRESS: u64 = {:#x};\n\n    \
         /// What a region of the physical address space is.\n    \
         #[derive(Debug, Clone, Copy, PartialEq, Eq)]\n    \
         pub enum RegionKind {{\n        \
         /// Physical RAM (contains the hyp and vm regions).\n        Ram,\n        \
         /// The hypervisor's own memory.\n        Hyp,\n        \
         /// Memory for VMs.\n        Vm,\n        \
         /// MMIO.\n        Device,\n    }}\n\n    \
         /// One region of the memory map.\n    \
         #[derive(Debug, Clone, Copy)]\n    \
         pub struct Region {{\n        \
         /// Name in board.toml.\n        pub name: &'static str,\n        \
         /// Kind.\n        pub kind: RegionKind,\n        \
         /// First byte.\n        pub base: u64,\n        \
         /// Length in bytes.\n        pub size: u64,\n    }}\n",
        board.name, board.load_address
    );
    for r in &board.regions {
        let _ = writeln!(
            s,
            "    /// The {} region `{}`.\n    pub const {}: Region = Region {{ name: {:?}, kind: RegionKind::{}, base: {:#x}, size: {:#x} }};",
            r.kind,
            r.name,
            r.name.to_uppercase(),
            r.name,
            r.kind.variant(),
            r.base,
            r.size
        );
    }
    let consts: Vec<String> = board
        .regions
        .iter()
        .map(|r| r.name.to_uppercase())
        .collect();
    let _ = writeln!(
        s,
        "\n    /// Every region, in board.toml order.\n    pub const REGIONS: &[Region] = &[{}];\n}}\n",
        consts.join(", ")
    );
    let _ = writeln!(
        s,
        "/// Guest payloads built by `cargo xtask build` and linked into the image.\n\
         pub mod payloads {{\n    \
         /// One guest binary.\n    \
         #[derive(Debug, Clone, Copy)]\n    \
         pub struct Payload {{\n        \
         /// Guest name.\n        pub name: &'static str,\n        \
         /// Flat binary, loaded at `load_ipa`.\n        pub bytes: &'static [u8],\n        \
         /// IPA of `bytes[0]`.\n        pub load_ipa: u64,\n        \
         /// Entry point (IPA).\n        pub entry: u64,\n    }}\n\n    \
         /// A payload's bytes, 16-byte aligned (`include_bytes!` gives no alignment, and\n    \
         /// the hypervisor's strict-alignment copy of an unaligned source into host RAM\n    \
         /// took a byte-shifting path: 1.2 million instructions of its boot).\n    \
         #[repr(C, align(16))]\n    \
         struct Aligned<T: ?Sized>(T);\n\n    \
         /// Every payload, in board.toml order.\n    \
         pub static ALL: &[Payload] = &["
    );
    for p in payloads {
        let _ = writeln!(
            s,
            "        Payload {{ name: {:?}, bytes: &Aligned(*include_bytes!({:?})).0, load_ipa: {:#x}, entry: {:#x} }},",
            p.name,
            p.path.display().to_string(),
            p.load_ipa,
            p.entry
        );
    }
    s.push_str("    ];\n}\n");
    s
}

/// The whole job of `crates/platform-<board>/build.rs`.
///
/// Loads and checks `platforms/<board>/board.toml`, reads the payload manifest
/// from `$HYP_PAYLOAD_DIR`, writes `$OUT_DIR/board.rs` (see [`codegen`]) and
/// `$OUT_DIR/board.ld` (linker-script symbols `LOAD_ADDRESS`, `HYP_BASE`,
/// `HYP_SIZE`; `OUT_DIR` is added to the link search path so a linker script
/// can `INCLUDE board.ld`), and prints the `cargo:` lines. If the crate has a
/// `link.ld` next to its Cargo.toml, it is passed to the linker with `-T`.
///
/// Errors are returned as messages for the build script to panic with.
pub mod build_script {
    use super::*;

    /// Runs the build script for `board` (the directory name under `platforms/`).
    pub fn run(board: &str) -> Result<(), String> {
        let env = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .ok_or_else(|| format!("{name} is not set (not running as a build script?)"))
        };
        let manifest_dir = env("CARGO_MANIFEST_DIR")?;
        let out_dir = env("OUT_DIR")?;
        let board_toml = manifest_dir
            .join("../../platforms")
            .join(board)
            .join("board.toml");
        println!("cargo:rerun-if-changed={}", board_toml.display());
        println!("cargo:rerun-if-env-changed=HYP_PAYLOAD_DIR");
        let desc = Board::load(&board_toml).map_err(|e| e.to_string())?;
        desc.check()
            .map_err(|e| format!("{}: {e}", board_toml.display()))?;

        // The crate directory, not link.ld itself: a missing file would make
        // cargo rerun this script on every build, and this notices a new link.ld.
        println!("cargo:rerun-if-changed={}", manifest_dir.display());
        let link_ld = manifest_dir.join("link.ld");
        if link_ld.exists() {
            println!("cargo:rustc-link-arg-bins=-T{}", link_ld.display());
        }
        println!("cargo:rustc-link-search=native={}", out_dir.display());
        let hyp = desc
            .hyp_region()
            .ok_or_else(|| "checked board has no hyp region".to_owned())?;
        let ld = format!(
            "/* Generated from {} by crates/board. */\nLOAD_ADDRESS = {:#x};\nHYP_BASE = {:#x};\nHYP_SIZE = {:#x};\n",
            board_toml.display(),
            desc.load_address,
            hyp.base,
            hyp.size
        );
        write(&out_dir.join("board.ld"), &ld)?;

        let payload_dir = match std::env::var_os("HYP_PAYLOAD_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                return Err(format!(
                    "build the hypervisor through `cargo xtask build --platform {board}` \
                     (HYP_PAYLOAD_DIR is unset)"
                ))
            }
        };
        if !payload_dir.is_absolute() {
            return Err(format!(
                "HYP_PAYLOAD_DIR must be an absolute directory, got {}",
                payload_dir.display()
            ));
        }
        println!(
            "cargo:rerun-if-changed={}",
            payload_dir.join(MANIFEST_FILE).display()
        );
        let manifest = Manifest::load(&payload_dir).map_err(|e| e.to_string())?;
        let mut payloads = Vec::new();
        for entry in &manifest.payloads {
            let path = payload_dir.join(&entry.file);
            println!("cargo:rerun-if-changed={}", path.display());
            if !path.is_file() {
                return Err(format!(
                    "payload `{}`: {} does not exist (rebuild with `cargo xtask build --platform {board}`)",
                    entry.name,
                    path.display()
                ));
            }
            payloads.push(Payload {
                name: entry.name.clone(),
                path,
                load_ipa: entry.load_ipa,
                entry: entry.entry,
            });
        }
        for guest in &desc.guests {
            if !manifest.payloads.iter().any(|p| &p.name == guest) {
                return Err(format!(
                    "guest `{guest}` of board.toml is missing from {} (rebuild with \
                     `cargo xtask build --platform {board}`)",
                    payload_dir.join(MANIFEST_FILE).display()
                ));
            }
        }
        write(&out_dir.join("board.rs"), &codegen(&desc, &payloads))
    }

    fn write(path: &Path, text: &str) -> Result<(), String> {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "test-board"
hyp_crate = "platform-test"
hyp_bin = "hyp-test"
hyp_target = "aarch64-unknown-none-softfloat"
guest_target = "aarch64-unknown-none"
guests = ["guest-hello"]
load_address = 0x4020_0000

[qemu]
machine = "virt"
cpu = "max"
memory = "1G"
smp = 4

[[region]]
name = "ram"
kind = "ram"
base = 0x4000_0000
size = 0x4000_0000

[[region]]
name = "hyp"
kind = "hyp"
base = 0x4000_0000
size = 0x0400_0000

[[region]]
name = "vm_pool"
kind = "vm"
base = 0x5000_0000
size = 0x3000_0000

[[region]]
name = "uart0"
kind = "device"
base = 0x0900_0000
size = 0x1000
"#;

    fn good() -> Board {
        Board::parse(GOOD, "good.toml").expect("GOOD parses")
    }

    fn region(name: &str, kind: RegionKind, base: u64, size: u64) -> Region {
        Region {
            name: name.to_owned(),
            kind,
            base,
            size,
        }
    }

    fn set(board: &mut Board, name: &str, base: u64, size: u64) {
        let r = board
            .regions
            .iter_mut()
            .find(|r| r.name == name)
            .expect("region exists");
        r.base = base;
        r.size = size;
    }

    /// Asserts the check fails and the message mentions every needle.
    fn fails(board: &Board, needles: &[&str]) {
        let err = board.check().expect_err("check must fail").to_string();
        for needle in needles {
            assert!(
                err.contains(needle),
                "error `{err}` does not mention `{needle}`"
            );
        }
    }

    #[test]
    fn good_board_passes() {
        good().check().expect("good board");
    }

    #[test]
    fn repo_boards_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../platforms");
        for name in ["qemu", "rpi4"] {
            let path = root.join(name).join("board.toml");
            let board = Board::load(&path).unwrap_or_else(|e| panic!("{e}"));
            board
                .check()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }

    #[test]
    fn cpu_is_optional() {
        let text = GOOD.replace("cpu = \"max\"\n", "");
        let board = Board::parse(&text, "x.toml").expect("parses");
        assert_eq!(board.qemu.cpu, None);
        let args = board.qemu_args(Path::new("/img"), None);
        assert!(!args.contains(&"-cpu".to_owned()));
    }

    #[test]
    fn parse_errors_name_the_file_and_field() {
        let err = Board::parse(&GOOD.replace("kind = \"vm\"", "kind = \"rom\""), "bad.toml")
            .expect_err("unknown kind");
        let msg = err.to_string();
        assert!(msg.contains("bad.toml") && msg.contains("rom"), "{msg}");
        let err = Board::parse(&GOOD.replace("smp = 4", "smp = 4\nfoo = 1"), "bad.toml")
            .expect_err("unknown field");
        assert!(err.to_string().contains("foo"), "{err}");
        let err = Board::load("/nonexistent/board.toml").expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/board.toml"), "{err}");
    }

    #[test]
    fn zero_size() {
        let mut b = good();
        set(&mut b, "uart0", 0x0900_0000, 0);
        fails(&b, &["uart0", "size 0"]);
    }

    #[test]
    fn wrap_around() {
        let mut b = good();
        set(&mut b, "uart0", 0xffff_ffff_ffff_f000, 0x2000);
        fails(&b, &["uart0", "wraps"]);
    }

    #[test]
    fn memory_alignment() {
        let mut b = good();
        set(&mut b, "vm_pool", 0x5010_0000, 0x2000_0000);
        fails(&b, &["vm_pool", "2 MiB"]);
        let mut b = good();
        set(&mut b, "ram", 0x4000_0000, 0x4010_0000);
        fails(&b, &["`ram`", "2 MiB"]);
    }

    #[test]
    fn device_alignment() {
        let mut b = good();
        set(&mut b, "uart0", 0x0900_0800, 0x1000);
        fails(&b, &["uart0", "4 KiB"]);
        let mut b = good();
        set(&mut b, "uart0", 0x0900_0000, 0x800);
        fails(&b, &["uart0", "4 KiB"]);
    }

    #[test]
    fn devices_overlap() {
        let mut b = good();
        b.regions
            .push(region("gicd", RegionKind::Device, 0x0900_0000, 0x1_0000));
        fails(&b, &["uart0", "gicd", "overlaps"]);
    }

    #[test]
    fn ram_regions_overlap() {
        let mut b = good();
        b.regions
            .push(region("ram_hi", RegionKind::Ram, 0x7000_0000, 0x2000_0000));
        fails(&b, &["`ram`", "ram_hi", "overlaps"]);
    }

    #[test]
    fn device_inside_ram() {
        let mut b = good();
        b.regions
            .push(region("mmio", RegionKind::Device, 0x4800_0000, 0x1000));
        fails(&b, &["`ram`", "mmio", "overlaps"]);
    }

    #[test]
    fn vm_regions_overlap() {
        let mut b = good();
        b.regions
            .push(region("vm_two", RegionKind::Vm, 0x6000_0000, 0x0020_0000));
        fails(&b, &["vm_pool", "vm_two", "overlaps"]);
    }

    #[test]
    fn hyp_inside_vm() {
        let mut b = good();
        set(&mut b, "vm_pool", 0x4000_0000, 0x4000_0000);
        fails(&b, &["outside every vm region", "`hyp`", "vm_pool"]);
    }

    #[test]
    fn vm_outside_ram() {
        let mut b = good();
        set(&mut b, "vm_pool", 0x8000_0000, 0x1000_0000);
        fails(&b, &["vm_pool", "inside a ram region"]);
        // Straddling the end of RAM is not inside either.
        let mut b = good();
        set(&mut b, "vm_pool", 0x7000_0000, 0x2000_0000);
        fails(&b, &["vm_pool", "inside a ram region"]);
    }

    #[test]
    fn hyp_outside_ram() {
        let mut b = good();
        set(&mut b, "hyp", 0x2000_0000, 0x0400_0000);
        b.load_address = 0x2020_0000;
        fails(&b, &["`hyp`", "inside a ram region"]);
    }

    #[test]
    fn load_address_outside_hyp() {
        let mut b = good();
        b.load_address = 0x5020_0000;
        fails(&b, &["load_address", "0x50200000", "`hyp`"]);
    }

    #[test]
    fn exactly_one_hyp_region() {
        let mut b = good();
        b.regions.retain(|r| r.kind != RegionKind::Hyp);
        fails(&b, &["no hyp region"]);
        let mut b = good();
        b.regions
            .push(region("hyp2", RegionKind::Hyp, 0x4400_0000, 0x0020_0000));
        fails(&b, &["exactly one hyp region", "hyp2"]);
    }

    #[test]
    fn region_names() {
        let mut b = good();
        b.regions[3].name = "UART".to_owned();
        fails(&b, &["UART", "[a-z]"]);
        let mut b = good();
        b.regions[3].name = "name".to_owned();
        fails(&b, &["`name`", "reserved"]);
        let mut b = good();
        b.regions[3].name = "ram".to_owned();
        fails(&b, &["two regions", "`ram`"]);
    }

    #[test]
    fn zero_smp() {
        let mut b = good();
        b.qemu.smp = 0;
        fails(&b, &["smp"]);
    }

    #[test]
    fn qemu_args() {
        let b = good();
        let args = b.qemu_args(Path::new("/x/hypervisor.img"), Some(2));
        assert_eq!(
            args,
            [
                "-M",
                "virt",
                "-cpu",
                "max",
                "-m",
                "1G",
                "-smp",
                "2",
                "-nographic",
                "-kernel",
                "/x/hypervisor.img"
            ]
        );
    }

    #[test]
    fn manifest_round_trip() {
        let m = Manifest {
            payloads: vec![ManifestEntry {
                name: "guest-hello".to_owned(),
                file: "guest \"hello\".bin".to_owned(),
                load_ipa: 0x4008_0000,
                entry: 0x4008_0040,
            }],
        };
        let text = m.to_toml();
        assert!(text.contains("load_ipa = 0x40080000"), "{text}");
        let back: Manifest = toml::from_str(&text).expect("parses");
        assert_eq!(back, m);
    }

    #[test]
    fn codegen_output() {
        let b = good();
        let src = codegen(
            &b,
            &[Payload {
                name: "guest-hello".to_owned(),
                path: PathBuf::from("/abs/guest-hello.bin"),
                load_ipa: 0x4008_0000,
                entry: 0x4008_0000,
            }],
        );
        for needle in [
            "pub const NAME: &str = \"test-board\";",
            "pub const LOAD_ADDRESS: u64 = 0x40200000;",
            "pub const VM_POOL: Region = Region { name: \"vm_pool\", kind: RegionKind::Vm, base: 0x50000000, size: 0x30000000 };",
            "pub const REGIONS: &[Region] = &[RAM, HYP, VM_POOL, UART0];",
            "include_bytes!(\"/abs/guest-hello.bin\")",
            "pub static ALL: &[Payload] = &[",
        ] {
            assert!(src.contains(needle), "missing `{needle}` in\n{src}");
        }
        // Balanced braces: a cheap well-formedness check (the real one is the platform build).
        assert_eq!(src.matches('{').count(), src.matches('}').count());
    }
}
