//! Provisioning: the Rust targets and QEMU the build and tests need, and the
//! cargo subcommands of the developer tools (`coverage`, `mutants`).
//!
//! Installs what is missing when it knows how (rustup targets; QEMU from
//! bookworm-backports on Debian 12, or the distribution's package on other
//! Debian/Ubuntu systems) and says so; otherwise stops with the exact command.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{note, root, Result};

/// Oldest QEMU with `raspi4b` and the `virt` features we rely on.
const MIN_QEMU: (u32, u32) = (9, 0);
/// The QEMU binary.
pub const QEMU: &str = "qemu-system-aarch64";

/// Makes sure every target in `targets` is installed for the pinned toolchain.
pub fn targets(targets: &[&str]) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return Err(format!(
                "`rustup target list --installed` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(e) => {
            return Err(format!(
                "rustup not found ({e}); install it (https://rustup.rs), then run \
                 `rustup toolchain install 1.95.0 --profile minimal --component clippy,rustfmt \
                 --target {}`",
                targets.join(",")
            ))
        }
    };
    let installed = String::from_utf8_lossy(&out.stdout);
    let mut seen = Vec::new();
    for &t in targets {
        if seen.contains(&t) {
            continue;
        }
        seen.push(t);
        if installed.lines().any(|l| l.trim() == t) {
            continue;
        }
        note(&format!(
            "provision: Rust target {t} is missing: running `rustup target add {t}`"
        ));
        crate::run_checked(
            Command::new("rustup")
                .args(["target", "add", t])
                .current_dir(root()),
        )?;
    }
    Ok(())
}

/// Makes sure the cargo subcommand `cargo <sub>` (from the crates.io
/// package `package`) runs; installs it with `cargo install --locked` when
/// it does not. `why` says what it is for in the progress line.
pub fn cargo_tool(sub: &str, package: &str, why: &str) -> Result<()> {
    let works = |sub: &str| {
        Command::new("cargo")
            .args([sub, "--version"])
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(sub) {
        return Ok(());
    }
    note(&format!(
        "provision: `cargo {sub}` is missing ({why}): installing {package} from crates.io \
         (`cargo install --locked {package}`; a few minutes of compiling, once)"
    ));
    crate::run_checked(
        Command::new("cargo")
            .args(["install", "--locked", package])
            .current_dir(root()),
    )?;
    if works(sub) {
        note(&format!("provision: installed {package}"));
        Ok(())
    } else {
        Err(format!(
            "`cargo install --locked {package}` succeeded but `cargo {sub} --version` still \
             fails: is ~/.cargo/bin (or $CARGO_HOME/bin) on PATH?"
        ))
    }
}

/// Makes sure the pinned toolchain has `llvm-tools` (llvm-profdata and
/// llvm-cov, which cargo-llvm-cov drives).
pub fn llvm_tools() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .current_dir(root())
        .output()
        .map_err(|e| {
            format!("rustup not found ({e}): cargo-llvm-cov needs the llvm-tools component")
        })?;
    let installed = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && installed.lines().any(|l| l.starts_with("llvm-tools")) {
        return Ok(());
    }
    note("provision: the llvm-tools component is missing: running `rustup component add llvm-tools-preview`");
    crate::run_checked(
        Command::new("rustup")
            .args(["component", "add", "llvm-tools-preview"])
            .current_dir(root()),
    )
}

/// QEMU's version, or why it is unusable.
fn qemu_status() -> std::result::Result<(u32, u32, u32), String> {
    let out = Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{QEMU} not found ({e})"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = parse_qemu_version(&text)
        .ok_or_else(|| format!("cannot parse `{QEMU} --version` output: {}", text.trim()))?;
    if (version.0, version.1) < MIN_QEMU {
        return Err(format!(
            "{QEMU} {}.{}.{} is too old (need >= {}.{})",
            version.0, version.1, version.2, MIN_QEMU.0, MIN_QEMU.1
        ));
    }
    let machines = Command::new(QEMU)
        .args(["-M", "help"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{QEMU} -M help: {e}"))?;
    let machines = String::from_utf8_lossy(&machines.stdout);
    if !machines
        .lines()
        .any(|l| l.split_whitespace().next() == Some("raspi4b"))
    {
        return Err(format!(
            "{QEMU} does not support the raspi4b machine (`-M help`)"
        ));
    }
    Ok(version)
}

/// Parses "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)".
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.split("version").nth(1)?;
    let word = rest.split_whitespace().next()?;
    let mut parts = word.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

fn os_release() -> String {
    std::fs::read_to_string("/etc/os-release").unwrap_or_default()
}

fn os_field(os: &str, key: &str) -> Option<String> {
    os.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn sudo_works() -> bool {
    Command::new("sudo")
        .args(["-n", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Does any apt source already mention bookworm-backports?
fn backports_configured() -> bool {
    let mut files = vec![Path::new("/etc/apt/sources.list").to_owned()];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f)
            .map(|t| t.contains("bookworm-backports"))
            .unwrap_or(false)
    })
}

/// Makes sure a usable QEMU (>= 9.0 with raspi4b) is installed.
pub fn qemu() -> Result<()> {
    let why = match qemu_status() {
        Ok(_) => return Ok(()),
        Err(why) => why,
    };
    let os = os_release();
    let id = os_field(&os, "ID").unwrap_or_default();
    let like = os_field(&os, "ID_LIKE").unwrap_or_default();
    let codename = os_field(&os, "VERSION_CODENAME").unwrap_or_default();
    let debian_like = id == "debian" || id == "ubuntu" || like.contains("debian");
    let bookworm = id == "debian" && codename == "bookworm";
    const BACKPORTS: &str = "deb http://deb.debian.org/debian bookworm-backports main";
    const LIST: &str = "/etc/apt/sources.list.d/bookworm-backports.list";
    let manual = if bookworm {
        format!(
            "echo '{BACKPORTS}' | sudo tee {LIST} && sudo apt-get update && \
             sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -t bookworm-backports qemu-system-arm"
        )
    } else if debian_like {
        "sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-arm"
            .to_owned()
    } else {
        format!(
            "install QEMU >= {}.{} with the raspi4b machine (providing {QEMU}) with your system's \
             package manager",
            MIN_QEMU.0, MIN_QEMU.1
        )
    };
    let sudo: &[&str] = if is_root() {
        &[]
    } else if debian_like && sudo_works() {
        &["sudo", "-n"]
    } else {
        return Err(format!(
            "{why}; cannot install it without root. Run:\n    {manual}"
        ));
    };
    if !debian_like {
        return Err(format!("{why}. {manual}"));
    }
    note(&format!("provision: {why}; installing QEMU"));
    let apt = |args: &[&str]| -> Result<()> {
        let mut argv: Vec<&str> = sudo.to_vec();
        argv.extend_from_slice(args);
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive");
        crate::run_checked(&mut cmd)
    };
    if bookworm {
        if !backports_configured() {
            note(&format!("provision: adding `{BACKPORTS}` to {LIST}"));
            let line = format!("{BACKPORTS}\n");
            if sudo.is_empty() {
                std::fs::write(LIST, line).map_err(|e| format!("cannot write {LIST}: {e}"))?;
            } else {
                apt(&["sh", "-c", &format!("echo '{BACKPORTS}' > {LIST}")])?;
            }
        }
        apt(&["apt-get", "update"])?;
        apt(&[
            "apt-get",
            "install",
            "-y",
            "-t",
            "bookworm-backports",
            "qemu-system-arm",
        ])?;
    } else {
        apt(&["apt-get", "update"])?;
        apt(&["apt-get", "install", "-y", "qemu-system-arm"])?;
    }
    match qemu_status() {
        Ok((a, b, c)) => {
            note(&format!("provision: installed {QEMU} {a}.{b}.{c}"));
            Ok(())
        }
        Err(why) => Err(format!(
            "after installing qemu-system-arm: {why}. Install QEMU >= {}.{} by hand",
            MIN_QEMU.0, MIN_QEMU.1
        )),
    }
}

/// Finds a system tool on PATH or in /usr/sbin and /sbin (where e2fsprogs
/// puts mkfs.ext4 and debugfs, often not on a user's PATH).
pub fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Makes sure e2fsprogs' `mkfs.ext4` and `debugfs` (the Linux guest's test
/// disk) are installed: with apt (as root or with passwordless sudo) on a
/// Debian-like system, else an error saying what to install. Returns their
/// paths.
pub fn e2fsprogs() -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let found = || Some((find_tool("mkfs.ext4")?, find_tool("debugfs")?));
    if let Some(t) = found() {
        return Ok(t);
    }
    apt_install("mkfs.ext4 or debugfs not found", &["e2fsprogs"])?;
    found()
        .ok_or_else(|| "installed e2fsprogs but mkfs.ext4 or debugfs is still missing".to_owned())
}

/// Installs the Debian `packages` with apt-get (as root, or with
/// passwordless sudo) on a Debian-like system, saying so (`why`: what is
/// missing); elsewhere, or without root, an error naming them.
pub fn apt_install(why: &str, packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    let os = os_release();
    let id = os_field(&os, "ID").unwrap_or_default();
    let like = os_field(&os, "ID_LIKE").unwrap_or_default();
    let debian_like = id == "debian" || id == "ubuntu" || like.contains("debian");
    if !debian_like {
        return Err(format!(
            "{why}: install {list} (Debian's names) with your system's package manager"
        ));
    }
    let sudo: &[&str] = if is_root() {
        &[]
    } else if sudo_works() {
        &["sudo", "-n"]
    } else {
        return Err(format!(
            "{why}: cannot install it without root. Run:\n    sudo apt-get update && \
             sudo DEBIAN_FRONTEND=noninteractive apt-get install -y {list}"
        ));
    };
    note(&format!("provision: {why}; installing {list}"));
    let mut install = vec!["apt-get", "install", "-y", "--no-install-recommends"];
    install.extend_from_slice(packages);
    for args in [&["apt-get", "update"][..], &install] {
        let mut argv: Vec<&str> = sudo.to_vec();
        argv.extend_from_slice(args);
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive");
        crate::run_checked(&mut cmd)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\nCopyright"
            ),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.15"),
            Some((7, 2, 15))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.1"),
            Some((9, 1, 0))
        );
        assert_eq!(parse_qemu_version("something else"), None);
    }

    #[test]
    fn os_release_fields() {
        let os = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        assert_eq!(os_field(os, "ID").as_deref(), Some("debian"));
        assert_eq!(
            os_field(os, "VERSION_CODENAME").as_deref(),
            Some("bookworm")
        );
        assert_eq!(os_field(os, "ID_LIKE"), None);
    }
}
