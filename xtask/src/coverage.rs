//! `cargo xtask coverage [--crate NAME] [--html]`: line coverage of one
//! host-tested crate by its own host tests (unit and integration tests),
//! measured with cargo-llvm-cov (source-based coverage, `-C instrument-coverage`).
//!
//! It installs cargo-llvm-cov (and the `llvm-tools` component) when missing,
//! runs `cargo llvm-cov -p NAME --lcov`, writes the lcov file to
//! `target/coverage/NAME.lcov` (for an editor's coverage view) and prints one
//! row per source file of the crate (`crates/NAME/src/`) and their total.
//! Files of the other crates the tests also execute (s2mm, barriers, ... when
//! measuring hyp-core) are left out of the table and the total. Source files
//! that produced no coverage record are listed after the table: they are not
//! built for the host (hyp-core's `arch`, `boot`, `console`, `idregs_emul` and
//! `vm` are `cfg(target_arch = "aarch64")`), or hold no executable code.
//!
//! A developer tool: `cargo xtask test` does not run it.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::{cargo, note, provision, root, run_checked, target_dir, Result};

/// The crates whose host tests `coverage` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CovCrate {
    /// crates/hyp-core (the EL2 core's host-testable modules).
    HypCore,
    /// crates/s2mm (stage-2 page tables).
    S2mm,
    /// crates/vgic (the virtual GIC).
    Vgic,
    /// crates/barriers (the synchronisation types).
    Barriers,
}

impl CovCrate {
    /// The cargo package name.
    pub fn package(self) -> &'static str {
        match self {
            CovCrate::HypCore => "hyp-core",
            CovCrate::S2mm => "s2mm",
            CovCrate::Vgic => "vgic",
            CovCrate::Barriers => "barriers",
        }
    }

    /// The crate's directory relative to the workspace root.
    pub fn dir(self) -> String {
        format!("crates/{}", self.package())
    }
}

/// One source file's figures from an lcov record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCov {
    /// The `SF:` path as written (absolute for cargo-llvm-cov).
    pub path: String,
    /// Lines with code (`LF:`).
    pub lines: u64,
    /// Of those, lines executed at least once (`LH:`).
    pub hit: u64,
    /// Functions (`FNF:`).
    pub functions: u64,
    /// Of those, functions executed at least once (`FNH:`).
    pub functions_hit: u64,
}

impl FileCov {
    /// `hit` of `total` in percent (100 of nothing).
    fn percent(hit: u64, total: u64) -> f64 {
        if total == 0 {
            100.0
        } else {
            hit as f64 * 100.0 / total as f64
        }
    }
}

/// Parses the per-file summaries (`SF`, `LF`, `LH`, `FNF`, `FNH`) of an lcov
/// trace file; records without `SF:` are skipped.
pub fn parse_lcov(text: &str) -> Result<Vec<FileCov>> {
    let mut files = Vec::new();
    let mut cur: Option<FileCov> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let num = |v: &str| -> Result<u64> {
            v.trim()
                .parse()
                .map_err(|_| format!("lcov line {}: bad number in `{line}`", n + 1))
        };
        if let Some(path) = line.strip_prefix("SF:") {
            cur = Some(FileCov {
                path: path.to_owned(),
                lines: 0,
                hit: 0,
                functions: 0,
                functions_hit: 0,
            });
        } else if line == "end_of_record" {
            files.extend(cur.take());
        } else if let Some(f) = cur.as_mut() {
            if let Some(v) = line.strip_prefix("LF:") {
                f.lines = num(v)?;
            } else if let Some(v) = line.strip_prefix("LH:") {
                f.hit = num(v)?;
            } else if let Some(v) = line.strip_prefix("FNF:") {
                f.functions = num(v)?;
            } else if let Some(v) = line.strip_prefix("FNH:") {
                f.functions_hit = num(v)?;
            }
        }
    }
    files.extend(cur);
    Ok(files)
}

/// The records of files under `src_dir` (an absolute path ending in `/`),
/// with their paths made relative to `root`, sorted by path.
pub fn crate_files(all: Vec<FileCov>, root: &Path, src_dir: &str) -> Vec<FileCov> {
    let root = format!("{}/", root.display());
    let mut files: Vec<FileCov> = all
        .into_iter()
        .filter(|f| f.path.starts_with(src_dir))
        .map(|mut f| {
            if let Some(rel) = f.path.strip_prefix(&root) {
                f.path = rel.to_owned();
            }
            f
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// The table `coverage` prints: one row per file, then the total.
pub fn table(package: &str, files: &[FileCov]) -> String {
    let mut out = format!(
        "{package}: line coverage by its host tests (cargo llvm-cov -p {package})\n\
         {:>7} {:>7} {:>7}  {:>9}  file\n",
        "lines", "missed", "cover", "functions"
    );
    let row = |out: &mut String, lines: u64, hit: u64, fns: u64, fns_hit: u64, name: &str| {
        let cover = FileCov::percent(hit, lines);
        let fns = format!("{fns_hit}/{fns}");
        out.push_str(&format!(
            "{lines:>7} {:>7} {cover:>6.2}%  {fns:>9}  {name}\n",
            lines - hit
        ));
    };
    for f in files {
        row(
            &mut out,
            f.lines,
            f.hit,
            f.functions,
            f.functions_hit,
            &f.path,
        );
    }
    let sum = |g: fn(&FileCov) -> u64| files.iter().map(g).sum::<u64>();
    row(
        &mut out,
        sum(|f| f.lines),
        sum(|f| f.hit),
        sum(|f| f.functions),
        sum(|f| f.functions_hit),
        &format!("TOTAL ({} files)", files.len()),
    );
    out
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| format!("cannot read {}: {e}", d.display()))?;
        for e in entries {
            let p = e
                .map_err(|e| format!("cannot read {}: {e}", d.display()))?
                .path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `cargo xtask coverage`.
pub fn coverage(krate: CovCrate, html: bool) -> Result<()> {
    let package = krate.package();
    provision::llvm_tools()?;
    provision::cargo_tool(
        "llvm-cov",
        "cargo-llvm-cov",
        "needed by `cargo xtask coverage`",
    )?;
    let out_dir = target_dir().join("coverage");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let lcov = out_dir.join(format!("{package}.lcov"));
    note(&format!(
        "running {package}'s host tests with coverage instrumentation \
         (target/llvm-cov-target; the first run builds everything once)"
    ));
    // The tests' own output goes to stderr: stdout is the table alone.
    run_checked(
        cargo(&[
            "llvm-cov",
            "-p",
            package,
            "--lcov",
            "--output-path",
            &lcov.to_string_lossy(),
        ])
        .stdout(std::io::stderr()),
    )?;
    if html {
        let html_dir = out_dir.join(package);
        run_checked(&mut cargo(&[
            "llvm-cov",
            "report",
            "-p",
            package,
            "--html",
            "--output-dir",
            &html_dir.to_string_lossy(),
        ]))?;
        note(&format!(
            "HTML report: {}",
            html_dir.join("html").join("index.html").display()
        ));
    }
    let text = std::fs::read_to_string(&lcov)
        .map_err(|e| format!("cannot read {}: {e}", lcov.display()))?;
    let src = root().join(krate.dir()).join("src");
    let src_prefix = format!("{}/", src.display());
    let files = crate_files(parse_lcov(&text)?, root(), &src_prefix);
    if files.is_empty() {
        return Err(format!(
            "{} has no record under {src_prefix}: did the tests run?",
            lcov.display()
        ));
    }
    print!("{}", table(package, &files));
    let missing: Vec<String> = rust_files(&src)?
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(root()).unwrap_or(&p).display().to_string();
            (!files.iter().any(|f| f.path == rel)).then_some(rel)
        })
        .collect();
    if !missing.is_empty() {
        println!(
            "not in the figure (not built for the host, e.g. cfg(target_arch = \"aarch64\"), \
             or no executable code):"
        );
        for m in missing {
            println!("  {m}");
        }
    }
    note(&format!("lcov: {}", lcov.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LCOV: &str = "\
SF:/w/crates/hyp-core/src/inject.rs
FN:10,_RNvCs_inject
FNDA:3,_RNvCs_inject
FNF:4
FNH:3
DA:10,3
LF:200
LH:150
end_of_record
SF:/w/crates/s2mm/src/lib.rs
FNF:1
FNH:1
LF:10
LH:10
end_of_record
SF:/w/crates/hyp-core/src/exit.rs
FNF:2
FNH:0
LF:50
LH:0
end_of_record
";

    #[test]
    fn lcov_records() {
        let files = parse_lcov(LCOV).expect("parses");
        assert_eq!(files.len(), 3);
        assert_eq!(
            files[0],
            FileCov {
                path: "/w/crates/hyp-core/src/inject.rs".into(),
                lines: 200,
                hit: 150,
                functions: 4,
                functions_hit: 3,
            }
        );
        assert_eq!(FileCov::percent(files[0].hit, files[0].lines), 75.0);
        assert_eq!(FileCov::percent(0, 0), 100.0);
        assert!(parse_lcov("SF:x\nLF:zz\n").is_err());
    }

    #[test]
    fn only_the_crate_relative_and_sorted() {
        let files = crate_files(
            parse_lcov(LCOV).expect("parses"),
            Path::new("/w"),
            "/w/crates/hyp-core/src/",
        );
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "crates/hyp-core/src/exit.rs",
                "crates/hyp-core/src/inject.rs"
            ]
        );
        let t = table("hyp-core", &files);
        let total = t.lines().last().expect("a total row");
        // 250 lines, 100 missed, 60 %, 3 of 6 functions.
        assert!(total.contains("250"), "{total}");
        assert!(total.contains("100"), "{total}");
        assert!(total.contains("60.00%"), "{total}");
        assert!(total.contains("3/6"), "{total}");
        assert!(total.contains("TOTAL (2 files)"), "{total}");
    }
}
