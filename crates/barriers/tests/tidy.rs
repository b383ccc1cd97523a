//! Tidy: raw barrier and system-register instructions, line by line.
//!
//! Outside `crates/barriers/src` every system-register write goes through `barriers::regs` and every
//! barrier through `barriers`, so each write carries its pending token and each ISB/DSB/TLBI a named
//! consumer. What cannot (the exception vectors, the world switch, the boot entry code, all of which
//! run before or around any Rust) is written as assembly, and there **each** `msr`, `tlbi`, `dsb`,
//! `isb`, `dc`, `ic`, `at`, `eret` (`eretaa`, `eretab`) and `sb` carries a marker comment on the same
//! line or on the line immediately above it:
//!
//! ```text
//!     msr     elr_el2, x2             // barrier: C5.1.5.1 — special-purpose register, program order
//!     // barrier: D24.1.2.2 — the ERET is the CSE for the guest-only writes
//!     eret
//! ```
//!
//! The rule must be an Arm ARM reference (a section such as D24.1.2.2 or C5.1.5.1, or a rule
//! identifier such as R_DDMVT), an `ARM-RULES.md` section, or one of [`NAMED_RULES`]; the reason
//! after the `—` (or `--`) must not be empty. A marker that covers no such instruction fails too,
//! so markers cannot go stale. Every ERET in hypervisor assembly must also be followed by a
//! speculation barrier (`dsb nsh; isb`, or `sb`).
//!
//! Scanned: `asm!`, `global_asm!` and `naked_asm!` string literals in `*.rs` files (wherever they are:
//! functions, macro bodies, `concat!` pieces), and whole `*.S`/`*.s` files, under `crates/`. Rust code
//! outside those strings (a function named `isb`, a panic message) and comments are not
//! instructions. Instructions are found at the start of an assembly statement: after the start of a
//! string literal, a newline (real or `\n`), a `;` or a label. Not found: instructions hidden behind
//! `.inst` encodings or assembler macros defined elsewhere.

mod common;

use std::collections::BTreeMap;

/// The mnemonics that need a marker.
const MNEMONICS: &[&str] = &[
    "msr", "tlbi", "dsb", "isb", "dc", "ic", "at", "eret", "eretaa", "eretab", "sb",
];

/// Directories exempt as a whole (path prefixes relative to the workspace root), and why.
const EXEMPT_DIRS: &[(&str, &str)] = &[
    (
        "crates/barriers/src/",
        "the typed API itself: each instruction here is issued by discharging a token",
    ),
    (
        "crates/guest-",
        "guests run at EL1 under stage 2: their barriers synchronise only their own EL1&0 context, \
         never EL2's, and they cannot use barriers::regs (EL2 registers)",
    ),
    (
        "crates/pvmfw/",
        "the protected-VM firmware is a guest's code: it runs at EL1 in the VM under stage 2, \
         so its barriers synchronise only the VM's own EL1&0 context, like every guest's",
    ),
    (
        "crates/host/",
        "the host VM is a guest too (pKVM model): it runs at EL1 under the hypervisor's stage 2, \
         links guest-rt rather than barriers, and its barriers (an ISB before a counter read) \
         synchronise only its own EL1&0 context",
    ),
];

/// Rules a marker may name that are neither Arm ARM sections nor ARM-RULES.md sections, with their
/// source.
const NAMED_RULES: &[(&str, &str)] = &[
    (
        "SLS",
        "straight-line speculation past ERET: a PE may speculatively execute the instructions after \
         an ERET, with register state the lower EL controls. Arm's \"Straight-line Speculation\" \
         whitepaper (2020); Linux puts `sb` after every ERET (its `sb` macro is `dsb nsh; isb` \
         without FEAT_SB); Xen commit \"Place a speculation barrier sequence following an eret \
         instruction\" (2019). FEAT_SB is not implemented by Cortex-A72 (raspi4b), so `dsb nsh; isb`.",
    ),
    (
        "SPECTRE-V2",
        "branch-predictor invalidation on Cortex-A57/A72 (CVE-2017-5715, and CVE-2022-23960 with \
         it): turning the MMU off and on invalidates these cores' branch predictor; TF-A applies \
         it on every entry to EL3 (`lib/cpus/aarch64/wa_cve_2017_5715_mmu_vbar.S`), the \
         hypervisor on every entry to EL2 from a lower EL (`hyp-core/src/arch/spectre.rs`)",
    ),
    (
        "DSB-WFI",
        "WFI does not wait for earlier memory accesses to complete; a DSB before it does (Linux \
         `cpu_do_idle`: `dsb(sy); wfi()`)",
    ),
];

/// One assembly statement: its first source line and its text, labels stripped.
#[derive(Debug, Clone)]
struct Stmt {
    line: usize,
    text: String,
}

impl Stmt {
    fn mnemonic(&self) -> String {
        self.text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase()
    }

    fn is_barrier(&self) -> bool {
        MNEMONICS.contains(&self.mnemonic().as_str())
    }

    /// Lower case, runs of white space as one space.
    fn normalised(&self) -> String {
        self.text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase()
    }
}

/// A `barrier:` comment: its line and the text after `barrier:`.
#[derive(Debug, Clone)]
struct Marker {
    line: usize,
    body: String,
}

#[derive(Debug, Default)]
struct Scan {
    stmts: Vec<Stmt>,
    markers: Vec<Marker>,
    /// `include_str!` paths inside assembly macros (line, path).
    includes: Vec<(usize, String)>,
}

impl Scan {
    fn comment(&mut self, text: &str, line: usize) {
        let t = text.trim_start_matches(['/', '!']).trim_start();
        if let Some(body) = t.strip_prefix("barrier:") {
            self.markers.push(Marker {
                line,
                body: body.to_string(),
            });
        }
    }
}

/// Strips leading labels (`1:`, `__hvc_fast:`) from a statement.
fn strip_labels(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$'))
            .unwrap_or(s.len());
        if end > 0 && s[end..].starts_with(':') {
            s = &s[end + 1..];
        } else {
            return s.trim_end();
        }
    }
}

/// Splits assembly text (characters with their source lines) into statements and comments.
/// Statements end at a newline or `;`; comments are `//` to the end of the line and `/* */`.
fn scan_asm(text: &[(char, usize)], out: &mut Scan) {
    let mut cur = String::new();
    let mut cur_line = None;
    let flush = |cur: &mut String, cur_line: &mut Option<usize>, out: &mut Scan| {
        let t = strip_labels(cur);
        if let (false, Some(line)) = (t.is_empty(), *cur_line) {
            out.stmts.push(Stmt {
                line,
                text: t.to_string(),
            });
        }
        cur.clear();
        *cur_line = None;
    };
    let at = |k: usize| text.get(k).map(|&(c, _)| c);
    let mut k = 0;
    while k < text.len() {
        let (c, line) = text[k];
        if c == '/' && at(k + 1) == Some('/') {
            let mut comment = String::new();
            k += 2;
            while let Some(c) = at(k).filter(|&c| c != '\n') {
                comment.push(c);
                k += 1;
            }
            out.comment(&comment, line);
            continue;
        }
        if c == '/' && at(k + 1) == Some('*') {
            k += 2;
            while k < text.len() && !(at(k) == Some('*') && at(k + 1) == Some('/')) {
                k += 1;
            }
            k += 2;
            continue;
        }
        if c == '\n' || c == ';' {
            flush(&mut cur, &mut cur_line, out);
        } else {
            if cur_line.is_none() && !c.is_whitespace() {
                cur_line = Some(line);
            }
            cur.push(c);
        }
        k += 1;
    }
    flush(&mut cur, &mut cur_line, out);
}

/// A whole `.S`/`.s` file.
fn scan_asm_file(src: &str) -> Scan {
    let mut line = 1;
    let text: Vec<(char, usize)> = src
        .chars()
        .map(|c| {
            let l = line;
            if c == '\n' {
                line += 1;
            }
            (c, l)
        })
        .collect();
    let mut out = Scan::default();
    scan_asm(&text, &mut out);
    out
}

const ASM_MACROS: &[&str] = &["asm", "global_asm", "naked_asm"];

/// A Rust file: lexes it (comments, strings, raw strings, chars, lifetimes), scans the string
/// literals inside `asm!`/`global_asm!`/`naked_asm!` as assembly (each literal starts a new
/// statement) and collects `barrier:` markers from Rust comments anywhere.
fn scan_rust(src: &str) -> Scan {
    let cs: Vec<char> = src.chars().collect();
    let at = |k: usize| cs.get(k).copied().unwrap_or('\0');
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Scan::default();
    let mut line = 1;
    let mut i = 0;
    let mut depth = 0usize;
    let mut asm_depth: Option<usize> = None;
    let mut pending_asm = false;
    let mut pending_include = false;
    while i < cs.len() {
        let c = cs[i];
        // Comments.
        if c == '/' && at(i + 1) == '/' {
            let start = i + 2;
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
            let text: String = cs[start..i].iter().collect();
            out.comment(&text, line);
            continue;
        }
        if c == '/' && at(i + 1) == '*' {
            let mut nest = 0;
            while i < cs.len() {
                if cs[i] == '/' && at(i + 1) == '*' {
                    nest += 1;
                    i += 2;
                } else if cs[i] == '*' && at(i + 1) == '/' {
                    nest -= 1;
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else {
                    if cs[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            continue;
        }
        // String literals: normal ("...", b"...") and raw (r"...", r#"..."#, br#"..."#).
        let (raw, prefix) = match c {
            '"' => (None, 0),
            'b' if at(i + 1) == '"' && (i == 0 || !is_ident(cs[i - 1])) => (None, 1),
            'r' | 'b' if i == 0 || !is_ident(cs[i - 1]) => {
                let p = if c == 'b' && at(i + 1) == 'r' { 2 } else { 1 };
                let mut h = 0;
                while at(i + p + h) == '#' {
                    h += 1;
                }
                if (c == 'r' || p == 2) && at(i + p + h) == '"' {
                    (Some(h), p + h)
                } else {
                    (None, usize::MAX)
                }
            }
            _ => (None, usize::MAX),
        };
        if prefix != usize::MAX {
            i += prefix + 1;
            let mut text = Vec::new();
            match raw {
                Some(h) => loop {
                    if i >= cs.len() {
                        break;
                    }
                    if cs[i] == '"' && (0..h).all(|k| at(i + 1 + k) == '#') {
                        i += 1 + h;
                        break;
                    }
                    text.push((cs[i], line));
                    if cs[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                },
                None => loop {
                    if i >= cs.len() {
                        break;
                    }
                    let c = cs[i];
                    if c == '"' {
                        i += 1;
                        break;
                    }
                    if c == '\\' {
                        let e = at(i + 1);
                        i += 2;
                        let decoded = match e {
                            'n' => Some('\n'),
                            't' => Some('\t'),
                            'r' => Some('\r'),
                            '0' => Some('\0'),
                            'x' => {
                                i += 2;
                                Some(' ')
                            }
                            'u' => {
                                while i < cs.len() && cs[i] != '}' {
                                    i += 1;
                                }
                                i += 1;
                                Some(' ')
                            }
                            '\n' => {
                                // Line continuation: the newline and leading white space vanish.
                                line += 1;
                                while i < cs.len() && cs[i].is_whitespace() {
                                    if cs[i] == '\n' {
                                        line += 1;
                                    }
                                    i += 1;
                                }
                                None
                            }
                            other => Some(other),
                        };
                        if let Some(d) = decoded {
                            text.push((d, line));
                        }
                        continue;
                    }
                    text.push((c, line));
                    if c == '\n' {
                        line += 1;
                    }
                    i += 1;
                },
            }
            if asm_depth.is_some() {
                if pending_include {
                    out.includes
                        .push((line, text.iter().map(|&(c, _)| c).collect()));
                    pending_include = false;
                } else {
                    scan_asm(&text, &mut out);
                }
            }
            continue;
        }
        // Char literals ('a', '\n', b'x') and lifetimes ('a).
        if c == '\'' {
            if at(i + 1) == '\\' {
                // Skip the quote, the backslash and the escaped character.
                i += 3;
                while i < cs.len() && cs[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
            continue;
        }
        if is_ident(c) && (i == 0 || !is_ident(cs[i - 1])) {
            let start = i;
            while i < cs.len() && is_ident(cs[i]) {
                i += 1;
            }
            let ident: String = cs[start..i].iter().collect();
            let mut j = i;
            while at(j).is_whitespace() {
                j += 1;
            }
            if at(j) == '!' {
                if ASM_MACROS.contains(&ident.as_str()) && asm_depth.is_none() {
                    pending_asm = true;
                } else if ident == "include_str" && asm_depth.is_some() {
                    pending_include = true;
                }
            }
            continue;
        }
        match c {
            '\n' => line += 1,
            '(' | '[' | '{' => {
                depth += 1;
                if pending_asm {
                    asm_depth = Some(depth);
                    pending_asm = false;
                }
            }
            ')' | ']' | '}' => {
                if asm_depth == Some(depth) {
                    asm_depth = None;
                }
                depth = depth.saturating_sub(1);
            }
            '!' => {}
            c if !c.is_whitespace() => pending_asm = false,
            _ => {}
        }
        i += 1;
    }
    out
}

/// Whether `rule` names a rule: an Arm ARM section (D24.1.2.2), an Arm ARM rule identifier
/// (R_DDMVT, I_SFZVV), an ARM-RULES.md section, or a [`NAMED_RULES`] entry.
fn names_rule(rule: &str) -> bool {
    rule.split(|c: char| c.is_whitespace() || ",;()[]/".contains(c))
        .map(|t| t.trim_end_matches(['.', ':']))
        .any(|t| {
            let arm_section = {
                let mut parts = t.split('.');
                let first = parts.next().unwrap_or("");
                let rest: Vec<&str> = parts.collect();
                first.len() >= 2
                    && first.starts_with(|c: char| ('A'..='K').contains(&c))
                    && first[1..].chars().all(|c| c.is_ascii_digit())
                    && !rest.is_empty()
                    && rest
                        .iter()
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            };
            let rule_id = (t.starts_with("R_") || t.starts_with("I_"))
                && t.len() == 7
                && t[2..]
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            arm_section
                || rule_id
                || t == "ARM-RULES.md"
                || NAMED_RULES.iter().any(|(n, _)| *n == t)
        })
}

/// Checks a marker's body (after `barrier:`): `<rule> — <reason>`. Returns the rule.
fn check_marker(body: &str) -> Result<String, String> {
    let body = body.trim();
    let split = body
        .find('—')
        .map(|k| (&body[..k], &body[k + '—'.len_utf8()..]))
        .or_else(|| body.find(" -- ").map(|k| (&body[..k], &body[k + 4..])));
    let Some((rule, reason)) = split else {
        return Err("no reason: write `barrier: <rule> — <reason>`".into());
    };
    let (rule, reason) = (rule.trim(), reason.trim());
    if !reason.chars().any(char::is_alphabetic) {
        return Err("empty reason".into());
    }
    if !names_rule(rule) {
        return Err(format!(
            "`{rule}` names no rule: give an Arm ARM section (D24.1.2.2) or rule (R_DDMVT), \
             an ARM-RULES.md section, or one of {:?}",
            NAMED_RULES.iter().map(|(n, _)| *n).collect::<Vec<_>>()
        ));
    }
    Ok(rule.to_string())
}

/// What one file's audit found.
#[derive(Debug, Default)]
struct FileAudit {
    /// Exempt instruction lines: (line, mnemonics on it, rule).
    exempt: Vec<(usize, String, String)>,
    problems: Vec<String>,
}

/// Audits one file's source: every barrier instruction is covered by a valid marker on its line
/// or the line above, every marker covers one, and every ERET is followed by a speculation
/// barrier.
fn audit(rel: &str, src: &str, asm_file: bool) -> FileAudit {
    let scan = if asm_file {
        scan_asm_file(src)
    } else {
        scan_rust(src)
    };
    let lines: Vec<&str> = src.lines().collect();
    let mut a = FileAudit::default();
    for (line, path) in &scan.includes {
        if !(path.ends_with(".S") || path.ends_with(".s")) {
            a.problems.push(format!(
                "{rel}:{line}: assembly included from `{path}`, which tidy does not scan (use .S)"
            ));
        }
    }
    // Line covered -> rule.
    let mut covers: BTreeMap<usize, String> = BTreeMap::new();
    let mut marker_of: BTreeMap<usize, usize> = BTreeMap::new();
    for m in &scan.markers {
        let rule = match check_marker(&m.body) {
            Ok(rule) => rule,
            Err(e) => {
                a.problems
                    .push(format!("{rel}:{}: bad barrier marker: {e}", m.line));
                String::new()
            }
        };
        let own = lines.get(m.line - 1).copied().unwrap_or("");
        let covered = if own.trim_start().starts_with("//") {
            m.line + 1
        } else {
            m.line
        };
        covers.insert(covered, rule);
        marker_of.insert(covered, m.line);
    }
    let mut barrier_lines: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for s in scan.stmts.iter().filter(|s| s.is_barrier()) {
        barrier_lines.entry(s.line).or_default().push(s.mnemonic());
    }
    for (line, mnemonics) in &barrier_lines {
        let text = lines.get(line - 1).map_or("", |l| l.trim());
        match covers.get(line) {
            Some(rule) => a.exempt.push((*line, mnemonics.join(","), rule.clone())),
            None => a.problems.push(format!(
                "{rel}:{line}: `{text}`: raw {} without a `barrier: <rule> — <reason>` comment \
                 on this line or the line above (or use barriers::regs / barriers)",
                mnemonics.join(", ")
            )),
        }
    }
    for (covered, marker) in &marker_of {
        if !barrier_lines.contains_key(covered) {
            a.problems.push(format!(
                "{rel}:{marker}: barrier marker covers no barrier instruction (line {covered})"
            ));
        }
    }
    for line in eret_without_speculation_barrier(&scan.stmts) {
        a.problems.push(format!(
            "{rel}:{line}: ERET not followed by `dsb nsh; isb` or `sb` (rule SLS)"
        ));
    }
    a
}

/// Lines of ERETs whose next two statements are not `dsb nsh` then `isb`, and whose next is not
/// `sb`.
fn eret_without_speculation_barrier(stmts: &[Stmt]) -> Vec<usize> {
    let next = |i: usize| stmts.get(i).map(Stmt::normalised);
    stmts
        .iter()
        .enumerate()
        .filter(|(_, s)| s.mnemonic().starts_with("eret"))
        .filter(|&(i, _)| {
            let sb = next(i + 1).as_deref() == Some("sb");
            let dsb_isb =
                next(i + 1).as_deref() == Some("dsb nsh") && next(i + 2).as_deref() == Some("isb");
            !(sb || dsb_isb)
        })
        .map(|(_, s)| s.line)
        .collect()
}

/// Audits every source file under `crates/` outside [`EXEMPT_DIRS`]: (file, audit) in path order.
fn audit_workspace() -> Vec<(String, FileAudit)> {
    let root = common::workspace_root();
    let mut files = Vec::new();
    common::source_files(&root.join("crates"), &["rs", "S", "s"], &mut files);
    files.sort();
    assert!(
        !files.is_empty(),
        "no sources found under {}",
        root.display()
    );
    let mut out = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .expect("under root")
            .to_string_lossy()
            .replace('\\', "/");
        if EXEMPT_DIRS.iter().any(|(d, _)| rel.starts_with(d)) {
            continue;
        }
        let src = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let asm_file = f.extension().is_some_and(|x| x != "rs");
        out.push((rel.clone(), audit(&rel, &src, asm_file)));
    }
    out
}

#[test]
fn barrier_instructions_carry_rule_markers_and_erets_a_speculation_barrier() {
    let problems: Vec<String> = audit_workspace()
        .into_iter()
        .flat_map(|(_, a)| a.problems)
        .collect();
    assert!(
        problems.is_empty(),
        "tidy: raw barrier instructions outside barriers need a per-line rule marker:\n{}",
        problems.join("\n")
    );
}

#[test]
fn exemptions_are_listed_per_file() {
    for (dir, why) in EXEMPT_DIRS {
        eprintln!("tidy: exempt directory {dir}*: {why}");
    }
    let audits = audit_workspace();
    let mut total = 0;
    for (rel, a) in &audits {
        if a.exempt.is_empty() {
            continue;
        }
        eprintln!("tidy: {rel}: {} exempt lines", a.exempt.len());
        for (line, mnemonics, rule) in &a.exempt {
            eprintln!("tidy:     {rel}:{line}: {mnemonics} ({rule})");
        }
        total += a.exempt.len();
    }
    eprintln!("tidy: {total} exempt lines in all");
    // The scanner must see the assembly it is meant to police: these files all hold barriers.
    for must in [
        "crates/hyp-core/src/arch/vectors.rs",
        "crates/platform-qemu/src/entry.S",
        "crates/platform-rpi4/src/entry.S",
    ] {
        assert!(
            audits
                .iter()
                .any(|(rel, a)| rel == must && !a.exempt.is_empty()),
            "tidy found no marked barrier in {must}: is the scanner broken?"
        );
    }
}

/// (line, mnemonic) of the barrier instructions in a Rust snippet.
fn rs(src: &str) -> Vec<(usize, String)> {
    scan_rust(src)
        .stmts
        .iter()
        .filter(|s| s.is_barrier())
        .map(|s| (s.line, s.mnemonic()))
        .collect()
}

/// (line, mnemonic) of the barrier instructions in an assembly snippet.
fn asm(src: &str) -> Vec<(usize, String)> {
    scan_asm_file(src)
        .stmts
        .iter()
        .filter(|s| s.is_barrier())
        .map(|s| (s.line, s.mnemonic()))
        .collect()
}

fn one(m: &str) -> Vec<(usize, String)> {
    vec![(1, m.to_string())]
}

#[test]
fn detector_finds_each_mnemonic_in_every_asm_form() {
    let operands = [
        ("msr", " hcr_el2, x0"),
        ("tlbi", " vmalls12e1is"),
        ("dsb", " ish"),
        ("isb", ""),
        ("dc", " civac, x0"),
        ("ic", " iallu"),
        ("at", " s1e1r, x0"),
        ("eret", ""),
        ("eretaa", ""),
        ("sb", ""),
    ];
    for (m, ops) in operands {
        let insn = format!("{m}{ops}");
        let upper = insn.to_ascii_uppercase();
        // Inline asm, first template string and a later one.
        assert_eq!(
            rs(&format!(r#"asm!("{insn}", in(reg) v);"#)),
            one(m),
            "{insn}"
        );
        assert_eq!(rs(&format!(r#"asm!("nop", "{insn}");"#)), one(m), "{insn}");
        assert_eq!(
            rs(&format!(r#"core::arch::asm!("{upper}");"#)),
            one(m),
            "{upper}"
        );
        // After `\n` and `;` inside a string, and after a label.
        assert_eq!(rs(&format!(r#"asm!("nop\n{insn}");"#)), one(m), "{insn}");
        assert_eq!(rs(&format!(r#"asm!("nop\n\t{insn}");"#)), one(m), "{insn}");
        assert_eq!(rs(&format!(r#"asm!("nop; {insn}");"#)), one(m), "{insn}");
        assert_eq!(rs(&format!(r#"asm!("1: {insn}");"#)), one(m), "{insn}");
        // A concat! piece, as the register-accessor macros build them.
        assert_eq!(
            rs(&format!(
                r#"asm!(concat!("{m} ", $reg, ", {{0}}"), in(reg) v);"#
            )),
            one(m),
            "concat {m}"
        );
        // global_asm!/naked_asm! with a raw string over several lines.
        let g = format!("global_asm!(r#\"\n    nop\n    {insn}\n\"#);");
        assert_eq!(rs(&g), vec![(3, m.to_string())], "{g}");
        let n = format!("naked_asm!(\"mov x0, x1\",\n \"{insn}\")");
        assert_eq!(rs(&n), vec![(2, m.to_string())], "{n}");
        // Assembly files.
        assert_eq!(asm(&format!("    {insn}")), one(m), "{insn}");
        assert_eq!(asm(&format!("\tnop ; {insn} // x")), one(m), "{insn}");
        assert_eq!(asm(&format!("lbl_{m}:  {insn}")), one(m), "{insn}");
    }
}

#[test]
fn detector_ignores_lookalikes() {
    for m in MNEMONICS {
        // Identifiers, Rust calls and strings outside asm, comments.
        assert!(
            rs(&format!("fn {m}() {{}} let {m}_x = {m}(); {m}(1);")).is_empty(),
            "{m}"
        );
        assert!(
            rs(&format!("barriers::insn::{m}(); x.{m}();")).is_empty(),
            "{m}"
        );
        assert!(
            rs(&format!(r#"panic!("{m} failed"); let s = "{m} x0";"#)).is_empty(),
            "{m}"
        );
        assert!(
            rs(&format!("let x = 1; // {m} sy\n/* {m} */ /// {m} x")).is_empty(),
            "{m}"
        );
        assert!(rs(&format!(r#"asm!("nop // {m} sy");"#)).is_empty(), "{m}");
        assert!(rs(&format!(r#"asm!("nop /* {m} */");"#)).is_empty(), "{m}");
        assert!(
            rs(&format!(r#"asm!("mov {m}, x0", {m} = in(reg) 0);"#)).is_empty(),
            "{m}"
        );
        assert!(
            rs(&format!(r#"asm!("ldr x0, ={m}_table");"#)).is_empty(),
            "{m}"
        );
        // Mnemonic prefixes, labels and operands in assembly.
        assert!(
            asm(&format!("    {m}x x0\n    {m}_foo\n{m}:\n{m}_el2:\n")).is_empty(),
            "{m}"
        );
        assert!(
            asm(&format!("    b.ne {m}_el2\n    bl {m}\n    // {m} sy\n")).is_empty(),
            "{m}"
        );
        assert!(
            asm(&format!("    mrs x0, {m}\n    /* {m}\n {m} */ nop\n")).is_empty(),
            "{m}"
        );
    }
    assert!(asm("    sbc x0, x1, x2\n    sbfx x0, x1, #0, #1\n    atomic\n").is_empty());
    assert!(asm("    mrs x0, icc_iar1_el1\n    mrs x1, dczid_el0\n").is_empty());
    // A string that merely mentions asm! is not an asm! invocation; a lifetime is not a char.
    assert!(rs(r#"let s = "asm!(\"isb\")"; fn f<'a>(x: &'a u8) { isb(); }"#).is_empty());
    // A Rust string after an asm! invocation is not assembly.
    assert!(rs(r#"asm!("nop"); let s = "isb";"#).is_empty());
}

#[test]
fn markers_cover_their_line_or_the_next_and_need_a_rule_and_reason() {
    let ok = "    msr elr_el2, x2 // barrier: C5.1.5.1 — program order\n\
              \x20   // barrier: D24.1.2.2 — ERET is the CSE\n\
              \x20   eret\n\
              \x20   dsb nsh // barrier: SLS — speculation barrier after ERET\n\
              \x20   isb // barrier: ARM-RULES.md §0 -- with the DSB\n";
    let a = audit("t.S", ok, true);
    assert!(a.problems.is_empty(), "{:?}", a.problems);
    assert_eq!(a.exempt.len(), 4);

    let unmarked = "    nop\n    dsb ish\n";
    assert_eq!(audit("t.S", unmarked, true).problems.len(), 1);
    // A trailing marker covers only its own line, not the next.
    let trailing = "    isb // barrier: D24.1.2.2 — x\n    isb\n";
    assert_eq!(audit("t.S", trailing, true).problems.len(), 1);
    // A marker two lines above does not count, and is stale.
    let far = "    // barrier: D24.1.2.2 — x\n    nop\n    isb\n";
    assert_eq!(audit("t.S", far, true).problems.len(), 2);
    // Empty reason, missing reason, no rule.
    for bad in [
        "    isb // barrier: D24.1.2.2 —\n",
        "    isb // barrier: D24.1.2.2 —   .\n",
        "    isb // barrier: D24.1.2.2\n",
        "    isb // barrier:\n",
        "    isb // barrier: because — it is needed\n",
        "    isb // barrier: D24 — section number too short\n",
    ] {
        let a = audit("t.S", bad, true);
        assert_eq!(a.problems.len(), 1, "{bad}: {:?}", a.problems);
        assert!(a.problems[0].contains("bad barrier marker"), "{bad}");
    }
    // In Rust: an asm comment inside the string, or a Rust comment above the asm! line.
    let rust = "global_asm!(r#\"\n    isb // barrier: D24.1.2.2 — x\n\"#);\n\
                // barrier: R_DDMVT — y\n\
                unsafe { asm!(\"tlbi vmalle1is\") };\n";
    let a = audit("t.rs", rust, false);
    assert!(a.problems.is_empty(), "{:?}", a.problems);
    assert_eq!(a.exempt.len(), 2);
    // A marker-looking string is not a marker.
    let fake = "let s = \"// barrier: D24.1.2.2 — x\";\nasm!(\"isb\");\n";
    assert_eq!(audit("t.rs", fake, false).problems.len(), 1);
    // Stale marker with no instruction under it.
    let stale = "// barrier: D24.1.2.2 — x\nlet x = 1;\n";
    assert_eq!(audit("t.rs", stale, false).problems.len(), 1);
    // Assembly pulled in from a file tidy does not scan.
    let inc = "global_asm!(include_str!(\"entry.txt\"));\nglobal_asm!(include_str!(\"e.S\"));\n";
    assert_eq!(audit("t.rs", inc, false).problems.len(), 1);
}

#[test]
fn every_eret_needs_a_speculation_barrier() {
    let lacks = |src: &str| eret_without_speculation_barrier(&scan_asm_file(src).stmts);
    assert!(lacks("    eret\n    dsb nsh\n    isb\n").is_empty());
    assert!(lacks("    eret\n    // why\n\n    DSB  NSH\n    isb\n").is_empty());
    assert!(lacks("    eret; dsb nsh; isb\n").is_empty());
    assert!(lacks("    eret\n    sb\n").is_empty());
    assert!(lacks("    eretaa\n    sb\n").is_empty());
    assert_eq!(lacks("    add sp, sp, #16\n    eret\n"), vec![2]);
    assert_eq!(lacks("    eret\n1:  b __fast_sync\n"), vec![1]);
    assert_eq!(lacks("    eret\n    dsb nsh\n    nop\n    isb\n"), vec![1]);
    assert_eq!(lacks("    eret\n    dsb sy\n    isb\n"), vec![1]);
    assert_eq!(lacks("    eret\n    isb\n"), vec![1]);
    assert_eq!(lacks("    eret\n    dsb nsh\n"), vec![1]);
    assert_eq!(lacks("    eretab\n    nop\n"), vec![1]);
    // The same in Rust asm strings, and through the full audit.
    let rust = "global_asm!(r#\"\n    // barrier: D24.1.2.2 — x\n    eret\n\"#);\n";
    let scan = scan_rust(rust);
    assert_eq!(eret_without_speculation_barrier(&scan.stmts), vec![3]);
    let a = audit("t.rs", rust, false);
    assert_eq!(a.problems.len(), 1, "{:?}", a.problems);
    assert!(a.problems[0].contains("ERET not followed"));
}
