//! hyp-core's module layering, checked on the source: each top-level module
//! uses only the modules listed before it in `LAYERS` (so no import circle
//! exists between them), and no source file grows past `MAX_LINES` unless it
//! is listed with the one concept that keeps it whole.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom to top: a module may use its own layer and those below.
const LAYERS: [&str; 9] = [
    "platform", "arch", "stats", "vcpu", "vm", "calls", "exit", "run", "boot",
];

const MAX_LINES: usize = 600;

/// Files allowed past `MAX_LINES`, each one concept.
const LONG: [(&str, &str); 4] = [
    (
        "vm/control.rs",
        "the control state and its page-ownership transitions",
    ),
    ("exit/idregs.rs", "the ID-register sanitising table"),
    ("calls/smccc.rs", "the SMCCC/PSCI/vendor ABI"),
    ("exit/policy.rs", "the exit policy"),
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn top_module(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules `text` names as `crate::NAME`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        // Not `hyp_core::crate::` or a longer identifier ending in `crate`.
        if i > 0 {
            let b = text.as_bytes()[i - 1];
            if b.is_ascii_alphanumeric() || b == b'_' {
                continue;
            }
        }
        let rest = &text[i + 7..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            // `crate::{a, b}`
            if let Some(list) = rest.strip_prefix('{') {
                let end = list.find('}').unwrap_or(list.len());
                for part in list[..end].split(',') {
                    let n: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !n.is_empty() {
                        out.insert(n);
                    }
                }
            }
        } else {
            out.insert(name);
        }
    }
    out
}

#[test]
fn modules_use_only_lower_layers() {
    let root = src();
    let mut all = Vec::new();
    files(&root, &mut all);
    let layer = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut bad = Vec::new();
    for f in &all {
        let rel = f.strip_prefix(&root).unwrap();
        if rel == Path::new("lib.rs") {
            continue;
        }
        let me = top_module(rel);
        let my = layer(&me).unwrap_or_else(|| panic!("{} is in no layer", rel.display()));
        for used in uses(&fs::read_to_string(f).unwrap()) {
            match layer(&used) {
                Some(l) if l <= my => {}
                Some(_) => bad.push(format!("{} ({me}) uses crate::{used}", rel.display())),
                None => bad.push(format!("{} uses crate::{used}, in no layer", rel.display())),
            }
        }
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_a_use_of_a_higher_layer() {
    assert!(uses("use crate::exit::policy;").contains("exit"));
    assert!(uses("    crate::run::run_cpu(0)").contains("run"));
    assert!(uses("use crate::{stats, vm};").contains("vm"));
    assert!(uses("hyp_core::exit::x; my_crate::vm").is_empty());
}

#[test]
fn files_stay_small_or_are_one_concept() {
    let root = src();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut bad = Vec::new();
    for f in &all {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let n = fs::read_to_string(f).unwrap().lines().count();
        if n > MAX_LINES && !LONG.iter().any(|(p, _)| *p == rel) {
            bad.push(format!("{rel}: {n} lines"));
        }
    }
    assert!(
        bad.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        bad.join("\n")
    );
}
