//! Every compile-time rule guards an API that the hypervisor really uses.
//!
//! Each case under `tests/ui/` names, in `// API: a | b` lines, the calls it is about. This test
//! finds each (at least one alternative per line) in the production sources of the hypervisor's
//! crates: `src/` of hyp-core, s2mm, vgic and the platform crates, without their `#[cfg(test)]`
//! modules. A rule about an API nothing calls proves nothing about the hypervisor, so such a case
//! fails here.

mod common;

/// The crates whose code runs at EL2.
const PRODUCTION: &[&str] = &[
    "crates/hyp-core/src",
    "crates/s2mm/src",
    "crates/vgic/src",
    "crates/platform-qemu/src",
    "crates/platform-rpi4/src",
];

/// Production code of one file: everything before its `#[cfg(test)] mod ...` (test module),
/// comments dropped.
fn production_code(text: &str) -> String {
    let end = text
        .match_indices("#[cfg(test)]")
        .find(|(i, m)| text[i + m.len()..].trim_start().starts_with("mod "))
        .map_or(text.len(), |(i, _)| i);
    text[..end]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_compile_rule_targets_an_api_with_a_production_caller() {
    let root = common::workspace_root();
    let mut sources = Vec::new();
    for d in PRODUCTION {
        let mut files = Vec::new();
        common::source_files(&root.join(d), &["rs"], &mut files);
        assert!(!files.is_empty(), "no sources under {d}");
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read source");
            sources.push((f, production_code(&text)));
        }
    }
    let mut cases = Vec::new();
    for kind in ["fail", "pass"] {
        common::source_files(
            &root.join("crates/barriers/tests/ui").join(kind),
            &["rs"],
            &mut cases,
        );
    }
    assert!(cases.len() >= 23, "only {} compile cases", cases.len());
    let mut missing = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).expect("read case");
        let apis: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("// API: "))
            .collect();
        let name = case.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        if apis.is_empty() {
            missing.push(format!("{name}: no `// API:` line"));
        }
        assert!(
            text.lines().any(|l| l.starts_with("// Rule")),
            "{name}: no `// Rule` comment"
        );
        for line in apis {
            let alts: Vec<&str> = line.split(" | ").map(str::trim).collect();
            let hit = sources
                .iter()
                .find(|(_, code)| alts.iter().any(|a| code.contains(a)));
            match hit {
                Some((f, _)) => eprintln!(
                    "{name}: `{line}` called in {}",
                    f.strip_prefix(&root).unwrap_or(f).display()
                ),
                None => missing.push(format!("{name}: `{line}` has no production caller")),
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn production_code_drops_tests_and_comments() {
    let t = "fn a() { isb(x) } // enter_guest(\n#[cfg(test)]\nfn t() {}\nfn b() { finish() }\n#[cfg(test)]\nmod tests { enter_guest( }";
    let c = production_code(t);
    assert!(c.contains("isb("));
    assert!(
        c.contains("finish()"),
        "a cfg(test) item is not the test module"
    );
    assert!(!c.contains("enter_guest("));
}
