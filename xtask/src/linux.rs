//! External guest kernels (issue #9): `run --guest PATH`, and `linux`, which
//! fetches Debian's arm64 kernel and busybox-static through apt, builds an
//! initramfs and boots it as a guest of the host VM.
//!
//! How a kernel gets in: QEMU's generic loader (`-device loader,...,
//! force-raw=on`) puts the kernel at [`KERNEL_PA`] and the initramfs at
//! [`INITRD_PA`], in the host VM's RAM (the VM pool, 0x5000_0000..
//! 0x8000_0000) above what the host allocates guest RAM from, and the
//! hypervisor's boot arguments tell the host where they are:
//! `linux=PA,SIZE[,LOAD_IPA,ENTRY] initrd=PA,SIZE guest-smp=N
//! [guest-mem=MIB] [guest-protected] -- GUEST COMMAND LINE` (see
//! crates/host/src/linux.rs). LOAD_IPA,ENTRY come from an ELF, or from
//! `--guest-load` (checked here against guest RAM before anything boots);
//! the command line is [`BASE_CMDLINE`] plus `--guest-append`, or exactly
//! `--guest-cmdline`.

use std::io::Read;

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{kmods, note, read, run_checked, target_dir, write, Result};

/// Host PA where QEMU's loader puts the kernel.
pub const KERNEL_PA: u64 = 0x7000_0000;
/// Host PA of the initramfs.
pub const INITRD_PA: u64 = 0x7400_0000;
/// End of the host VM's RAM (board.toml's vm_pool).
const POOL_END: u64 = 0x8000_0000;
/// What the guest kernel's command line starts with: the console on the
/// emulated PL011 (and earlycon on it before the driver probes), no KASLR
/// (no seed anyway), and a panic resets the VM (SYSTEM_RESET ends the run)
/// instead of hanging until the timeout.
pub const BASE_CMDLINE: &str = "console=ttyAMA0 earlycon=pl011,0x9000000 nokaslr panic=-1";
/// Longest boot-argument string the hypervisor passes on (hyp_abi::BOOTARGS_LEN - 1).
const BOOTARGS_MAX: usize = 511;
/// IPA of guest RAM (hyp_abi::layout::RAM_IPA).
pub const GUEST_RAM_IPA: u64 = 0x4000_0000;
/// Guest RAM when `--guest-mem` is not given (the host's DEFAULT_MEM_MIB).
pub const DEFAULT_MEM_MIB: u64 = 256;
/// What the host requires of a kernel's load IPA (crates/host/src/linux.rs
/// `parse`: it copies the kernel in 8-byte words).
pub const LOAD_ALIGN: u64 = 8;

/// What to boot as the guest.
#[derive(Debug, Clone)]
pub struct GuestOpts {
    /// Kernel: an arm64 Image (raw or gzip) or an AArch64 ELF; with
    /// `load`, also a headerless raw image or an ELF linked at 0.
    pub kernel: PathBuf,
    /// Initramfs / initrd.
    pub initrd: Option<PathBuf>,
    /// Appended to [`BASE_CMDLINE`].
    pub append: Option<String>,
    /// The whole command line instead of [`BASE_CMDLINE`] and `append`.
    pub cmdline: Option<String>,
    /// Load the kernel at this IPA and enter it there: a headerless raw
    /// image, or an ELF linked at 0 (this is its base).
    pub load: Option<u64>,
    /// Guest vCPUs.
    pub smp: u32,
    /// Guest RAM in MiB (host default 256).
    pub mem_mib: Option<u64>,
    /// A protected VM (memory donated).
    pub protected: bool,
    /// A raw disk image for the host's PCI virtio-blk device, which the
    /// host serves to the guest as virtio-mmio (`--disk`; QEMU only).
    pub disk: Option<PathBuf>,
    /// A user-mode network for the host's PCI virtio-net device, which the
    /// host serves to the guest as virtio-mmio (`--net`; QEMU only):
    /// `user[,hostfwd=tcp:127.0.0.1:HPORT-:GPORT]...`.
    pub net: Option<String>,
}

/// The QEMU arguments that attach `disk` (a raw image) as a modern
/// virtio-blk PCI device behind the SMMU (the host drives it and serves it
/// to the guest as a virtio-mmio disk). It must be a regular file.
pub fn disk_qemu_args(disk: &Path) -> Result<Vec<String>> {
    let meta = std::fs::metadata(disk).map_err(|e| format!("--disk {}: {e}", disk.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "--disk {}: not a regular file (give a raw disk image)",
            disk.display()
        ));
    }
    // Absolute: QEMU may run elsewhere (the tests run it from tests/).
    let path = std::fs::canonicalize(disk)
        .map_err(|e| format!("--disk {}: {e}", disk.display()))?
        .display()
        .to_string();
    if path.contains(',') {
        return Err(format!(
            "--disk {path}: QEMU's -drive cannot take a path with a comma"
        ));
    }
    Ok(vec![
        "-drive".to_owned(),
        format!("file={path},if=none,format=raw,id=disk0"),
        "-device".to_owned(),
        "virtio-blk-pci,drive=disk0,iommu_platform=on,disable-legacy=on".to_owned(),
    ])
}

/// The QEMU arguments for `--net SPEC`: `user`, then any number of
/// `,hostfwd=tcp:127.0.0.1:HPORT-:GPORT` (a TCP port of the host's
/// loopback forwarded to the guest's GPORT; only 127.0.0.1, so nothing
/// outside this machine reaches the guest), as QEMU's user-mode network
/// (slirp: the guest gets 10.0.2.15 by DHCP, the host is 10.0.2.2) behind a
/// modern virtio-net PCI device behind the SMMU, which the host drives and
/// serves to the guest as a virtio-mmio network device.
pub fn net_qemu_args(spec: &str) -> Result<Vec<String>> {
    let bad = |why: &str| {
        Err(format!(
            "--net {spec:?}: {why} (expected user[,hostfwd=tcp:127.0.0.1:HPORT-:GPORT]...)"
        ))
    };
    let mut parts = spec.split(',');
    if parts.next() != Some("user") {
        return bad("only the user-mode network is supported");
    }
    let mut netdev = "user,id=net0".to_owned();
    let mut seen = std::collections::BTreeSet::new();
    for p in parts {
        let Some(fwd) = p.strip_prefix("hostfwd=") else {
            return bad(&format!("unknown option {p:?}"));
        };
        let Some(rest) = fwd.strip_prefix("tcp:") else {
            return bad(&format!("{p:?}: only tcp forwards"));
        };
        let Some(rest) = rest.strip_prefix("127.0.0.1:") else {
            return bad(&format!(
                "{p:?}: the host side must be 127.0.0.1 (no other address is forwarded)"
            ));
        };
        let Some((host, guest)) = rest.split_once("-:") else {
            return bad(&format!("{p:?}: no \"-:GPORT\""));
        };
        let port = |s: &str| s.parse::<u16>().ok().filter(|&n| n != 0);
        let (Some(h), Some(g)) = (port(host), port(guest)) else {
            return bad(&format!("{p:?}: ports are 1 to 65535"));
        };
        if !seen.insert(h) {
            return bad(&format!("host port {h} is forwarded twice"));
        }
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
    }
    Ok(vec![
        "-netdev".to_owned(),
        netdev,
        "-device".to_owned(),
        "virtio-net-pci,netdev=net0,iommu_platform=on,disable-legacy=on".to_owned(),
    ])
}

/// QEMU arguments and hypervisor boot arguments for a guest.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `-device loader,...` arguments.
    pub qemu_args: Vec<String>,
    /// The hypervisor's `-append` (host words, then ` -- ` and the guest's command line).
    pub bootargs: String,
    /// The unpacked (or flattened) kernel the loader puts in memory:
    /// target/guest/kernel-HASH.bin, HASH from the kernel's path, so guests
    /// prepared from different kernels (the test step's Debian and built
    /// ones) do not overwrite each other's.
    pub kernel_file: PathBuf,
}

/// A flattened ELF kernel's link-time placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ElfPlace {
    /// Lowest PT_LOAD physical address.
    load: u64,
    /// `e_entry`.
    entry: u64,
    /// Bytes it occupies in memory from `load` (BSS included).
    mem_size: u64,
}

/// The kernel file as the host loads it: (bytes, the ELF's placement for an
/// ELF); anything else must be an arm64 Image unless `raw_ok` (`--guest-load`).
fn kernel_bytes(path: &Path, raw_ok: bool) -> Result<(Vec<u8>, Option<ElfPlace>)> {
    let mut data = read(path)?;
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: gzip: {e}", path.display()))?;
        note(&format!(
            "{}: gzip-compressed, {} bytes unpacked",
            path.display(),
            out.len()
        ));
        data = out;
    }
    if data.starts_with(b"\x7fELF") {
        let flat =
            crate::flat::elf_to_flat(&data).map_err(|e| format!("{}: {e}", path.display()))?;
        let place = ElfPlace {
            load: flat.load_addr,
            entry: flat.entry,
            mem_size: flat.mem_end - flat.load_addr,
        };
        return Ok((flat.bytes, Some(place)));
    }
    if data.is_empty() {
        return Err(format!("{}: empty file", path.display()));
    }
    if !raw_ok && (data.len() < 64 || &data[56..60] != b"ARM\x64") {
        return Err(format!(
            "{}: neither an arm64 Image (no \"ARM\\x64\" magic at offset 56) nor an ELF; \
             give --guest-load ADDR to load it as a raw image at IPA ADDR",
            path.display()
        ));
    }
    Ok((data, None))
}

/// Where the host puts the kernel and enters it: `(load IPA, entry)`, or
/// `None` for an arm64 Image placed by its header. `size` is the file's
/// bytes as loaded, `load` is `--guest-load`, `mem_mib` the guest's RAM.
/// Checks what crates/host/src/linux.rs `parse` checks (and a little more),
/// so a bad address is an error here rather than a failed boot: the kernel
/// lies inside the lower half of guest RAM (the initrd and the device tree
/// use the upper half), at an 8-byte aligned IPA, and its entry inside it.
fn placement(
    size: u64,
    elf: Option<ElfPlace>,
    load: Option<u64>,
    mem_mib: u64,
) -> Result<Option<(u64, u64)>> {
    let (load, entry, mem_size) = match (elf, load) {
        (None, None) => return Ok(None),
        (None, Some(addr)) => (addr, addr, size),
        (Some(e), None) if e.load == 0 => return Err(
            "the ELF is linked at address 0: give --guest-load ADDR, the guest IPA to load it at"
                .to_owned(),
        ),
        (Some(e), None) => (e.load, e.entry, e.mem_size),
        (Some(e), Some(addr)) if e.load == 0 || e.load == addr => {
            let entry = e
                .entry
                .checked_sub(e.load)
                .and_then(|off| addr.checked_add(off))
                .ok_or_else(|| format!("the ELF's entry {:#x} is out of range", e.entry))?;
            (addr, entry, e.mem_size)
        }
        (Some(e), Some(addr)) => {
            return Err(format!(
                "--guest-load {addr:#x}: the ELF is linked at {:#x}; --guest-load takes a raw \
                 image or an ELF linked at 0 (or at ADDR itself)",
                e.load
            ))
        }
    };
    let what = format!(
        "{} at IPA {load:#x}",
        if elf.is_some() {
            "the ELF"
        } else {
            "the raw image"
        }
    );
    if load % LOAD_ALIGN != 0 {
        return Err(format!(
            "{what}: the load address must be {LOAD_ALIGN}-byte aligned"
        ));
    }
    if entry % 4 != 0 {
        return Err(format!(
            "{what}: its entry {entry:#x} is not 4-byte aligned"
        ));
    }
    let half = GUEST_RAM_IPA + (mem_mib << 20) / 2;
    let end = load.checked_add(mem_size.max(size));
    if load < GUEST_RAM_IPA || end.is_none_or(|e| e > half) {
        return Err(format!(
            "{what} ({:#x} bytes) is not inside the lower half of guest RAM, \
             {GUEST_RAM_IPA:#x}..{half:#x} ({mem_mib} MiB at {GUEST_RAM_IPA:#x}; the initrd and \
             the device tree go in the upper half): choose ADDR in that range{}",
            mem_size.max(size),
            if load >= GUEST_RAM_IPA {
                ", or give more --guest-mem"
            } else {
                ""
            }
        ));
    }
    if entry < load || entry >= load + mem_size.max(size) {
        return Err(format!("{what}: its entry {entry:#x} is outside it"));
    }
    Ok(Some((load, entry)))
}

/// Prepares the kernel (unpacked or flattened copies go to `target/guest/`)
/// and the loader arguments; `host_extra` are the user's own hypervisor
/// arguments (`--append`).
pub fn prepare(g: &GuestOpts, host_extra: Option<&str>) -> Result<Prepared> {
    // The network's syntax first: a bad --net fails before any file is read.
    let net_args = g
        .net
        .as_deref()
        .map(net_qemu_args)
        .transpose()?
        .unwrap_or_default();
    let dir = target_dir().join("guest");
    let (bytes, elf) = kernel_bytes(&g.kernel, g.load.is_some())?;
    let place = placement(
        bytes.len() as u64,
        elf,
        g.load,
        g.mem_mib.unwrap_or(DEFAULT_MEM_MIB),
    )
    .map_err(|e| format!("{}: {e}", g.kernel.display()))?;
    let path_sum = sha2::Sha256::digest(g.kernel.as_os_str().as_encoded_bytes());
    let kernel_file = dir.join(format!(
        "kernel-{}.bin",
        path_sum[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    write(&kernel_file, &bytes)?;
    let ksize = bytes.len() as u64;
    if ksize > INITRD_PA - KERNEL_PA {
        return Err(format!(
            "the kernel is {ksize} bytes; at most {} fit",
            INITRD_PA - KERNEL_PA
        ));
    }
    let mut qemu_args = vec![
        "-device".to_owned(),
        format!(
            "loader,file={},addr={KERNEL_PA:#x},force-raw=on",
            kernel_file.display()
        ),
    ];
    let mut host = match place {
        Some((load, entry)) => format!("linux={KERNEL_PA:#x},{ksize:#x},{load:#x},{entry:#x}"),
        None => format!("linux={KERNEL_PA:#x},{ksize:#x}"),
    };
    if let Some(initrd) = &g.initrd {
        let size = std::fs::metadata(initrd)
            .map_err(|e| format!("{}: {e}", initrd.display()))?
            .len();
        if size > POOL_END - INITRD_PA {
            return Err(format!(
                "the initrd is {size} bytes; at most {} fit",
                POOL_END - INITRD_PA
            ));
        }
        qemu_args.extend([
            "-device".to_owned(),
            format!(
                "loader,file={},addr={INITRD_PA:#x},force-raw=on",
                initrd.display()
            ),
        ]);
        host.push_str(&format!(" initrd={INITRD_PA:#x},{size:#x}"));
    }
    if let Some(disk) = &g.disk {
        qemu_args.extend(disk_qemu_args(disk)?);
    }
    qemu_args.extend(net_args);
    host.push_str(&format!(" guest-smp={}", g.smp));
    if let Some(m) = g.mem_mib {
        host.push_str(&format!(" guest-mem={m}"));
    }
    if g.protected {
        host.push_str(" guest-protected");
    }
    if let Some(extra) = host_extra {
        host.push(' ');
        host.push_str(extra);
    }
    let cmdline = guest_cmdline(g)?;
    let bootargs = format!("{host} -- {cmdline}");
    if bootargs.len() > BOOTARGS_MAX {
        return Err(format!(
            "boot arguments are {} bytes, at most {BOOTARGS_MAX}: {bootargs}",
            bootargs.len()
        ));
    }
    Ok(Prepared {
        qemu_args,
        bootargs,
        kernel_file,
    })
}

/// The guest kernel's command line: `--guest-cmdline` exactly, or
/// [`BASE_CMDLINE`] and `--guest-append`.
fn guest_cmdline(g: &GuestOpts) -> Result<String> {
    match (&g.cmdline, &g.append) {
        (Some(_), Some(_)) => Err("--guest-cmdline and --guest-append exclude each other".into()),
        (Some(c), None) => {
            // The host takes everything after " -- ", trimmed.
            if c.trim() != c {
                return Err(format!(
                    "--guest-cmdline {c:?}: leading or trailing whitespace would not reach the guest"
                ));
            }
            if c.contains('\0') {
                return Err(format!("--guest-cmdline {c:?}: a NUL cannot be passed on"));
            }
            Ok(c.clone())
        }
        (None, append) => {
            let mut cmdline = BASE_CMDLINE.to_owned();
            if let Some(a) = append {
                cmdline.push(' ');
                cmdline.push_str(a);
            }
            Ok(cmdline)
        }
    }
}

/// What `fetch` found: Debian's kernel, its config and busybox.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// /boot/vmlinuz-VERSION.
    pub kernel: PathBuf,
    /// /boot/config-VERSION.
    pub config: PathBuf,
    /// /bin/busybox from busybox-static.
    pub busybox: PathBuf,
    /// The kernel package's version string (e.g. 6.1.0-50-arm64).
    pub version: String,
    /// The kernel package itself (its modules are read from it).
    pub deb: PathBuf,
}

pub fn cache_dir() -> PathBuf {
    target_dir().join("linux-cache")
}

/// apt options that keep every file in `dir` (lists, cache, status) and use
/// only Debian's arm64 archive: the system's apt state is untouched.
fn apt_opts(dir: &Path) -> Vec<String> {
    let d = |p: &str| dir.join(p).display().to_string();
    vec![
        "-oAPT::Architecture=arm64".into(),
        "-oAPT::Architectures=arm64".into(),
        format!("-oDir::Etc::SourceList={}", d("sources.list")),
        format!("-oDir::Etc::SourceParts={}", d("sources.list.d")),
        format!("-oDir::State::Lists={}", d("lists")),
        format!("-oDir::State::status={}", d("status")),
        format!("-oDir::Cache={}", d("cache")),
        "-oDebug::NoLocking=1".into(),
        "-oAPT::Sandbox::User=root".into(),
        "-oAcquire::Languages=none".into(),
        "-qq".into(),
    ]
}

/// A private apt state in `dir` (see [`apt_opts`]) whose sources are
/// Debian's arm64 `suites` (archive, suite: `("debian", "bookworm")`,
/// `("debian-security", "bookworm-security")`), with fresh package lists;
/// returns the options that use it.
pub fn apt_state(dir: &Path, suites: &[(&str, String)]) -> Result<Vec<String>> {
    for d in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write(&dir.join("status"), b"")?;
    let mut sources = String::new();
    for (archive, suite) in suites {
        sources.push_str(&format!(
            "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/{archive} {suite} main\n"
        ));
    }
    write(&dir.join("sources.list"), sources.as_bytes())?;
    let opts = apt_opts(dir);
    let names: Vec<&str> = suites.iter().map(|(_, s)| s.as_str()).collect();
    note(&format!(
        "linux: fetching Debian {} arm64 package lists into {}",
        names.join(", "),
        dir.display()
    ));
    run_checked(Command::new("apt-get").args(&opts).arg("update"))?;
    Ok(opts)
}

/// What `cmd` prints on stdout; its stderr in the error if it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last (by name) entry of `dir` whose file name `keep` accepts.
fn last_named(dir: &Path, keep: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&keep))
        .collect();
    found.sort();
    found.pop()
}

fn find_boot(root: &Path, prefix: &str) -> Option<PathBuf> {
    last_named(&root.join("boot"), |n| n.starts_with(prefix))
}

/// Downloads (once; later runs use the cache in target/linux-cache and
/// need no network) Debian's current arm64 kernel package (the one
/// `linux-image-arm64` depends on) and `busybox-static` for arm64, and
/// unpacks the kernel's /boot and /bin/busybox.
pub fn fetch() -> Result<Fetched> {
    let cache = cache_dir();
    let root = cache.join("root");
    let busybox = root.join("bin").join("busybox");
    if let (Some(kernel), Some(config), true) = (
        find_boot(&root, "vmlinuz-"),
        find_boot(&root, "config-"),
        busybox.exists(),
    ) {
        let version = kernel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or("?")
            .to_owned();
        if let Some(deb) = kernel_deb(&cache.join("debs"), &version) {
            note(&format!(
                "linux: cached Debian kernel {version} and busybox in {}",
                cache.display()
            ));
            return Ok(Fetched {
                kernel,
                config,
                busybox,
                version,
                deb,
            });
        }
    }
    let suite = debian_suite();
    let opts = apt_state(&cache.join("apt"), &[("debian", suite.clone())])?;
    let deps = output(
        Command::new("apt-cache")
            .args(&opts)
            .args(["depends", "linux-image-arm64"]),
    )?;
    let image_pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-arm64"))
        .ok_or_else(|| {
            format!("no linux-image-*-arm64 in `apt-cache depends linux-image-arm64`:\n{deps}")
        })?
        .to_owned();
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    note(&format!(
        "linux: downloading {image_pkg} and busybox-static"
    ));
    run_checked(
        Command::new("apt-get")
            .args(&opts)
            .args(["download", &image_pkg, "busybox-static"])
            .current_dir(&debs),
    )?;
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    for entry in std::fs::read_dir(&debs).map_err(|e| format!("{}: {e}", debs.display()))? {
        let deb = entry.map_err(|e| e.to_string())?.path();
        let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Only the parts used: the kernel's /boot (not its ~400 MB of
        // modules) and busybox itself.
        let member = if name.starts_with("linux-image-") {
            "./boot"
        } else if name.starts_with("busybox-static") {
            "./bin/busybox"
        } else {
            continue;
        };
        run_checked(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' '{member}'",
            deb.display(),
            root.display()
        )))?;
    }
    let kernel = find_boot(&root, "vmlinuz-").ok_or("the kernel package has no /boot/vmlinuz-*")?;
    let config = find_boot(&root, "config-").ok_or("the kernel package has no /boot/config-*")?;
    if !busybox.exists() {
        return Err("busybox-static has no /bin/busybox".into());
    }
    let version = image_pkg
        .strip_prefix("linux-image-")
        .unwrap_or(&image_pkg)
        .to_owned();
    let deb = kernel_deb(&debs, &version)
        .ok_or_else(|| format!("no {image_pkg}_*.deb in {}", debs.display()))?;
    Ok(Fetched {
        kernel,
        config,
        busybox,
        version,
        deb,
    })
}

/// The downloaded kernel package for `version` in `debs`.
fn kernel_deb(debs: &Path, version: &str) -> Option<PathBuf> {
    let prefix = format!("linux-image-{version}_");
    last_named(debs, |n| n.starts_with(&prefix) && n.ends_with(".deb"))
}

/// The Debian suite to fetch from: this machine's (VERSION_CODENAME in
/// /etc/os-release), else bookworm.
pub fn debian_suite() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".to_owned())
}

/// What the kernel config says about pKVM guest support: the lines
/// mentioning PKVM, and whether CONFIG_ARM_PKVM_GUEST=y.
pub fn pkvm_config(config: &Path) -> Result<(bool, Vec<String>)> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains("PKVM") || l.starts_with("CONFIG_VIRT_DRIVERS"))
        .map(str::to_owned)
        .collect();
    let guest = text.lines().any(|l| l.trim() == "CONFIG_ARM_PKVM_GUEST=y");
    Ok((guest, lines))
}

/// The guest command-line word that makes /init run [`INIT_SCRIPT`]'s
/// check (tests/tests/linux_guest.rs appends it) instead of a shell.
#[cfg(test)]
const CHECK_WORD: &str = "hyp.init=check";

/// The word that makes /init check the disk (`--disk`): mount /dev/vda,
/// verify hello.txt, write marker.txt, power off.
#[cfg(test)]
const DISK_WORD: &str = "hyp.init=disk";

/// The word that makes /init bring up the network (`--net`): DHCP on
/// eth0, serve /www/file.bin with httpd on port 8080, fetch
/// `http://10.0.2.2:PORT/in.bin` for `hyp.net.fetch=PORT`, then wait for a
/// line on the console and power off.
#[cfg(test)]
const NET_WORD: &str = "hyp.init=net";

/// udhcpc's script (`udhcpc -s`): configures the interface from what the
/// DHCP server gave (udhcpc's environment: `interface`, `ip`, `mask` as a
/// prefix length, `router`, `dns`).
const UDHCPC_SCRIPT: &str = "#!/bin/sh
case \"$1\" in
deconfig)
    ip addr flush dev \"$interface\"
    ip link set \"$interface\" up
    ;;
bound|renew)
    ip addr flush dev \"$interface\"
    ip addr add \"$ip/${mask:-24}\" dev \"$interface\"
    for r in $router; do
        ip route add default via \"$r\" dev \"$interface\"
        break
    done
    : > /etc/resolv.conf
    for d in $dns; do echo \"nameserver $d\" >> /etc/resolv.conf; done
    ;;
esac
exit 0
";

/// Where /init finds [`UDHCPC_SCRIPT`].
const UDHCPC_SCRIPT_PATH: &str = "bin/udhcpc.script";

/// /init: mounts /proc, /sys and /dev, installs busybox's applets, executes
/// the insn-count plugin's marker 7 (`hyp-mark 7`, a NOP to the CPU: where
/// `cargo xtask bench --linux-boot` reads its count), prints
/// the marker `LINUX-GUEST-INIT-OK` (also into the kernel log, where it gets
/// a timestamp for boot timing), then loads the kernel modules listed in
/// [`kmods::LOAD_ORDER`] with insmod (dependencies first) and prints one
/// `LINUX-GUEST-MODULES:` line. With [`CHECK_WORD`] on the kernel's command
/// line it runs a few commands and powers off; with [`DISK_WORD`] it mounts
/// /dev/vda (ext4), checks hello.txt against hello.sha256, writes
/// marker.txt with the boot count, unmounts and powers off; with
/// [`NET_WORD`] it takes eth0's address by DHCP (`udhcpc` with
/// [`UDHCPC_SCRIPT`]), serves 1 MiB of random bytes as /www/file.bin with
/// `httpd -p 8080`, fetches `in.bin` from the host's port
/// `hyp.net.fetch=PORT` (10.0.2.2 in QEMU's user network) with `wget`,
/// prints each step's `LINUX-NET:` line (addresses, sha256 sums), then
/// waits for a line on the console and powers off; otherwise it
/// starts an interactive shell on the console (`setsid cttyhack`: the
/// console becomes the shell's controlling terminal, so Ctrl-C and job
/// control work) and powers the VM off when the shell exits. `reboot -f` in
/// the shell is PSCI SYSTEM_RESET: the host restarts the VM.
const INIT_SCRIPT: &str = "#!/bin/sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
/bin/hyp-mark 7 2>/dev/null
echo LINUX-GUEST-INIT-OK
echo LINUX-GUEST-INIT-OK > /dev/kmsg
loaded=
failed=
for m in $(cat /lib/modules/load-order 2>/dev/null); do
    n=${m##*/}
    n=${n%.ko}
    if insmod \"$m\"; then loaded=\"$loaded $n\"; else failed=\"$failed $n\"; fi
done
if [ -n \"$failed\" ]; then
    echo \"LINUX-GUEST-MODULES: FAILED$failed (loaded:$loaded)\"
else
    echo \"LINUX-GUEST-MODULES: loaded$loaded\"
fi
case \" $(cat /proc/cmdline) \" in
*\" hyp.init=check \"*)
    uname -a
    echo \"cpus online: $(cat /sys/devices/system/cpu/online)\"
    cat /proc/interrupts
    # Linux 6.12 lists a pseudo-entry \"none\" beside the real generators.
    avail=$(echo $(tr ' ' '\\n' < /sys/class/misc/hw_random/rng_available 2>/dev/null | grep -vx none))
    echo \"LINUX-TRNG: ${avail:-none}, read $(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | wc -c) bytes\"
    echo LINUX-GUEST-DONE
    poweroff -f
    ;;
*\" hyp.init=disk \"*)
    # The disk appears when virtio_blk probes it; wait at most 5 s.
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -b /dev/vda ]; then
        devs=$(ls /sys/bus/virtio/devices 2>/dev/null | tr '\\n' ' ')
        echo \"LINUX-DISK: FAILED no /dev/vda (virtio devices: ${devs:-none})\"
    elif ! mount -t ext4 /dev/vda /mnt; then
        echo \"LINUX-DISK: FAILED cannot mount /dev/vda as ext4\"
    else
        if (cd /mnt && sha256sum -c hello.sha256); then
            echo \"LINUX-DISK: hello.txt OK\"
        else
            echo \"LINUX-DISK: FAILED hello.txt does not match hello.sha256\"
        fi
        echo \"written by the guest at boot $(tr -d '\\000' < /proc/device-tree/chosen/hyp,boot-count)\" > /mnt/marker.txt
        sync
        umount /mnt || echo \"LINUX-DISK: FAILED umount /mnt\"
    fi
    echo LINUX-DISK-DONE
    poweroff -f
    ;;
*\" hyp.init=net \"*)
    # eth0 appears when virtio_net probes the device; wait at most 5 s.
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    ip link set eth0 up
    if udhcpc -i eth0 -n -q -t 5 -T 2 -s /bin/udhcpc.script; then
        echo \"LINUX-NET: eth0 $(ip -4 -o addr show dev eth0 | awk '{print $4}')\"
    else
        echo \"LINUX-NET: FAILED no DHCP lease on eth0\"
    fi
    mkdir -p /www
    dd if=/dev/urandom of=/www/file.bin bs=1024 count=1024 2>/dev/null
    echo \"LINUX-NET: serving $(sha256sum /www/file.bin | cut -d' ' -f1)\"
    httpd -p 8080 -h /www
    port=
    for w in $(cat /proc/cmdline); do
        if [ \"${w#hyp.net.fetch=}\" != \"$w\" ]; then port=${w#hyp.net.fetch=}; fi
    done
    if [ -n \"$port\" ]; then
        t0=$(cut -d' ' -f1 /proc/uptime)
        # Bounded by timeout(1): busybox 1.35's wget crashes (SIGSEGV) with -T.
        if timeout 30 wget -O /tmp/in.bin \"http://10.0.2.2:$port/in.bin\"; then
            t1=$(cut -d' ' -f1 /proc/uptime)
            echo \"LINUX-NET: fetched $(sha256sum /tmp/in.bin | cut -d' ' -f1)\"
            echo \"LINUX-NET: fetch of $(wc -c < /tmp/in.bin) bytes took $(awk \"BEGIN { print $t1 - $t0 }\") s\"
        else
            echo \"LINUX-NET: FAILED wget http://10.0.2.2:$port/in.bin\"
        fi
    fi
    echo \"LINUX-NET: waiting; type a line to power off\"
    read -r _line
    echo LINUX-NET-DONE
    poweroff -f
    ;;
*\" hyp.init=secret \"*)
    # Issue 19 item 6: a secret from the hypervisor's TRNG kept in private
    # memory (a file in the initramfs's RAM and this shell's variable)
    # while big.bin goes from the disk to the network.
    i=0
    while { [ ! -b /dev/vda ] || [ ! -e /sys/class/net/eth0 ]; } && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    ip link set eth0 up
    udhcpc -i eth0 -n -q -t 5 -T 2 -s /bin/udhcpc.script || echo \"LINUX-SECRET: FAILED no DHCP lease on eth0\"
    mount -t ext4 -o ro /dev/vda /mnt || echo \"LINUX-SECRET: FAILED cannot mount /dev/vda\"
    secret=
    if dd if=/dev/hwrng of=/secret.bin bs=32 count=1 2>/dev/null && [ \"$(stat -c %s /secret.bin)\" = 32 ]; then
        secret=$(od -An -tx1 /secret.bin | tr -d ' \\n')
        echo \"LINUX-SECRET: committed $(sha256sum /secret.bin | cut -d' ' -f1)\"
    else
        echo \"LINUX-SECRET: FAILED no 32 bytes from /dev/hwrng\"
    fi
    httpd -p 8080 -h /mnt
    echo \"LINUX-SECRET: serving big.bin, $(stat -c %s /mnt/big.bin) bytes; type a line to reveal the secret and power off\"
    read -r _line
    echo \"LINUX-SECRET: reveal $secret\"
    poweroff -f
    ;;
esac
echo \"LINUX-GUEST-SHELL: busybox sh on $(cat /sys/class/tty/console/active); 'poweroff -f' stops the VM, 'reboot -f' restarts it\"
setsid cttyhack sh -l
poweroff -f
";

/// The applets /init needs before `busybox --install` (symlinks in /bin).
const APPLETS: &[&str] = &["sh"];

/// A newc ("070701") cpio archive, the initramfs format
/// (Documentation/driver-api/early-userspace/buffer-format.rst).
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn pad4(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad4();
        self.out.extend_from_slice(data);
        self.pad4();
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    /// A symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    /// A character device.
    pub fn chardev(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | mode, (major, minor), &[]);
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // The kernel reads the initramfs in 512-byte blocks' worth; pad.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

/// Builds the initramfs (busybox, /init, /dev/console and, `with_modules`,
/// the Debian kernel's modules of [`kmods::ROOT_MODULES`] with their
/// dependencies, a `modules.dep` and the load order) into target/linux-cache
/// (`initramfs.cpio`, or `initramfs-nomodules.cpio` for a kernel with
/// everything built in, whose /init then loads nothing).
pub fn initramfs(f: &Fetched, with_modules: bool) -> Result<PathBuf> {
    let cache = cache_dir();
    let sel = if with_modules {
        let sel = kmods::select(&f.deb, &cache, &cache.join("root"))?;
        note(&format!(
            "linux: initramfs modules (load order): {}",
            sel.names.join(" ")
        ));
        Some(sel)
    } else {
        None
    };
    let mut c = Cpio::default();
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "root", "mnt"] {
        c.dir(d);
    }
    c.chardev("dev/console", 0o600, 5, 1);
    c.file("bin/busybox", 0o755, &read(&f.busybox)?);
    if let Some(sel) = &sel {
        // The modules' directories, parents first (the kernel's unpacker
        // does not create missing ones).
        let mut dirs = std::collections::BTreeSet::new();
        for (p, _) in &sel.modules {
            let mut d = Path::new(p).parent();
            while let Some(x) = d.filter(|x| !x.as_os_str().is_empty()) {
                dirs.insert(x.display().to_string());
                d = x.parent();
            }
        }
        dirs.insert(format!("lib/modules/{}", f.version));
        for d in &dirs {
            c.dir(d);
        }
        for (p, data) in &sel.modules {
            c.file(p, 0o644, data);
        }
        c.file(
            &format!("lib/modules/{}/modules.dep", f.version),
            0o644,
            sel.modules_dep.as_bytes(),
        );
        c.file(kmods::LOAD_ORDER, 0o644, sel.load_order.as_bytes());
    }
    for a in APPLETS {
        c.symlink(&format!("bin/{a}"), "busybox");
    }
    c.file(UDHCPC_SCRIPT_PATH, 0o755, UDHCPC_SCRIPT.as_bytes());
    // The insn-count plugin's marker (benches bracket their work with it).
    c.file("bin/hyp-mark", 0o755, &crate::insncount::mark_program()?);
    c.file("init", 0o755, INIT_SCRIPT.as_bytes());
    let path = cache.join(if with_modules {
        "initramfs.cpio"
    } else {
        "initramfs-nomodules.cpio"
    });
    write(&path, &c.finish())?;
    Ok(path)
}

/// The test disk's `hello.txt`: 64 KiB of deterministic bytes (xorshift64
/// from a fixed seed), so a wrong or misplaced block shows in its checksum.
pub fn hello_bytes() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(64 << 10);
    while out.len() < 64 << 10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Makes a fresh ext4 test disk, target/linux-cache/test-disk.img (16 MiB),
/// holding `hello.txt` ([`hello_bytes`]) and `hello.sha256` (its
/// `sha256sum` line), with e2fsprogs' `mkfs.ext4 -d`. The guest's
/// `hyp.init=disk` check verifies one and writes `marker.txt`, which
/// [`read_disk_file`] reads back.
pub fn make_test_disk() -> Result<PathBuf> {
    let cache = cache_dir();
    let img = cache.join("test-disk.img");
    make_disk_at(&cache.join("test-disk"), &img)?;
    Ok(img)
}

/// [`make_test_disk`] into `img`, its files staged in `dir`.
fn make_disk_at(dir: &Path, img: &Path) -> Result<()> {
    stage_dir(dir)?;
    write(&dir.join("hello.txt"), &hello_bytes())?;
    let sum = output(Command::new("sha256sum").arg("hello.txt").current_dir(dir))?;
    write(&dir.join("hello.sha256"), sum.as_bytes())?;
    mkfs(dir, img, "16M")
}

/// An empty staging directory `dir` (and no `img` yet).
fn stage_dir(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// `mkfs.ext4 -d dir img size`: a fresh ext4 image holding `dir`'s files.
fn mkfs(dir: &Path, img: &Path, size: &str) -> Result<()> {
    let (mkfs, _) = crate::provision::e2fsprogs()?;
    let _ = std::fs::remove_file(img);
    run_checked(
        Command::new(mkfs)
            .args(["-q", "-F", "-d"])
            .arg(dir)
            .arg(img)
            .arg(size),
    )
}

/// Size of the big disk's `big.bin`.
pub const BIG_FILE: usize = 32 << 20;

/// Makes a fresh ext4 disk, target/linux-cache/big-disk.img (48 MiB),
/// holding `big.bin`: [`BIG_FILE`] bytes of xorshift64 output. The
/// protected-Linux secret test (`hyp.init=secret`) serves it from the
/// disk to the network while the host probes the VM's memory.
pub fn make_big_disk() -> Result<PathBuf> {
    let cache = cache_dir();
    let (dir, img) = (cache.join("big-disk"), cache.join("big-disk.img"));
    stage_dir(&dir)?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut big = Vec::with_capacity(BIG_FILE);
    while big.len() < BIG_FILE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    write(&dir.join("big.bin"), &big)?;
    mkfs(&dir, &img, "48M")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(img)
}

/// A file of an ext4 image, read with `debugfs -R 'cat PATH'` (no mount).
pub fn read_disk_file(img: &Path, path: &str) -> Result<Vec<u8>> {
    let (_, debugfs) = crate::provision::e2fsprogs()?;
    let out = Command::new(debugfs)
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(img)
        .output()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    // debugfs exits 0 even when the file or the file system is missing;
    // then it says so on stderr, after its banner ("debugfs 1.47.0 ...").
    if !out.status.success() || err.lines().any(|l| !l.starts_with("debugfs ")) {
        return Err(format!(
            "debugfs -R 'cat {path}' {}: {}",
            img.display(),
            err.trim()
        ));
    }
    Ok(out.stdout)
}

/// Which kernel `cargo xtask linux` boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelSource {
    /// Debian's arm64 kernel package, its modules in the initramfs.
    Debian,
    /// The project's own, built from Debian's linux-source-6.12 with
    /// platforms/linux/guest.config (the pKVM guest driver, restricted DMA
    /// pools; everything built in).
    Built,
}

/// A guest kernel ready to boot: the kernel, its config and initramfs.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The kernel image.
    pub image: PathBuf,
    /// Its .config.
    pub config: PathBuf,
    /// What it is, for progress lines.
    pub version: String,
    /// The initramfs for it (busybox, /init and, for Debian's, the modules).
    pub initrd: PathBuf,
}

impl Kernel {
    /// A normal VM of `smp` vCPUs booting this kernel and its initramfs with
    /// the base command line, the default RAM and no devices.
    pub fn guest(&self, smp: u32) -> GuestOpts {
        GuestOpts {
            kernel: self.image.clone(),
            initrd: Some(self.initrd.clone()),
            append: None,
            cmdline: None,
            load: None,
            smp,
            mem_mib: None,
            protected: false,
            disk: None,
            net: None,
        }
    }
}

/// Fetches busybox (and Debian's kernel) or builds the project's kernel,
/// builds the initramfs for it and says whether the kernel has the pKVM
/// guest driver.
pub fn kernel(src: KernelSource) -> Result<Kernel> {
    let fetched = fetch()?;
    let k = match src {
        KernelSource::Debian => Kernel {
            image: fetched.kernel.clone(),
            config: fetched.config.clone(),
            version: format!("Debian {}", fetched.version),
            initrd: initramfs(&fetched, true)?,
        },
        KernelSource::Built => {
            let b = crate::kbuild::build()?;
            Kernel {
                image: b.image,
                config: b.config,
                version: format!("{} (built from linux-source {})", b.release, b.version),
                initrd: initramfs(&fetched, false)?,
            }
        }
    };
    let (guest_driver, lines) = pkvm_config(&k.config)?;
    note(&format!(
        "linux: kernel {} ({}); pKVM guest driver (CONFIG_ARM_PKVM_GUEST): {}; config lines: {}",
        k.version,
        k.image.display(),
        if guest_driver { "built in" } else { "absent" },
        if lines.is_empty() {
            "none mention PKVM".to_owned()
        } else {
            lines.join(", ")
        }
    ));
    Ok(k)
}

/// Everything `cargo xtask linux` and the test step need: the kernel and
/// its initramfs, and the prepared guest.
pub struct LinuxGuest {
    /// The kernel and its initramfs.
    pub kernel: Kernel,
    /// The prepared guest (loader arguments and boot arguments).
    pub prepared: Prepared,
    /// What it was prepared from.
    opts: GuestOpts,
}

impl LinuxGuest {
    /// The same guest prepared with other hypervisor words (another
    /// board's `hyp.cpus=N`, say).
    pub fn prepare_with(&self, host_extra: Option<&str>) -> Result<Prepared> {
        prepare(&self.opts, host_extra)
    }
}

/// Gets the kernel `src` and prepares it as a guest with `smp` vCPUs.
pub fn linux_guest(
    src: KernelSource,
    smp: u32,
    protected: bool,
    append: Option<String>,
    host_extra: Option<&str>,
) -> Result<LinuxGuest> {
    let kernel = kernel(src)?;
    let opts = GuestOpts {
        append,
        protected,
        ..kernel.guest(smp)
    };
    let prepared = prepare(&opts, host_extra)?;
    Ok(LinuxGuest {
        kernel,
        prepared,
        opts,
    })
}

/// The host's device-tree module (crates/host, no_std + alloc, vm-fdt),
/// checked here with a DTB parser because the host crate has no host-side
/// tests.
#[cfg(test)]
#[path = "../../crates/host/src/dtb.rs"]
pub(crate) mod host_dtb;

#[cfg(test)]
mod tests {
    #[test]
    fn init_runs_the_check_only_for_its_word() {
        assert!(INIT_SCRIPT.contains(&format!("*\" {CHECK_WORD} \"*)")));
        assert!(INIT_SCRIPT.contains("setsid cttyhack sh"));
    }

    #[test]
    fn init_checks_the_disk_only_for_its_word() {
        let arm = INIT_SCRIPT
            .split(&format!("*\" {DISK_WORD} \"*)"))
            .nth(1)
            .and_then(|rest| rest.split(";;").next())
            .expect("a case arm for the disk word");
        for step in [
            "mount -t ext4 /dev/vda /mnt",
            "sha256sum -c hello.sha256",
            "LINUX-DISK: hello.txt OK",
            "LINUX-DISK: FAILED",
            "written by the guest at boot $(tr -d '\\000' < /proc/device-tree/chosen/hyp,boot-count)\" > /mnt/marker.txt",
            "sync",
            "umount /mnt",
            "LINUX-DISK-DONE",
            "poweroff -f",
        ] {
            assert!(arm.contains(step), "the disk check lacks {step:?}");
        }
        // The wait for the disk is bounded, so a missing device never hangs.
        assert!(arm.contains("[ $i -lt 50 ]"));
        // Modules load before either check, and report in one line.
        let modules = INIT_SCRIPT.find("insmod").expect("insmod");
        assert!(modules < INIT_SCRIPT.find("case ").expect("the case"));
        assert!(INIT_SCRIPT.contains(&format!("$(cat /{} ", kmods::LOAD_ORDER)));
        assert!(INIT_SCRIPT.contains("LINUX-GUEST-MODULES: loaded$loaded"));
    }

    /// The text of /init's case arm for `word`.
    fn arm(word: &str) -> &'static str {
        INIT_SCRIPT
            .split(&format!("*\" {word} \"*)"))
            .nth(1)
            .and_then(|rest| rest.split(";;").next())
            .unwrap_or_else(|| panic!("a case arm for {word}"))
    }

    #[test]
    fn init_brings_up_the_network_only_for_its_word() {
        let net = arm(NET_WORD);
        let steps = [
            "ip link set eth0 up",
            "udhcpc -i eth0 -n -q -t 5 -T 2 -s /bin/udhcpc.script",
            "LINUX-NET: eth0 $(ip -4 -o addr show dev eth0 | awk '{print $4}')",
            "LINUX-NET: FAILED no DHCP lease",
            "dd if=/dev/urandom of=/www/file.bin bs=1024 count=1024",
            "LINUX-NET: serving $(sha256sum /www/file.bin | cut -d' ' -f1)",
            "httpd -p 8080 -h /www",
            "then port=${w#hyp.net.fetch=}; fi",
            "timeout 30 wget -O /tmp/in.bin \"http://10.0.2.2:$port/in.bin\"",
            "LINUX-NET: fetched $(sha256sum /tmp/in.bin | cut -d' ' -f1)",
            "LINUX-NET: FAILED wget",
            "read -r _line",
            "LINUX-NET-DONE",
            "poweroff -f",
        ];
        let mut at = 0;
        for step in steps {
            let i = net[at..]
                .find(step)
                .unwrap_or_else(|| panic!("the network arm lacks {step:?} (in order)"));
            at += i;
        }
        // The wait for eth0 is bounded; wget and udhcpc have timeouts.
        assert!(!net.contains("wget -T"), "busybox 1.35's wget -T crashes");
        assert!(net.contains("[ $i -lt 50 ]"));
        // Only the words select the arms: the disk's never runs the net's.
        assert!(!arm(DISK_WORD).contains("udhcpc"));
        assert!(!arm(CHECK_WORD).contains("udhcpc"));
        assert_eq!(UDHCPC_SCRIPT_PATH, "bin/udhcpc.script");
        assert!(net.contains(&format!("-s /{UDHCPC_SCRIPT_PATH}")));
    }

    #[test]
    fn udhcpc_script_sets_address_route_and_resolver() {
        let s = UDHCPC_SCRIPT;
        assert!(s.starts_with("#!/bin/sh\n"));
        for step in [
            "bound|renew)",
            "ip addr add \"$ip/${mask:-24}\" dev \"$interface\"",
            "ip route add default via \"$r\" dev \"$interface\"",
            "echo \"nameserver $d\" >> /etc/resolv.conf",
            "deconfig)",
            "exit 0",
        ] {
            assert!(s.contains(step), "the udhcpc script lacks {step:?}");
        }
    }

    #[test]
    fn net_args_forward_only_loopback_tcp() {
        let dev = "virtio-net-pci,netdev=net0,iommu_platform=on,disable-legacy=on".to_owned();
        assert_eq!(
            net_qemu_args("user"),
            Ok(vec![
                "-netdev".to_owned(),
                "user,id=net0".to_owned(),
                "-device".to_owned(),
                dev.clone()
            ])
        );
        assert_eq!(
            net_qemu_args("user,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=tcp:127.0.0.1:2222-:22"),
            Ok(vec![
                "-netdev".to_owned(),
                "user,id=net0,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=tcp:127.0.0.1:2222-:22"
                    .to_owned(),
                "-device".to_owned(),
                dev
            ])
        );
        for (bad, why) in [
            ("", "only the user-mode network"),
            ("tap", "only the user-mode network"),
            ("user,restrict=on", "unknown option"),
            ("user,hostfwd=udp:127.0.0.1:1-:2", "only tcp"),
            ("user,hostfwd=tcp::8080-:80", "must be 127.0.0.1"),
            ("user,hostfwd=tcp:0.0.0.0:8080-:80", "must be 127.0.0.1"),
            (
                "user,hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80",
                "no \"-:GPORT\"",
            ),
            ("user,hostfwd=tcp:127.0.0.1:8080:80", "no \"-:GPORT\""),
            ("user,hostfwd=tcp:127.0.0.1:0-:80", "ports are 1 to 65535"),
            (
                "user,hostfwd=tcp:127.0.0.1:70000-:80",
                "ports are 1 to 65535",
            ),
            ("user,hostfwd=tcp:127.0.0.1:80-:", "ports are 1 to 65535"),
            (
                "user,hostfwd=tcp:127.0.0.1:80-:1,hostfwd=tcp:127.0.0.1:80-:2",
                "forwarded twice",
            ),
        ] {
            let e = net_qemu_args(bad).expect_err(bad);
            assert!(e.starts_with("--net ") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn test_disk_holds_hello_and_its_checksum() {
        if crate::provision::find_tool("mkfs.ext4").is_none()
            || crate::provision::find_tool("debugfs").is_none()
        {
            eprintln!("skipped: no e2fsprogs (`cargo xtask test` installs it)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-testdisk-{}", std::process::id()));
        let img = dir.with_extension("img");
        make_disk_at(&dir, &img).expect("make the disk");
        assert_eq!(
            read_disk_file(&img, "/hello.txt").expect("hello.txt"),
            hello_bytes()
        );
        let sum = String::from_utf8(read_disk_file(&img, "/hello.sha256").expect("sha256"))
            .expect("text");
        assert!(
            sum.ends_with("  hello.txt\n") && sum.len() == 64 + 12,
            "{sum:?}"
        );
        let e = read_disk_file(&img, "/marker.txt").expect_err("no marker yet");
        assert!(e.contains("marker.txt"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&img);
    }

    #[test]
    fn disk_args_need_a_regular_file() {
        let dir = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the directory");
        let img = dir.join("d.img");
        std::fs::write(&img, [0u8; 512]).expect("write the image");
        let args = disk_qemu_args(&img).expect("a regular file");
        assert_eq!(
            args,
            [
                "-drive".to_owned(),
                format!(
                    "file={},if=none,format=raw,id=disk0",
                    std::fs::canonicalize(&img).expect("canonical").display()
                ),
                "-device".to_owned(),
                "virtio-blk-pci,drive=disk0,iommu_platform=on,disable-legacy=on".to_owned(),
            ]
        );
        let e = disk_qemu_args(&dir).expect_err("a directory");
        assert!(e.contains("not a regular file"), "{e}");
        let e = disk_qemu_args(&dir.join("none.img")).expect_err("missing");
        assert!(e.starts_with("--disk "), "{e}");
        std::fs::remove_dir_all(&dir).expect("remove the directory");
    }

    use super::*;

    /// The `(address, size)` pairs of a `reg` with two address and two size cells.
    fn reg64(p: fdt::node::NodeProperty<'_>) -> Vec<(u64, u64)> {
        let v: Vec<u64> = p
            .value
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        v.chunks_exact(2).map(|c| (c[0], c[1])).collect()
    }

    /// A property of big-endian u32 cells.
    fn cells(p: fdt::node::NodeProperty<'_>) -> Vec<u32> {
        p.value
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
            .collect()
    }

    /// A VM's description with nothing optional: no command line, initrd,
    /// devices or DMA pool; boot 1.
    fn vm(gic: hyp_abi::Vgic, vcpus: usize, mem: u64) -> host_dtb::LinuxVm<'static> {
        host_dtb::LinuxVm {
            gic,
            vcpus,
            mem,
            cmdline: "",
            initrd: None,
            boot: 1,
            virtio: &[],
            dma_pool: None,
            hostile: host_dtb::Hostile::None,
            pmu: true,
        }
    }

    /// A protected VM's tree has no PMU node (pKVM gives it no PMU).
    #[test]
    fn host_linux_dtb_gives_a_protected_vm_no_pmu() {
        let dtb = host_dtb::linux_dtb(&host_dtb::LinuxVm {
            pmu: false,
            ..vm(hyp_abi::Vgic::V3, 2, 256 << 20)
        })
        .expect("dtb");
        let fdt = fdt::Fdt::new(&dtb).expect("parses");
        assert!(fdt.find_node("/pmu").is_none());
    }

    /// A protected VM's tree: one restricted DMA pool in reserved-memory,
    /// named by every virtio node; a normal VM's has neither.
    #[test]
    fn host_linux_dtb_gives_a_protected_vms_devices_its_dma_pool() {
        let devs = [
            host_dtb::VirtioMmio {
                ipa: 0x0a00_0000,
                size: 0x200,
                spi: 16,
            },
            host_dtb::VirtioMmio {
                ipa: 0x0a00_0200,
                size: 0x200,
                spi: 17,
            },
        ];
        let pool = (0x4f60_0000, 8 << 20);
        let dtb = host_dtb::linux_dtb(&host_dtb::LinuxVm {
            virtio: &devs,
            dma_pool: Some(pool),
            ..vm(hyp_abi::Vgic::V3, 2, 256 << 20)
        })
        .expect("a valid tree");
        let fdt = fdt::Fdt::new(&dtb).expect("valid DTB");
        let rm = fdt.find_node("/reserved-memory").expect("reserved-memory");
        assert_eq!(cells(rm.property("#address-cells").expect("cells")), [2]);
        assert!(rm.property("ranges").is_some());
        let p = fdt
            .find_node("/reserved-memory/restricted-dma-pool@4f600000")
            .expect("the pool");
        assert_eq!(
            p.compatible().expect("compatible").first(),
            "restricted-dma-pool"
        );
        // Linux refuses a restricted pool that is no-map or reusable.
        assert!(p.property("no-map").is_none() && p.property("reusable").is_none());
        let reg = p.reg().expect("reg").next().expect("one region");
        assert_eq!(
            (reg.starting_address as u64, reg.size.map(|s| s as u64)),
            (pool.0, Some(pool.1))
        );
        let ph = cells(p.property("phandle").expect("phandle"));
        for d in devs {
            let n = fdt
                .find_node(&format!("/virtio_mmio@{:x}", d.ipa))
                .expect("device");
            assert_eq!(cells(n.property("memory-region").expect("pool")), ph);
        }
        let normal = host_dtb::linux_dtb(&host_dtb::LinuxVm {
            virtio: &devs,
            ..vm(hyp_abi::Vgic::V3, 2, 256 << 20)
        })
        .expect("a valid tree");
        let fdt = fdt::Fdt::new(&normal).expect("valid DTB");
        assert!(fdt.find_node("/reserved-memory").is_none());
        assert!(fdt
            .find_node("/virtio_mmio@a000000")
            .expect("device")
            .property("memory-region")
            .is_none());
    }

    #[test]
    fn host_linux_dtb_parses_and_describes_the_vm() {
        let cmdline = "console=ttyAMA0 earlycon=pl011,0x9000000 nokaslr panic=-1 rdinit=/init";
        let dtb = host_dtb::linux_dtb(&host_dtb::LinuxVm {
            cmdline,
            initrd: Some((0x4800_0000, 0x4812_3456)),
            ..vm(hyp_abi::Vgic::V3, 2, 256 << 20)
        })
        .expect("a valid tree");
        let fdt = fdt::Fdt::new(&dtb).expect("valid DTB");
        assert_eq!(fdt.total_size(), dtb.len());
        let root = fdt.find_node("/").expect("root");
        assert_eq!(cells(root.property("#address-cells").expect("cells")), [2]);
        assert_eq!(cells(root.property("#size-cells").expect("cells")), [2]);
        assert_eq!(
            cells(root.property("interrupt-parent").expect("parent")),
            [1]
        );
        assert_eq!(fdt.root().compatible().first(), "linux,dummy-virt");

        // /chosen: command line, initrd, stdout-path naming the UART node.
        assert_eq!(fdt.chosen().bootargs(), Some(cmdline));
        let chosen = fdt.find_node("/chosen").expect("chosen");
        let u64_of = |name| {
            chosen
                .property(name)
                .and_then(|p| p.as_usize())
                .map(|v| v as u64)
        };
        assert_eq!(u64_of("linux,initrd-start"), Some(0x4800_0000));
        assert_eq!(u64_of("linux,initrd-end"), Some(0x4812_3456));
        assert_eq!(
            chosen.property("stdout-path").and_then(|p| p.as_str()),
            Some("/pl011@9000000")
        );

        let m = fdt.memory().regions().next().expect("a memory region");
        assert_eq!(m.starting_address as u64, 0x4000_0000);
        assert_eq!(m.size, Some(256 << 20));

        // Two vCPUs, MPIDR Aff0 = index, PSCI over HVC.
        let cpus: Vec<_> = fdt.cpus().collect();
        assert_eq!(cpus.len(), 2);
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(c.ids().first(), i);
            assert_eq!(
                c.property("enable-method").and_then(|p| p.as_str()),
                Some("psci")
            );
        }
        let psci = fdt.find_node("/psci").expect("psci");
        let compat: Vec<&str> = psci.compatible().expect("compatible").all().collect();
        assert_eq!(compat, ["arm,psci-1.0", "arm,psci-0.2"]);
        assert_eq!(
            psci.property("method").and_then(|p| p.as_str()),
            Some("hvc")
        );

        // GICv3: distributor, then one redistributor frame per vCPU.
        let gic = fdt.find_node("/intc@8000000").expect("gic");
        let compat: Vec<&str> = gic.compatible().expect("compatible").all().collect();
        assert_eq!(compat, ["arm,gic-v3"]);
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(
            reg64(gic.property("reg").expect("reg")),
            [(0x0800_0000, 0x1_0000), (0x080a_0000, 2 * 0x2_0000)]
        );
        assert_eq!(cells(gic.property("phandle").expect("phandle")), [1]);

        let timer = fdt.find_node("/timer").expect("timer");
        assert_eq!(
            cells(timer.property("interrupts").expect("interrupts")),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
        // A normal VM's PMU: its overflow interrupt is PPI 7 (INTID 23).
        let pmu = fdt.find_node("/pmu").expect("pmu");
        assert_eq!(
            pmu.property("compatible").and_then(|p| p.as_str()),
            Some("arm,armv8-pmuv3")
        );
        assert_eq!(
            cells(pmu.property("interrupts").expect("interrupts")),
            [1, 7, 4]
        );
        let clk = fdt.find_node("/apb-pclk").expect("clock");
        assert_eq!(
            cells(clk.property("clock-frequency").expect("frequency")),
            [24_000_000]
        );
        assert_eq!(cells(clk.property("phandle").expect("phandle")), [2]);

        let uart = fdt.find_node("/pl011@9000000").expect("uart node");
        let compat: Vec<&str> = uart.compatible().expect("compatible").all().collect();
        assert_eq!(compat, ["arm,pl011", "arm,primecell"]);
        assert_eq!(
            reg64(uart.property("reg").expect("reg")),
            [(0x0900_0000, 0x1000)]
        );
        assert_eq!(cells(uart.property("interrupts").expect("irq")), [0, 1, 4]);
        assert_eq!(cells(uart.property("clocks").expect("clocks")), [2, 2]);
    }

    #[test]
    fn host_linux_dtb_without_initrd_and_with_eight_vcpus() {
        let dtb = host_dtb::linux_dtb(&vm(hyp_abi::Vgic::V3, 8, 512 << 20)).expect("a valid tree");
        let fdt = fdt::Fdt::new(&dtb).expect("valid DTB");
        let chosen = fdt.find_node("/chosen").expect("chosen");
        assert!(chosen.property("linux,initrd-start").is_none());
        let names: Vec<&str> = fdt
            .find_node("/cpus")
            .expect("cpus")
            .children()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            ["cpu@0", "cpu@1", "cpu@2", "cpu@3", "cpu@4", "cpu@5", "cpu@6", "cpu@7"]
        );
        let gic = fdt.find_node("/intc@8000000").expect("gic");
        assert_eq!(reg64(gic.property("reg").expect("reg"))[1].1, 8 * 0x2_0000);
    }

    #[test]
    fn host_linux_dtb_refuses_a_nul_in_the_command_line() {
        assert_eq!(
            host_dtb::linux_dtb(&host_dtb::LinuxVm {
                cmdline: "a\0b",
                ..vm(hyp_abi::Vgic::V3, 1, 128 << 20)
            }),
            Err(vm_fdt::Error::InvalidString)
        );
    }

    /// The Pi 4's vGIC: GICv2, distributor and CPU interface (the GIC-400's
    /// GICV frame) where the hypervisor puts them, and the timer's PPIs
    /// wired to every vCPU in the flags cell's CPU mask.
    #[test]
    fn host_linux_dtb_describes_a_gicv2_vgic() {
        let timer_flags = |vcpus: usize| {
            let dtb = host_dtb::linux_dtb(&vm(hyp_abi::Vgic::V2, vcpus, 256 << 20))
                .expect("a valid tree");
            let fdt = fdt::Fdt::new(&dtb).expect("valid DTB");
            let t = cells(
                fdt.find_node("/timer")
                    .expect("timer")
                    .property("interrupts")
                    .expect("interrupts"),
            );
            assert_eq!(t.len(), 12, "four PPIs: {t:?}");
            for (i, ppi) in [13, 14, 11, 10].into_iter().enumerate() {
                assert_eq!(t[3 * i..3 * i + 2], [1, ppi], "{t:?}");
            }
            let f: Vec<u32> = t.chunks_exact(3).map(|c| c[2]).collect();
            assert!(f.iter().all(|&x| x == f[0]), "{t:?}");
            f[0]
        };
        // Bits [15:8]: one per vCPU; [3:0] = 4, level high.
        assert_eq!(timer_flags(1), 0x104);
        assert_eq!(timer_flags(2), 0x304);
        assert_eq!(timer_flags(8), 0xff04);

        let dtb = host_dtb::linux_dtb(&vm(hyp_abi::Vgic::V2, 2, 256 << 20)).expect("a valid tree");
        let fdt = fdt::Fdt::new(&dtb).expect("valid DTB");
        let gic = fdt.find_node("/intc@8000000").expect("gic");
        let compat: Vec<&str> = gic.compatible().expect("compatible").all().collect();
        assert_eq!(compat, ["arm,cortex-a15-gic"]);
        assert!(gic.property("interrupt-controller").is_some());
        assert!(gic.property("#redistributor-regions").is_none());
        assert_eq!(cells(gic.property("#interrupt-cells").expect("cells")), [3]);
        assert_eq!(cells(gic.property("phandle").expect("phandle")), [1]);
        // Distributor (4 KiB), then the CPU interface (8 KiB, GICC_DIR in
        // its second page), at the IPAs the hypervisor emulates and maps.
        assert_eq!(
            reg64(gic.property("reg").expect("reg")),
            [(0x0800_0000, 0x1000), (0x0801_0000, 0x2000)]
        );
        assert_eq!(
            (hyp_abi::layout::GICD_IPA, hyp_abi::layout::GICC_V2_IPA),
            (0x0800_0000, 0x0801_0000)
        );
        // SPIs carry no CPU mask.
        let uart = fdt.find_node("/pl011@9000000").expect("uart node");
        assert_eq!(cells(uart.property("interrupts").expect("irq")), [0, 1, 4]);
    }

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.symlink("bin/sh", "busybox");
        let a = c.finish();
        assert_eq!(&a[..6], b"070701");
        // ino 1, directory mode, nlink 2, name size 4 ("bin\0").
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000041ED");
        assert_eq!(&a[38..46], b"00000002");
        assert_eq!(&a[94..102], b"00000004");
        assert_eq!(&a[110..114], b"bin\0");
        // Next header 4-aligned right after the name (110 + 4 = 114 -> 116).
        assert_eq!(&a[116..122], b"070701");
        assert!(a.len().is_multiple_of(512));
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("TRAILER!!!"));
        // "bin/sh\0" ends at 233, padded to 236, then the link target.
        assert!(s.contains("bin/sh\0\0\0\0busybox"));
    }

    #[test]
    fn constants_match_the_host_and_the_abi() {
        assert_eq!(GUEST_RAM_IPA, hyp_abi::layout::RAM_IPA);
        assert_eq!(BOOTARGS_MAX, hyp_abi::BOOTARGS_LEN - 1);
    }

    #[test]
    fn placement_of_raw_images_and_elves() {
        const MIB: u64 = 1 << 20;
        // An arm64 Image without --guest-load: the host reads its header.
        assert_eq!(placement(0x1000, None, None, 256), Ok(None));
        // A raw image at ADDR is entered at ADDR.
        assert_eq!(
            placement(0x1000, None, Some(0x4020_0000), 256),
            Ok(Some((0x4020_0000, 0x4020_0000)))
        );
        // From the RAM base up to the middle of RAM (the initrd's place).
        assert!(placement(0x1000, None, Some(GUEST_RAM_IPA), 16).is_ok());
        assert!(placement(0x1000, None, Some(GUEST_RAM_IPA + 8 * MIB - 0x1000), 16).is_ok());
        for bad in [
            0,
            0x4000_0000 - 8,
            GUEST_RAM_IPA + 8 * MIB - 0xff8,
            GUEST_RAM_IPA + 8 * MIB,
            u64::MAX - 7,
        ] {
            let e = placement(0x1000, None, Some(bad), 16).expect_err("outside guest RAM");
            assert!(e.contains("lower half of guest RAM"), "{bad:#x}: {e}");
            assert!(e.contains("0x40000000..0x40800000"), "{bad:#x}: {e}");
        }
        let e = placement(0x1000, None, Some(0x4020_0004), 256).expect_err("misaligned");
        assert!(e.contains("8-byte aligned"), "{e}");

        // An ELF linked at 0: ADDR is its base, the entry moves with it;
        // its BSS counts.
        let at0 = ElfPlace {
            load: 0,
            entry: 0x40,
            mem_size: 0x3000,
        };
        assert_eq!(
            placement(0x1000, Some(at0), Some(0x4100_0000), 256),
            Ok(Some((0x4100_0000, 0x4100_0040)))
        );
        let e = placement(0x1000, Some(at0), None, 256).expect_err("needs ADDR");
        assert!(e.contains("linked at address 0: give --guest-load"), "{e}");
        assert!(placement(
            0x1000,
            Some(at0),
            Some(GUEST_RAM_IPA + 8 * MIB - 0x2000),
            16
        )
        .is_err());
        // An ELF linked elsewhere: where it is linked, and nowhere else.
        let linked = ElfPlace {
            load: 0x4008_0000,
            entry: 0x4008_0000,
            mem_size: 0x2000,
        };
        assert_eq!(
            placement(0x2000, Some(linked), None, 256),
            Ok(Some((0x4008_0000, 0x4008_0000)))
        );
        assert_eq!(
            placement(0x2000, Some(linked), Some(0x4008_0000), 256),
            Ok(Some((0x4008_0000, 0x4008_0000)))
        );
        let e = placement(0x2000, Some(linked), Some(0x4010_0000), 256).expect_err("moved");
        assert!(e.contains("linked at 0x40080000"), "{e}");
        // ... and it must fit, with its entry inside it.
        let high = ElfPlace {
            load: 0x5000_0000,
            ..linked
        };
        assert!(placement(0x2000, Some(high), None, 64).is_err());
        let wild = ElfPlace {
            entry: 0x4010_0000,
            ..linked
        };
        let e = placement(0x2000, Some(wild), None, 256).expect_err("entry outside");
        assert!(e.contains("entry 0x40100000 is outside"), "{e}");
        let below = ElfPlace {
            entry: 0x4000_0000,
            ..linked
        };
        assert!(placement(0x2000, Some(below), Some(0x4008_0000), 256).is_err());
    }

    fn opts(append: Option<&str>, cmdline: Option<&str>) -> GuestOpts {
        GuestOpts {
            kernel: PathBuf::from("k"),
            initrd: None,
            append: append.map(str::to_owned),
            cmdline: cmdline.map(str::to_owned),
            load: None,
            smp: 1,
            mem_mib: None,
            protected: false,
            disk: None,
            net: None,
        }
    }

    #[test]
    fn guest_cmdline_replaces_or_appends() {
        assert_eq!(
            guest_cmdline(&opts(None, None)),
            Ok(BASE_CMDLINE.to_owned())
        );
        assert_eq!(
            guest_cmdline(&opts(Some("rdinit=/init"), None)),
            Ok(format!("{BASE_CMDLINE} rdinit=/init"))
        );
        assert_eq!(
            guest_cmdline(&opts(None, Some("a=1  b -- c"))),
            Ok("a=1  b -- c".to_owned())
        );
        assert_eq!(guest_cmdline(&opts(None, Some(""))), Ok(String::new()));
        assert!(guest_cmdline(&opts(Some("x"), Some("y"))).is_err());
        assert!(guest_cmdline(&opts(None, Some(" lead"))).is_err());
        assert!(guest_cmdline(&opts(None, Some("nul\0"))).is_err());
    }
}
