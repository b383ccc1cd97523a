//! Kernel modules for the Linux guest's initramfs (issue 18 items 4 and 6).
//!
//! Debian's arm64 kernel builds the drivers the guest needs for its disk and
//! network (`virtio_mmio`, `virtio_blk`, `virtio_net`, `ext4`) as modules.
//! The kernel package has no `modules.dep` (depmod writes it when the
//! package is installed), so this reads what depmod reads: each module's
//! `.modinfo` ELF section (`name=`, `depends=`, `softdep=`, `alias=`). One
//! pass over the package's file tree (`dpkg-deb --fsys-tarfile`, a tar
//! stream) indexes every module once per package, cached in
//! target/linux-cache; the modules the guest needs are then extracted with
//! `tar -x` of just their paths and put in the initramfs with a
//! `modules.dep` and the load order /init follows.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{note, read, run_checked, write, Result};

/// The modules the guest loads, with everything they depend on.
pub const ROOT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "ext4",
    // The SMCCC TRNG as a hardware RNG (/dev/hwrng), where the hypervisor offers one.
    "arm_smccc_trng",
];

/// Where the initramfs lists the modules' paths in load order (dependencies
/// first), one a line; /init insmods them in that order.
pub const LOAD_ORDER: &str = "lib/modules/load-order";

/// One module of the kernel package, from its `.modinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`.
    pub name: String,
    /// Its path in the package, without the leading `./`, e.g.
    /// `lib/modules/6.1.0-50-arm64/kernel/fs/ext4/ext4.ko` (maybe `.ko.xz`).
    pub path: String,
    /// `depends=`: module names.
    pub depends: Vec<String>,
    /// The `pre:` part of `softdep=`: module names or aliases, loaded
    /// before it if the package has them (ext4 asks for `crypto-crc32c`).
    pub soft_pre: Vec<String>,
    /// `alias=` values that are plain names (no `:`, `*`, `,` or `(`), which
    /// is what a softdep names.
    pub aliases: Vec<String>,
}

/// The `key=value` strings of a `.modinfo` section.
fn modinfo_fields(section: &[u8]) -> Vec<(String, String)> {
    section
        .split(|&b| b == 0)
        .filter_map(|f| {
            let s = String::from_utf8_lossy(f);
            let (k, v) = s.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Parses a (decompressed) module's `.modinfo`.
pub fn modinfo(path: &str, elf: &[u8]) -> Result<ModInfo> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).map_err(|e| format!("{path}: not an ELF: {e}"))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| format!("{path}: no .modinfo section"))?;
    let data = section
        .data()
        .map_err(|e| format!("{path}: .modinfo: {e}"))?;
    let mut m = ModInfo {
        name: String::new(),
        path: path.to_owned(),
        depends: Vec::new(),
        soft_pre: Vec::new(),
        aliases: Vec::new(),
    };
    for (k, v) in modinfo_fields(data) {
        match k.as_str() {
            "name" => m.name = v,
            "depends" => m.depends.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned),
            ),
            "softdep" => m.soft_pre.extend(soft_pre(&v)),
            "alias" if !v.contains([':', '*', ',', '(']) && !v.contains(char::is_whitespace) => {
                m.aliases.push(v)
            }
            _ => {}
        }
    }
    if m.name.is_empty() {
        // Old modules have no name=: the file name, `-` read as `_`.
        m.name = module_name_of(path);
    }
    Ok(m)
}

/// The module name a path stands for: the file name without `.ko[.xz|.zst|.gz]`,
/// `-` as `_` (as the kernel and kmod treat them).
pub fn module_name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The names after `pre:` in a softdep value such as `pre: crc32c post: x`.
fn soft_pre(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pre = false;
    for w in v.split_whitespace() {
        match w {
            "pre:" => pre = true,
            "post:" => pre = false,
            _ if pre => out.push(w.to_owned()),
            _ => {}
        }
    }
    out
}

/// The order to load `roots` and what they depend on: each module after
/// all its dependencies, each once, roots in the given order otherwise.
/// `deps` maps every module name to the modules it needs. A dependency
/// missing from `deps`, or a cycle, is an error naming the chain.
pub fn load_order(roots: &[&str], deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        deps: &BTreeMap<String, Vec<String>>,
        chain: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(at) = chain.iter().position(|c| c == name) {
            let mut cycle = chain[at..].to_vec();
            cycle.push(name.to_owned());
            return Err(format!("module dependency cycle: {}", cycle.join(" -> ")));
        }
        let Some(needs) = deps.get(name) else {
            return Err(if chain.is_empty() {
                format!("module {name} is not in the kernel package")
            } else {
                format!(
                    "module {name} (needed by {}) is not in the kernel package",
                    chain.join(" -> ")
                )
            });
        };
        chain.push(name.to_owned());
        for d in needs {
            visit(d, deps, chain, done, order)?;
        }
        chain.pop();
        done.insert(name.to_owned());
        order.push(name.to_owned());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for r in roots {
        visit(r, deps, &mut Vec::new(), &mut done, &mut order)?;
    }
    Ok(order)
}

/// Decompresses a module file by its extension (`.ko` as is; `.ko.xz` and
/// `.ko.zst` with the `xz` and `zstd` tools, `.ko.gz` in process).
fn decompress(path: &str, data: Vec<u8>) -> Result<Vec<u8>> {
    let tool: &[&str] = if path.ends_with(".ko") {
        return Ok(data);
    } else if path.ends_with(".ko.gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{path}: gzip: {e}"))?;
        return Ok(out);
    } else if path.ends_with(".ko.xz") {
        &["xz", "-dc"]
    } else if path.ends_with(".ko.zst") {
        &["zstd", "-dc"]
    } else {
        return Err(format!("{path}: not a kernel module"));
    };
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{path}: cannot run {}: {e}", tool[0]))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| format!("{path}: no stdin for {}", tool[0]))?;
    // Write from a thread: the tool's output pipe could fill first.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{path}: {}: {e}", tool[0]))?;
    let wrote = writer
        .join()
        .map_err(|_| format!("{path}: writer panicked"))?;
    if !out.status.success() {
        return Err(format!(
            "{path}: {} failed: {}",
            tool[0],
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    wrote.map_err(|e| format!("{path}: writing to {}: {e}", tool[0]))?;
    Ok(out.stdout)
}

/// Is this a kernel module's file name (compressed or not)?
fn is_module(path: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|e| path.ends_with(e))
}

/// The value of an octal tar header field.
fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A NUL-terminated string field.
fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Calls `f(path, read)` for every regular file of a tar stream (ustar,
/// GNU long names, pax `path=`), `path` without a leading `./`; `f` returns
/// whether it wants the contents (then `read` holds them), else they are
/// skipped.
fn tar_files(
    mut r: impl Read,
    mut want: impl FnMut(&str) -> bool,
    mut f: impl FnMut(&str, Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut header = [0u8; 512];
    let mut long_name: Option<String> = None;
    loop {
        r.read_exact(&mut header)
            .map_err(|e| format!("tar stream: {e}"))?;
        if header.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let size = octal(&header[124..136]).ok_or("tar stream: bad size field")?;
        let padded = size.div_ceil(512) * 512;
        let kind = header[156];
        let name = match long_name.take() {
            Some(n) => n,
            None => {
                let name = cstr(&header[0..100]);
                let prefix = if &header[257..262] == b"ustar" {
                    cstr(&header[345..500])
                } else {
                    String::new()
                };
                if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                }
            }
        };
        let mut body = |keep: bool| -> Result<Vec<u8>> {
            let mut data = Vec::new();
            if keep {
                (&mut r)
                    .take(size)
                    .read_to_end(&mut data)
                    .map_err(|e| format!("tar stream: {e}"))?;
                std::io::copy(&mut (&mut r).take(padded - size), &mut std::io::sink())
            } else {
                std::io::copy(&mut (&mut r).take(padded), &mut std::io::sink())
            }
            .map_err(|e| format!("tar stream: {e}"))?;
            Ok(data)
        };
        match kind {
            // GNU long name: the next entry's name.
            b'L' => {
                let data = body(true)?;
                long_name = Some(cstr(&data));
            }
            // pax extended header: its path= is the next entry's name.
            b'x' => {
                let data = body(true)?;
                let text = String::from_utf8_lossy(&data);
                long_name = text.lines().find_map(|l| {
                    let (_, kv) = l.split_once(' ')?;
                    kv.strip_prefix("path=").map(str::to_owned)
                });
            }
            b'0' | 0 => {
                let path = name.trim_start_matches("./").to_owned();
                if want(&path) {
                    let data = body(true)?;
                    f(&path, data)?;
                } else {
                    body(false)?;
                }
            }
            _ => {
                body(false)?;
            }
        }
    }
}

/// One index line: path, name, depends, softdep pre, aliases (tab-separated,
/// the lists comma-separated).
fn index_line(m: &ModInfo) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\n",
        m.path,
        m.name,
        m.depends.join(","),
        m.soft_pre.join(","),
        m.aliases.join(",")
    )
}

fn parse_index(text: &str) -> Result<Vec<ModInfo>> {
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 5 {
                return Err(format!("bad module index line {l:?}"));
            }
            Ok(ModInfo {
                path: f[0].to_owned(),
                name: f[1].to_owned(),
                depends: list(f[2]),
                soft_pre: list(f[3]),
                aliases: list(f[4]),
            })
        })
        .collect()
}

/// Every module of the kernel package `deb`, from its `.modinfo`: read
/// once from the package (a few seconds), then from `index` (the cache).
pub fn index(deb: &Path, index: &Path) -> Result<Vec<ModInfo>> {
    if let Ok(text) = std::fs::read_to_string(index) {
        return parse_index(&text);
    }
    note(&format!(
        "linux: indexing the kernel modules of {} (.modinfo of each)",
        deb.display()
    ));
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run dpkg-deb: {e}"))?;
    let stdout = child.stdout.take().ok_or("dpkg-deb: no stdout")?;
    let mut mods = Vec::new();
    let walked = tar_files(
        BufReader::with_capacity(1 << 20, stdout),
        |p| p.starts_with("lib/modules/") && is_module(p),
        |p, data| {
            mods.push(modinfo(p, &decompress(p, data)?)?);
            Ok(())
        },
    );
    let status = child.wait().map_err(|e| format!("dpkg-deb: {e}"))?;
    walked?;
    if !status.success() {
        return Err(format!("dpkg-deb --fsys-tarfile {} failed", deb.display()));
    }
    if mods.is_empty() {
        return Err(format!("{}: no kernel modules in it", deb.display()));
    }
    let text: String = mods.iter().map(index_line).collect();
    write(index, text.as_bytes())?;
    note(&format!("linux: {} modules indexed", mods.len()));
    Ok(mods)
}

/// The dependency map [`load_order`] walks: each module's `depends=`, then
/// those of its softdep `pre:` names that the package has (by module name
/// or alias; one it lacks is skipped, as modprobe does).
pub fn dep_map(mods: &[ModInfo]) -> BTreeMap<String, Vec<String>> {
    let mut by_alias: BTreeMap<&str, &str> = BTreeMap::new();
    for m in mods {
        for a in &m.aliases {
            by_alias.entry(a.as_str()).or_insert(m.name.as_str());
        }
    }
    let names: BTreeSet<&str> = mods.iter().map(|m| m.name.as_str()).collect();
    mods.iter()
        .map(|m| {
            let mut deps = m.depends.clone();
            for s in &m.soft_pre {
                let s = s.replace('-', "_");
                let found = if names.contains(s.as_str()) {
                    Some(s.as_str())
                } else {
                    by_alias
                        .get(s.as_str())
                        .or_else(|| by_alias.get(s.replace('_', "-").as_str()))
                        .copied()
                };
                if let Some(f) = found {
                    if f != m.name && !deps.iter().any(|d| d == f) {
                        deps.push(f.to_owned());
                    }
                }
            }
            (m.name.clone(), deps)
        })
        .collect()
}

/// The modules for the initramfs: `(path in the initramfs, contents)` in
/// load order, the initramfs's `modules.dep` and the load-order file.
pub struct Selected {
    /// `(path, decompressed .ko)`, dependencies first.
    pub modules: Vec<(String, Vec<u8>)>,
    /// `lib/modules/VERSION/modules.dep` text (hard dependencies, as depmod
    /// writes them, for busybox modprobe).
    pub modules_dep: String,
    /// [`LOAD_ORDER`] text: absolute paths, one a line.
    pub load_order: String,
    /// Names in load order.
    pub names: Vec<String>,
}

/// Resolves [`ROOT_MODULES`] and their dependencies in the kernel package
/// `deb` and extracts them (once, into `root`, the cache's unpacked tree).
pub fn select(deb: &Path, cache: &Path, root: &Path) -> Result<Selected> {
    let deb_name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: no file name", deb.display()))?;
    let mods = index(deb, &cache.join(format!("{deb_name}.modules")))?;
    let names = load_order(ROOT_MODULES, &dep_map(&mods))?;
    let by_name: BTreeMap<&str, &ModInfo> = mods.iter().map(|m| (m.name.as_str(), m)).collect();
    let chosen: Vec<&ModInfo> = names
        .iter()
        .map(|n| {
            by_name
                .get(n.as_str())
                .copied()
                .ok_or_else(|| format!("module {n} vanished from the index"))
        })
        .collect::<Result<_>>()?;
    let missing: Vec<String> = chosen
        .iter()
        .filter(|m| !root.join(&m.path).exists())
        .map(|m| format!("./{}", m.path))
        .collect();
    if !missing.is_empty() {
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("deb=$1; root=$2; shift 2; dpkg-deb --fsys-tarfile \"$deb\" | tar -x -C \"$root\" \"$@\"")
            .arg("sh")
            .arg(deb)
            .arg(root)
            .args(&missing);
        run_checked(&mut cmd)?;
    }
    let mut modules = Vec::new();
    for m in &chosen {
        let data = decompress(&m.path, read(&root.join(&m.path))?)?;
        let plain = match m.path.find(".ko") {
            Some(i) => format!("{}.ko", &m.path[..i]),
            None => m.path.clone(),
        };
        modules.push((plain, data));
    }
    let path_of: BTreeMap<&str, &str> = names
        .iter()
        .zip(&modules)
        .map(|(n, (p, _))| (n.as_str(), p.as_str()))
        .collect();
    // modules.dep: paths relative to lib/modules/VERSION/; each module's
    // hard dependencies, all of them, the last to be loaded first.
    let hard: BTreeMap<String, Vec<String>> = mods
        .iter()
        .map(|x| (x.name.clone(), x.depends.clone()))
        .collect();
    let mut modules_dep = String::new();
    for n in &names {
        let mut deps = load_order(&[n.as_str()], &hard)?;
        deps.pop();
        deps.reverse();
        let rel = |name: &str| -> String {
            let p = path_of.get(name).copied().unwrap_or(name);
            p.splitn(4, '/').nth(3).unwrap_or(p).to_owned()
        };
        modules_dep.push_str(&format!(
            "{}:{}\n",
            rel(n),
            deps.iter()
                .map(|d| format!(" {}", rel(d)))
                .collect::<String>()
        ));
    }
    let load_order: String = modules.iter().map(|(p, _)| format!("/{p}\n")).collect();
    Ok(Selected {
        modules,
        modules_dep,
        load_order,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn load_order_puts_dependencies_first_once() {
        // Debian 6.1's: ext4 needs jbd2, mbcache, crc16 (and, softly, crc32c).
        let deps = map(&[
            ("virtio_mmio", &[]),
            ("virtio_blk", &[]),
            ("virtio_net", &["net_failover"]),
            ("net_failover", &["failover"]),
            ("failover", &[]),
            ("ext4", &["jbd2", "mbcache", "crc16", "crc32c_generic"]),
            ("jbd2", &["crc32c_generic"]),
            ("mbcache", &[]),
            ("crc16", &[]),
            ("crc32c_generic", &[]),
            ("arm_smccc_trng", &[]),
            ("unrelated", &["ext4"]),
        ]);
        assert_eq!(
            load_order(ROOT_MODULES, &deps),
            Ok([
                "virtio_mmio",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4",
                "arm_smccc_trng"
            ]
            .map(str::to_owned)
            .to_vec())
        );
        // Every module comes after all it needs.
        let order = load_order(&["unrelated", "ext4"], &deps).expect("an order");
        for (i, m) in order.iter().enumerate() {
            for d in &deps[m] {
                assert!(order[..i].contains(d), "{d} before {m}: {order:?}");
            }
        }
        assert_eq!(order.last().map(String::as_str), Some("unrelated"));
    }

    #[test]
    fn load_order_reports_cycles_and_missing_modules() {
        let deps = map(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["e"])]);
        assert_eq!(
            load_order(&["a"], &deps),
            Err("module dependency cycle: a -> b -> c -> a".to_owned())
        );
        assert_eq!(
            load_order(&["d"], &deps),
            Err("module e (needed by d) is not in the kernel package".to_owned())
        );
        assert_eq!(
            load_order(&["zz"], &deps),
            Err("module zz is not in the kernel package".to_owned())
        );
        let selfish = map(&[("s", &["s"])]);
        assert!(load_order(&["s"], &selfish).is_err());
    }

    #[test]
    fn softdeps_resolve_by_alias_and_are_optional() {
        let m = |name: &str, depends: &[&str], soft: &[&str], aliases: &[&str]| ModInfo {
            name: name.to_owned(),
            path: format!("lib/modules/v/kernel/{name}.ko"),
            depends: depends.iter().map(|s| s.to_string()).collect(),
            soft_pre: soft.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        };
        let mods = [
            m("ext4", &["jbd2"], &["crypto-crc32c", "not-there"], &[]),
            m("jbd2", &[], &[], &[]),
            m("crc32c_generic", &[], &[], &["crypto-crc32c", "crc32c"]),
        ];
        let deps = dep_map(&mods);
        assert_eq!(deps["ext4"], ["jbd2", "crc32c_generic"]);
        assert_eq!(
            load_order(&["ext4"], &deps),
            Ok(["jbd2", "crc32c_generic", "ext4"]
                .map(str::to_owned)
                .to_vec())
        );
    }

    #[test]
    fn modinfo_strings_and_names() {
        let f = modinfo_fields(b"license=GPL\0depends=jbd2,mbcache\0softdep=pre: crc32c\0\0");
        assert_eq!(f[1], ("depends".to_owned(), "jbd2,mbcache".to_owned()));
        assert_eq!(soft_pre("pre: a b post: c"), ["a", "b"]);
        assert_eq!(module_name_of("x/kernel/lib/crc-itu-t.ko.xz"), "crc_itu_t");
        assert_eq!(module_name_of("ext4.ko"), "ext4");
    }

    #[test]
    fn tar_stream_with_a_gnu_long_name() {
        fn header(name: &str, kind: u8, size: usize) -> Vec<u8> {
            let mut h = vec![0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
            h[156] = kind;
            h
        }
        fn pad(mut v: Vec<u8>) -> Vec<u8> {
            v.resize(v.len().div_ceil(512) * 512, 0);
            v
        }
        let long = format!("./lib/modules/v/{}/m.ko", "d".repeat(120));
        let mut t = header("././@LongLink", b'L', long.len() + 1);
        t.extend(pad(format!("{long}\0").into_bytes()));
        t.extend(header("truncated", b'0', 3));
        t.extend(pad(b"abc".to_vec()));
        t.extend(header("./skip.txt", b'0', 600));
        t.extend(pad(vec![7; 600]));
        t.extend(header("./lib/", b'5', 0));
        t.extend(header("./lib/x.ko", b'0', 1));
        t.extend(pad(b"z".to_vec()));
        t.extend(vec![0u8; 1024]);
        let mut got = Vec::new();
        tar_files(&t[..], is_module, |p, d| {
            got.push((p.to_owned(), d));
            Ok(())
        })
        .expect("a valid stream");
        assert_eq!(
            got,
            [
                (long[2..].to_owned(), b"abc".to_vec()),
                ("lib/x.ko".to_owned(), b"z".to_vec())
            ]
        );
    }
}
