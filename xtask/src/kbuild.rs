//! The project's own guest kernel (issue 19 item 1): no Debian arm64 kernel
//! enables `CONFIG_ARM_PKVM_GUEST` or `CONFIG_DMA_RESTRICTED_POOL`, so
//! `cargo xtask linux --kernel built` builds one from Debian's
//! `linux-source-6.12` package: `make tinyconfig`, then the project's
//! fragment ([`FRAGMENT`]), `make olddefconfig`, a check that every option
//! the fragment sets came out as it asks ([`check_config`]), then `make
//! Image`, everything built in.
//!
//! Cached in target/linux-cache/kbuild/: the unpacked source (`src/`, with
//! the package's version in `src/VERSION`), the build tree (`out/`, make's
//! `O=`), the full build log (`build.log`). The build is keyed by the
//! source package's version and the fragment's bytes (`out/hyp-key`): a
//! rebuild only when either changes. Delete the directory to fetch a newer
//! `linux-source-6.12`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::{linux, note, provision, root, run_checked, write, Result};

/// The Debian source package.
const SOURCE_PKG: &str = "linux-source-6.12";
/// The project's config fragment, relative to the workspace root.
pub const FRAGMENT: &str = "platforms/linux/guest.config";
const ARCH: &str = "arm64";
const CROSS: &str = "aarch64-linux-gnu-";
/// A progress line at least this often while make runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);
/// The build is stopped (and fails) after this long: a cold build takes
/// about 3 minutes on the 2-core CI machine.
const BUILD_LIMIT: Duration = Duration::from_secs(60 * 60);

/// What the build needs on the machine: a file that shows it, and the
/// Debian package that provides it.
const BUILD_DEPS: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("/usr/include/openssl/ssl.h", "libssl-dev"),
    ("/usr/include/gelf.h", "libelf-dev"),
    ("xz", "xz-utils"),
];

/// The built kernel.
#[derive(Debug, Clone)]
pub struct Built {
    /// arch/arm64/boot/Image.
    pub image: PathBuf,
    /// Its .config.
    pub config: PathBuf,
    /// The source package's version (e.g. 6.12.118-1~deb12u1).
    pub version: String,
    /// The kernel's release (`uname -r`, e.g. 6.12.118).
    pub release: String,
}

fn dir() -> PathBuf {
    linux::cache_dir().join("kbuild")
}

/// Installs what [`BUILD_DEPS`] lists as missing.
fn build_deps() -> Result<()> {
    let missing: Vec<&str> = BUILD_DEPS
        .iter()
        .filter(|(file, _)| {
            if file.starts_with('/') {
                !Path::new(file).exists()
            } else {
                provision::find_tool(file).is_none()
            }
        })
        .map(|&(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    provision::apt_install("the guest kernel's build needs packages", &missing)?;
    for (file, pkg) in BUILD_DEPS {
        let there = if file.starts_with('/') {
            Path::new(file).exists()
        } else {
            provision::find_tool(file).is_some()
        };
        if !there {
            return Err(format!("installed {pkg} but {file} is still missing"));
        }
    }
    Ok(())
}

/// The apt suites that may hold [`SOURCE_PKG`]: this machine's release,
/// its security updates and its backports (bookworm has it only in the
/// last two; trixie in its main suite).
fn source_suites() -> Vec<(&'static str, String)> {
    let suite = linux::debian_suite();
    let mut s = vec![("debian", suite.clone())];
    if suite != "sid" && suite != "unstable" {
        s.push(("debian-security", format!("{suite}-security")));
        s.push(("debian", format!("{suite}-backports")));
    }
    s
}

/// The unpacked source tree (cached) and the package's version.
fn source() -> Result<(PathBuf, String)> {
    let base = dir().join("src");
    let tree = base.join(SOURCE_PKG);
    let stamp = base.join("VERSION");
    if let Ok(v) = std::fs::read_to_string(&stamp) {
        if tree.join("Makefile").is_file() {
            return Ok((tree, v.trim().to_owned()));
        }
    }
    let opts = linux::apt_state(&dir().join("apt"), &source_suites())?;
    let debs = dir().join("debs");
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    note(&format!(
        "kbuild: downloading {SOURCE_PKG} (about 150 MB, once)"
    ));
    run_checked(
        Command::new("apt-get")
            .args(&opts)
            .args(["download", SOURCE_PKG])
            .current_dir(&debs),
    )
    .map_err(|e| {
        format!(
            "{e}: none of Debian's {:?} (arm64) has {SOURCE_PKG}",
            source_suites()
        )
    })?;
    let deb = std::fs::read_dir(&debs)
        .map_err(|e| format!("{}: {e}", debs.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            format!(
                "apt-get download {SOURCE_PKG} left no .deb in {}",
                debs.display()
            )
        })?;
    let version = linux::output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )?
    .trim()
    .to_owned();
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let started = Instant::now();
    note(&format!(
        "kbuild: unpacking {SOURCE_PKG} {version} into {} (tens of seconds)",
        base.display()
    ));
    // The package holds /usr/src/linux-source-6.12.tar.xz; untar that,
    // streamed, without keeping the tarball.
    run_checked(Command::new("bash").arg("-c").arg(format!(
        "set -o pipefail; dpkg-deb --fsys-tarfile '{}' \
         | tar -xO './usr/src/{SOURCE_PKG}.tar.xz' | tar -xJ -C '{}'",
        deb.display(),
        base.display()
    )))?;
    if !tree.join("Makefile").is_file() {
        return Err(format!(
            "{SOURCE_PKG}'s tarball did not unpack to {}",
            tree.display()
        ));
    }
    note(&format!(
        "kbuild: unpacked in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    write(&stamp, format!("{version}\n").as_bytes())?;
    let _ = std::fs::remove_dir_all(&debs);
    Ok((tree, version))
}

/// One option's value as a .config writes it: `y`, `m`, a number or a
/// quoted string; `n` for `# CONFIG_X is not set`.
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        let name = rest.strip_suffix(" is not set")?;
        return name.starts_with("CONFIG_").then_some((name, "n"));
    }
    let (name, value) = line.split_once('=')?;
    name.starts_with("CONFIG_").then_some((name, value))
}

/// Every option a config text sets, in order (a later line wins, as in
/// Kconfig).
fn options(text: &str) -> BTreeMap<&str, &str> {
    text.lines().filter_map(parse_line).collect()
}

/// Checks that the resolved `config` sets every option of `fragment` as the
/// fragment asks (absent counts as `n`); the error names each option that
/// came out otherwise and, from `src`'s Kconfig files, what it depends on.
pub fn check_config(fragment: &str, config: &str, src: Option<&Path>) -> Result<()> {
    let have = options(config);
    let mut wrong = Vec::new();
    for (name, want) in options(fragment) {
        let got = have.get(name).copied().unwrap_or("n");
        if got != want {
            let deps = src
                .map(|s| kconfig_deps(s, &name["CONFIG_".len()..]))
                .filter(|d| !d.is_empty())
                .map(|d| format!(" (Kconfig: {})", d.join("; ")))
                .unwrap_or_default();
            wrong.push(format!(
                "  {name}: the fragment asks for {want}, the resolved .config has {got}{deps}"
            ));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{FRAGMENT}: {} option(s) did not come out as asked (a dependency off: the \
             option's own `depends on`, shown, or an enclosing `if`/menu's; or a misspelt or \
             vanished option; `make olddefconfig` drops those silently):\n{}",
            wrong.len(),
            wrong.join("\n")
        ))
    }
}

/// What the Kconfig files under `src` say `config NAME` depends on: its
/// `depends on` lines, or that no Kconfig defines it.
fn kconfig_deps(src: &Path, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut defined = false;
    let mut stack = vec![src.to_owned()];
    let header = [format!("config {name}"), format!("menuconfig {name}")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(p);
                continue;
            }
            let is_kconfig = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("Kconfig"));
            if !is_kconfig {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let mut inside = false;
            for line in text.lines() {
                let l = line.trim();
                if header.iter().any(|h| l == h) {
                    inside = true;
                    defined = true;
                    continue;
                }
                if inside {
                    if l.starts_with("config ")
                        || l.starts_with("menuconfig ")
                        || l.starts_with("help")
                        || l.starts_with("endmenu")
                        || l.starts_with("endif")
                    {
                        inside = false;
                    } else if l.starts_with("depends on") {
                        found.push(l.to_owned());
                    }
                }
            }
        }
    }
    if !defined {
        found.push(format!("no Kconfig defines {name}"));
    }
    found.sort();
    found.dedup();
    found
}

/// `make ARCH=arm64 CROSS_COMPILE=... O=out` in the source tree.
fn make(src: &Path, out: &Path) -> Command {
    let mut c = Command::new("make");
    c.arg("-C")
        .arg(src)
        .arg(format!("O={}", out.display()))
        .arg(format!("ARCH={ARCH}"))
        .arg(format!("CROSS_COMPILE={CROSS}"))
        // The banner's user@host, the same on every machine.
        .env("KBUILD_BUILD_USER", "hyp")
        .env("KBUILD_BUILD_HOST", "xtask");
    c
}

/// Runs `cmd` with its output in `log` (appended), printing a progress line
/// (elapsed time, the last compiler line) every [`PROGRESS_EVERY`]; on
/// failure the error holds the log's last lines.
fn run_logged(cmd: &mut Command, log: &Path, what: &str) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let (reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let writer2 = writer.try_clone().map_err(|e| format!("pipe: {e}"))?;
    cmd.stdout(writer).stderr(writer2);
    note(&format!(
        "kbuild: {what}: {} (log: {})",
        show_short(cmd),
        log.display()
    ));
    let mut child = cmd.spawn().map_err(|e| format!("cannot run make: {e}"))?;
    // The pipe's write ends live only in the child now.
    drop(std::mem::replace(cmd, Command::new("true")));
    let last = Arc::new(Mutex::new((String::new(), 0usize)));
    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader_thread = {
        let last = last.clone();
        let tail = tail.clone();
        std::thread::spawn(move || {
            let mut file = file;
            for line in BufReader::new(reader).lines().map_while(|l| l.ok()) {
                let _ = writeln!(file, "{line}");
                let t = line.trim_start();
                if let Ok(mut l) = last.lock() {
                    l.1 += 1;
                    if is_step(&line) {
                        l.0 = t.to_owned();
                    }
                }
                if let Ok(mut tl) = tail.lock() {
                    tl.push(line);
                    let n = tl.len();
                    if n > 40 {
                        tl.drain(..n - 40);
                    }
                }
            }
        })
    };
    let started = Instant::now();
    let mut next = PROGRESS_EVERY;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| format!("make: {e}"))? {
            break s;
        }
        let el = started.elapsed();
        if el > BUILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "kbuild: {what} took more than {} min; stopped (log: {})",
                BUILD_LIMIT.as_secs() / 60,
                log.display()
            ));
        }
        if el >= next {
            next += PROGRESS_EVERY;
            let (l, n) = last.lock().map(|l| l.clone()).unwrap_or_default();
            note(&format!(
                "kbuild: {what}: {}:{:02} elapsed, {n} lines; last: {}",
                el.as_secs() / 60,
                el.as_secs() % 60,
                if l.is_empty() { "-" } else { &l }
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = reader_thread.join();
    if status.success() {
        return Ok(());
    }
    let tail = tail.lock().map(|t| t.join("\n")).unwrap_or_default();
    Err(format!(
        "kbuild: {what} failed ({status}); the log's last lines ({}):\n{tail}",
        log.display()
    ))
}

/// Whether a make output line is one of kbuild's step lines
/// (`  CC      kernel/fork.o`, `  LD      vmlinux`): an indented
/// upper-case verb, not a compiler's warning or make's chatter.
fn is_step(line: &str) -> bool {
    line.strip_prefix("  ")
        .and_then(|l| l.split_whitespace().next())
        .is_some_and(|w| {
            w.len() >= 2
                && w.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// A command's arguments, for a progress line.
fn show_short(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The build's cache key: the source version and the fragment's sha256.
fn key(version: &str, fragment: &str) -> String {
    let sum: String = Sha256::digest(fragment.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{SOURCE_PKG} {version} fragment-sha256 {sum}\n")
}

/// Builds (or finds cached) the guest kernel.
pub fn build() -> Result<Built> {
    let frag_path = root().join(FRAGMENT);
    let fragment =
        std::fs::read_to_string(&frag_path).map_err(|e| format!("{}: {e}", frag_path.display()))?;
    let out = dir().join("out");
    let image = out.join("arch/arm64/boot/Image");
    let config = out.join(".config");
    let stamp = out.join("hyp-key");
    let release_of = |out: &Path| {
        std::fs::read_to_string(out.join("include/config/kernel.release"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    // A cached build needs neither the network nor the build packages.
    let cached_version = std::fs::read_to_string(dir().join("src/VERSION"))
        .map(|v| v.trim().to_owned())
        .ok();
    if let Some(version) = cached_version {
        if std::fs::read_to_string(&stamp).is_ok_and(|k| k == key(&version, &fragment))
            && image.is_file()
        {
            let release = release_of(&out);
            note(&format!(
                "kbuild: cached guest kernel {release} ({SOURCE_PKG} {version}, {FRAGMENT} \
                 unchanged): {}",
                image.display()
            ));
            return Ok(Built {
                image,
                config,
                version,
                release,
            });
        }
    }
    let started = Instant::now();
    build_deps()?;
    let (src, version) = source()?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_file(&stamp);
    let log = dir().join("build.log");
    let _ = std::fs::remove_file(&log);
    note(&format!(
        "kbuild: building the guest kernel from {SOURCE_PKG} {version} with {FRAGMENT}"
    ));
    run_logged(make(&src, &out).arg("tinyconfig"), &log, "make tinyconfig")?;
    // The fragment after tinyconfig's choices: a later line wins.
    let tiny =
        std::fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    write(
        &config,
        format!("{tiny}\n# {FRAGMENT}\n{fragment}").as_bytes(),
    )?;
    run_logged(
        make(&src, &out).arg("olddefconfig"),
        &log,
        "make olddefconfig",
    )?;
    let resolved =
        std::fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    check_config(&fragment, &resolved, Some(&src))?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    run_logged(
        make(&src, &out).arg(format!("-j{jobs}")).arg("Image"),
        &log,
        &format!("make -j{jobs} Image"),
    )?;
    if !image.is_file() {
        return Err(format!(
            "make Image succeeded but {} is missing",
            image.display()
        ));
    }
    write(&stamp, key(&version, &fragment).as_bytes())?;
    let release = release_of(&out);
    let size = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    note(&format!(
        "kbuild: built guest kernel {release} in {:.0} s: {} ({:.1} MiB)",
        started.elapsed().as_secs_f64(),
        image.display(),
        size as f64 / (1024.0 * 1024.0)
    ));
    Ok(Built {
        image,
        config,
        version,
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines_parse() {
        assert_eq!(parse_line("CONFIG_A=y"), Some(("CONFIG_A", "y")));
        assert_eq!(parse_line("# CONFIG_B is not set"), Some(("CONFIG_B", "n")));
        assert_eq!(
            parse_line("CONFIG_S=\"a b\""),
            Some(("CONFIG_S", "\"a b\""))
        );
        assert_eq!(parse_line("# a comment"), None);
        assert_eq!(parse_line("# why: CONFIG_C is not set"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn step_lines_are_kbuilds() {
        assert!(is_step("  CC      kernel/fork.o"));
        assert!(is_step("  LD      vmlinux"));
        assert!(is_step("  HOSTCC  scripts/basic/fixdep"));
        assert!(!is_step("kernel/fork.c:12: warning: unused"));
        assert!(!is_step("make[1]: Entering directory"));
        assert!(!is_step("  |  ^~~~"));
    }

    #[test]
    fn a_dropped_option_is_refused_by_name() {
        let fragment =
            "# the disk\nCONFIG_BLOCK=y\nCONFIG_VIRTIO_BLK=y\n# CONFIG_MODULES is not set\n";
        // olddefconfig dropped VIRTIO_BLK (its dependency was off).
        let config = "CONFIG_BLOCK=y\n# CONFIG_VIRTIO_BLK is not set\n";
        let e = check_config(fragment, config, None).expect_err("a dropped option");
        assert!(e.contains("1 option(s)"), "{e}");
        assert!(
            e.contains("CONFIG_VIRTIO_BLK: the fragment asks for y, the resolved .config has n"),
            "{e}"
        );
        assert!(!e.contains("CONFIG_BLOCK:"), "{e}");
        // Absent, or set otherwise, is wrong too; an unset option asked unset is fine.
        let e = check_config("CONFIG_X=y\nCONFIG_N=32\n", "CONFIG_N=8\n", None)
            .expect_err("absent and different");
        assert!(
            e.contains("CONFIG_X: the fragment asks for y, the resolved .config has n"),
            "{e}"
        );
        assert!(
            e.contains("CONFIG_N: the fragment asks for 32, the resolved .config has 8"),
            "{e}"
        );
        check_config(fragment, "CONFIG_BLOCK=y\nCONFIG_VIRTIO_BLK=y\n", None)
            .expect("all as asked");
    }

    #[test]
    fn a_dropped_option_names_its_dependencies() {
        let src = std::env::temp_dir().join(format!("kbuild-test-{}", std::process::id()));
        let sub = src.join("drivers/block");
        std::fs::create_dir_all(&sub).expect("a temporary tree");
        std::fs::write(
            sub.join("Kconfig"),
            "config VIRTIO_BLK\n\ttristate \"Virtio block driver\"\n\tdepends on VIRTIO\n\
             \tselect SG_POOL\n\thelp\n\t  depends on nothing here\n",
        )
        .expect("a Kconfig");
        let e = check_config("CONFIG_VIRTIO_BLK=y\nCONFIG_NOPE=y\n", "", Some(&src))
            .expect_err("dropped");
        let _ = std::fs::remove_dir_all(&src);
        assert!(e.contains("(Kconfig: depends on VIRTIO)"), "{e}");
        assert!(e.contains("(Kconfig: no Kconfig defines NOPE)"), "{e}");
    }

    #[test]
    fn the_project_fragment_parses_and_asks_for_the_pkvm_guest() {
        let text = std::fs::read_to_string(root().join(FRAGMENT)).expect("the fragment");
        let o = options(&text);
        for name in [
            "CONFIG_ARM_PKVM_GUEST",
            "CONFIG_VIRT_DRIVERS",
            "CONFIG_DMA_RESTRICTED_POOL",
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_HW_RANDOM_ARM_SMCCC_TRNG",
        ] {
            assert_eq!(o.get(name), Some(&"y"), "{name}");
        }
        assert_eq!(o.get("CONFIG_MODULES"), Some(&"n"));
        // Every option has its reason: a comment line right above it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if parse_line(l).is_some() {
                assert!(
                    i > 0 && lines[i - 1].starts_with("# ") && parse_line(lines[i - 1]).is_none(),
                    "{FRAGMENT}: no comment above {l:?}"
                );
            }
        }
    }

    #[test]
    fn the_key_follows_version_and_fragment() {
        assert_eq!(key("1", "CONFIG_A=y\n"), key("1", "CONFIG_A=y\n"));
        assert_ne!(key("1", "CONFIG_A=y\n"), key("2", "CONFIG_A=y\n"));
        assert_ne!(key("1", "CONFIG_A=y\n"), key("1", "CONFIG_A=n\n"));
    }
}
