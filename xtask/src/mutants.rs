//! `cargo xtask mutants [--file PATH]`: mutation testing of hyp-core with
//! cargo-mutants. Each mutant (a function body replaced by a default value,
//! an operator swapped, ...) is built and hyp-core's host tests run on it;
//! a mutant that no test notices (`missed`) points at logic the tests do
//! not pin down.
//!
//! It installs cargo-mutants when missing and runs
//! `cargo mutants -p hyp-core [-f PATH] -e ... --no-shuffle --timeout T --build-timeout B`
//! in a scratch copy of the tree (cargo-mutants' default; `target/` is not
//! copied, so the first build there compiles everything once). Every mutant
//! is bounded: its tests are stopped after `--timeout` seconds (outcome
//! `timeout`) and its build after `--build-timeout`. Results go to
//! `target/mutants/mutants.out/` (the previous run's to `mutants.out.old`);
//! it prints the counts (caught, missed, timeout, unviable) and every missed
//! and timed-out mutant.
//!
//! The modules hyp-core builds only for AArch64 (`run`, `boot`, and the
//! AArch64 halves of the folders, e.g. `arch/gic`, `exit/effects`) are
//! excluded (`-e`): the host tests never compile
//! them, and cargo-mutants, which does not evaluate `cfg`, would count each
//! of their mutants as missed. `--file` refuses them.
//!
//! Exit status as cargo-mutants': 0 every viable mutant caught, 2 some
//! missed, 3 some timed out. A developer tool: `cargo xtask test` does not
//! run it.

use std::path::Path;
use std::process::Command;

use crate::{note, provision, root, target_dir, Result};

/// The package whose mutants are tested.
const PACKAGE: &str = "hyp-core";
/// Its source directory, relative to the workspace root.
const SRC: &str = "crates/hyp-core/src/";

/// The outcome files cargo-mutants writes in `mutants.out/`, in the order the
/// summary gives them.
pub const OUTCOMES: [&str; 4] = ["caught", "missed", "timeout", "unviable"];

/// Counts and names of one run's mutants, read from `mutants.out/`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// (outcome, mutants) in [`OUTCOMES`] order.
    pub outcomes: Vec<(&'static str, Vec<String>)>,
}

impl Summary {
    /// Reads `caught.txt`, `missed.txt`, `timeout.txt` and `unviable.txt`
    /// (one mutant a line; a missing file is no mutant).
    pub fn read(dir: &Path) -> Summary {
        let outcomes = OUTCOMES
            .iter()
            .map(|&o| {
                let text =
                    std::fs::read_to_string(dir.join(format!("{o}.txt"))).unwrap_or_default();
                (o, parse_list(&text))
            })
            .collect();
        Summary { outcomes }
    }

    /// The mutants with `outcome`.
    pub fn of(&self, outcome: &str) -> &[String] {
        self.outcomes
            .iter()
            .find(|(o, _)| *o == outcome)
            .map_or(&[], |(_, m)| m.as_slice())
    }

    /// What `mutants` prints.
    pub fn render(&self, scope: &str) -> String {
        let total: usize = self.outcomes.iter().map(|(_, m)| m.len()).sum();
        let counts: Vec<String> = self
            .outcomes
            .iter()
            .map(|(o, m)| format!("{} {o}", m.len()))
            .collect();
        let mut out = format!("{scope}: {total} mutants: {}\n", counts.join(", "));
        for outcome in ["missed", "timeout"] {
            let list = self.of(outcome);
            if !list.is_empty() {
                out.push_str(&format!("{outcome}:\n"));
                for m in list {
                    out.push_str(&format!("  {m}\n"));
                }
            }
        }
        out
    }
}

/// The non-empty lines of an outcome file, in source order (file, line,
/// column; cargo-mutants writes them in the order they finished).
pub fn parse_list(text: &str) -> Vec<String> {
    let mut list: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    list.sort_by_cached_key(|m| source_position(m));
    list
}

/// `(file, line, column, rest)` of `path:line:col: description`; a line
/// in another form sorts by its text.
fn source_position(mutant: &str) -> (String, u32, u32, String) {
    let mut parts = mutant.splitn(4, ':');
    let (file, line, col, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    match (
        file,
        line.and_then(|l| l.parse().ok()),
        col.and_then(|c| c.parse().ok()),
    ) {
        (Some(f), Some(l), Some(c)) => (f.to_owned(), l, c, rest.unwrap_or("").to_owned()),
        _ => (mutant.to_owned(), 0, 0, String::new()),
    }
}

/// The modules a module file (`lib.rs` or a `mod.rs`) builds only for
/// AArch64 (`#[cfg(target_arch = "aarch64")]` before `pub mod NAME;`). The host
/// tests never compile them, so cargo-mutants, which does not evaluate
/// `cfg`, would report every mutant in them as missed.
pub fn aarch64_only_modules(lib_rs: &str) -> Vec<String> {
    let mut mods = Vec::new();
    let mut gated = false;
    for line in lib_rs.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        if line.replace(' ', "") == "#[cfg(target_arch=\"aarch64\")]" {
            gated = true;
            continue;
        }
        if gated {
            let name = line
                .strip_prefix("pub ")
                .unwrap_or(line)
                .strip_prefix("mod ")
                .and_then(|m| m.strip_suffix(';'));
            mods.extend(name.map(|n| n.trim().to_owned()));
        }
        gated = false;
    }
    mods
}

/// The `cargo mutants -e` globs of the source files of `mods` (a module's
/// `NAME.rs` and everything under `NAME/`).
pub fn excluded_globs(mods: &[String]) -> Vec<String> {
    mods.iter()
        .flat_map(|m| [format!("{SRC}{m}.rs"), format!("{SRC}{m}/**")])
        .collect()
}

/// Is the source file `rel` (relative to the root) part of one of `mods`?
fn in_modules(rel: &str, mods: &[String]) -> bool {
    let Some(path) = rel.strip_prefix(SRC) else {
        return false;
    };
    mods.iter().any(|m| {
        path.strip_prefix(m.as_str())
            .is_some_and(|rest| rest == ".rs" || rest.starts_with('/'))
    })
}

/// `file` as a path relative to the workspace root (what `cargo mutants -f`
/// matches), checked to be a Rust file of hyp-core.
fn relative_file(file: &str) -> Result<String> {
    // Relative to the current directory, or else to the workspace root.
    let path = Path::new(file);
    let abs = match std::env::current_dir() {
        Ok(cwd) if cwd.join(path).exists() => cwd.join(path),
        _ => root().join(path),
    };
    let abs = abs.canonicalize().map_err(|e| format!("{file}: {e}"))?;
    let root = root()
        .canonicalize()
        .map_err(|e| format!("{}: {e}", root().display()))?;
    let rel = abs
        .strip_prefix(&root)
        .map_err(|_| format!("{file} is not in the workspace {}", root.display()))?
        .to_string_lossy()
        .into_owned();
    if !rel.starts_with(SRC) || !rel.ends_with(".rs") {
        return Err(format!(
            "{file}: `cargo xtask mutants` mutates hyp-core: give a file under crates/hyp-core/src/"
        ));
    }
    Ok(rel)
}

/// hyp-core's AArch64-only modules, as paths below `src/` (`arch/gic`,
/// `run`): those of `lib.rs` and of every folder's `mod.rs`.
fn aarch64_only_paths() -> Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        let file = if prefix.is_empty() {
            "lib.rs"
        } else {
            "mod.rs"
        };
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for m in aarch64_only_modules(&text) {
            out.push(format!("{prefix}{m}"));
        }
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let sub = format!("{prefix}{name}");
            if e.path().join("mod.rs").exists() && !out.contains(&sub) {
                walk(&e.path(), &format!("{sub}/"), out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&root().join(SRC), "", &mut out)?;
    Ok(out)
}

/// `cargo xtask mutants`: the exit status to return (cargo-mutants').
pub fn mutants(file: Option<&str>, timeout: u64, build_timeout: u64) -> Result<u8> {
    let file = file.map(relative_file).transpose()?;
    let aarch64_only = aarch64_only_paths()?;
    if let Some(f) = file.as_deref().filter(|f| in_modules(f, &aarch64_only)) {
        return Err(format!(
            "{f} is built only for aarch64 (#[cfg(target_arch = \"aarch64\")] on its module): \
             the host tests never compile it, so every mutant in it would be `missed`"
        ));
    }
    provision::cargo_tool(
        "mutants",
        "cargo-mutants",
        "needed by `cargo xtask mutants`",
    )?;
    let out_dir = target_dir().join("mutants");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let (timeout, build_timeout) = (timeout.to_string(), build_timeout.to_string());
    let mut cmd = Command::new("cargo");
    cmd.args(["mutants", "-p", PACKAGE])
        .args(file.iter().flat_map(|f| ["-f", f.as_str()]))
        .args(
            excluded_globs(&aarch64_only)
                .iter()
                .flat_map(|g| ["-e", g.as_str()]),
        )
        .args(["--no-shuffle", "--timeout", &timeout])
        .args(["--build-timeout", &build_timeout])
        .arg("--output")
        .arg(&out_dir)
        .current_dir(root())
        // Each scratch copy builds into its own target/: a shared
        // CARGO_TARGET_DIR would let the copies and the real tree overwrite
        // each other's hyp-core.
        .env_remove("CARGO_TARGET_DIR");
    let scope = match &file {
        Some(f) => format!("{PACKAGE} mutants in {f}"),
        None => format!(
            "{PACKAGE} mutants (every file built for the host; not the aarch64-only {})",
            aarch64_only.join(", ")
        ),
    };
    note(&format!(
        "{scope}: each mutant's build is stopped after {build_timeout} s, its tests after \
         {timeout} s"
    ));
    note(&format!("$ {}", crate::show(&cmd)));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo mutants: {e}"))?;
    // 0: all caught; 2: some missed; 3: some timed out (cargo-mutants' exit codes).
    let code = match status.code() {
        Some(c @ (0 | 2 | 3)) => c as u8,
        _ => {
            return Err(format!(
                "cargo mutants failed ({status}); its logs are in {}",
                out_dir.join("mutants.out").display()
            ))
        }
    };
    let summary = Summary::read(&out_dir.join("mutants.out"));
    println!();
    print!("{}", summary.render(&scope));
    note(&format!(
        "outcomes, diffs and logs: {}",
        out_dir.join("mutants.out").display()
    ));
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_and_lists() {
        let s = Summary {
            outcomes: vec![
                ("caught", parse_list("a.rs:1:1: replace f -> u8 with 0\n\n")),
                (
                    "missed",
                    parse_list("a.rs:2:5: replace == with != in g\na.rs:9:1: replace h with ()\n"),
                ),
                ("timeout", Vec::new()),
                (
                    "unviable",
                    parse_list("a.rs:3:1: replace k -> &str with \"\"\n"),
                ),
            ],
        };
        assert_eq!(s.of("missed").len(), 2);
        assert_eq!(s.of("nonsense"), &[] as &[String]);
        let text = s.render("hyp-core mutants in a.rs");
        assert!(
            text.starts_with(
                "hyp-core mutants in a.rs: 4 mutants: 1 caught, 2 missed, 0 timeout, 1 unviable\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("missed:\n  a.rs:2:5: replace == with != in g\n"),
            "{text}"
        );
        assert!(!text.contains("timeout:\n"), "{text}");
    }

    #[test]
    fn lists_are_in_source_order() {
        let list = parse_list(
            "a.rs:101:59: replace | with ^\na.rs:97:9: replace | with ^\n\
             a.rs:27:29: delete -\na.rs:101:40: replace << with >>\n",
        );
        assert_eq!(
            list,
            [
                "a.rs:27:29: delete -",
                "a.rs:97:9: replace | with ^",
                "a.rs:101:40: replace << with >>",
                "a.rs:101:59: replace | with ^",
            ]
        );
    }

    #[test]
    fn aarch64_only_modules_of_lib_rs() {
        let lib = "pub mod control;\n#[cfg(target_arch = \"aarch64\")]\npub mod arch;\n\
                   #[cfg(test)]\nmod t;\n#[cfg(target_arch = \"aarch64\")]\n// why\nmod vm;\n\
                   pub mod exit;\n";
        let mods = aarch64_only_modules(lib);
        assert_eq!(mods, ["arch", "vm"]);
        assert_eq!(
            excluded_globs(&mods),
            [
                "crates/hyp-core/src/arch.rs",
                "crates/hyp-core/src/arch/**",
                "crates/hyp-core/src/vm.rs",
                "crates/hyp-core/src/vm/**",
            ]
        );
        assert!(in_modules("crates/hyp-core/src/arch/gic.rs", &mods));
        assert!(in_modules("crates/hyp-core/src/vm.rs", &mods));
        assert!(!in_modules("crates/hyp-core/src/vmid.rs", &mods));
        assert!(!in_modules("crates/hyp-core/src/exit.rs", &mods));
        // The real tree: the modules the host build leaves out, at any depth.
        let real = aarch64_only_paths().expect("hyp-core's module files");
        for m in ["run", "boot", "arch/gic", "exit/effects", "vm/state"] {
            assert!(real.iter().any(|r| r == m), "{real:?}");
        }
        for m in ["arch", "exit", "exit/policy", "vm/control"] {
            assert!(!real.iter().any(|r| r == m), "{real:?}");
        }
    }

    #[test]
    fn files_outside_hyp_core_are_refused() {
        assert!(relative_file(&root().join("xtask/src/main.rs").to_string_lossy()).is_err());
        assert!(relative_file("crates/hyp-core/src/no-such-file.rs").is_err());
        let inject = root().join("crates/hyp-core/src/vcpu/inject.rs");
        for path in [
            &*inject.to_string_lossy(),
            "crates/hyp-core/src/vcpu/inject.rs",
        ] {
            assert_eq!(
                relative_file(path).as_deref(),
                Ok("crates/hyp-core/src/vcpu/inject.rs")
            );
        }
    }
}
