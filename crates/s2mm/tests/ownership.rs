//! Exhaustive check of `ownership::transition` against the table in its module docs.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use s2mm::ownership::{
    transition, CompState, OwnershipError, PageOwnership, Requester, Transition,
};

fn st(s: &str) -> CompState {
    match s {
        "N" => CompState::NoAccess,
        "O" => CompState::Owned,
        "SO" => CompState::SharedOwned,
        "SB" => CompState::SharedBorrowed,
        _ => panic!("bad state {s}"),
    }
}

/// Rows of the doc table: (transition, requester, before, after).
fn doc_table() -> Vec<(String, String, PageOwnership, PageOwnership)> {
    let src = include_str!("../src/ownership.rs");
    let mut rows = Vec::new();
    for line in src.lines() {
        let Some(l) = line.strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = l
            .split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if cells.len() != 8 || cells[0] == "transition" || cells[0].starts_with('-') {
            continue;
        }
        let po = |a: &str, b: &str, c: &str| PageOwnership {
            host: st(a),
            guest: st(b),
            hyp: st(c),
        };
        rows.push((
            cells[0].to_string(),
            cells[1].to_string(),
            po(cells[2], cells[3], cells[4]),
            po(cells[5], cells[6], cells[7]),
        ));
    }
    rows
}

#[test]
fn every_combination_matches_the_doc_table() {
    let table = doc_table();
    assert_eq!(table.len(), 9, "doc table rows");
    let (mut ok, mut err) = (0, 0);
    for t in Transition::ALL {
        for r in Requester::ALL {
            for h in CompState::ALL {
                for g in CompState::ALL {
                    for y in CompState::ALL {
                        let cur = PageOwnership {
                            host: h,
                            guest: g,
                            hyp: y,
                        };
                        let expect = table
                            .iter()
                            .find(|(tn, rn, before, _)| {
                                *tn == format!("{t:?}") && *rn == format!("{r:?}") && *before == cur
                            })
                            .map(|row| row.3);
                        let got = transition(cur, t, r);
                        match expect {
                            Some(after) => {
                                assert_eq!(got, Ok(after), "{t:?} by {r:?} from {cur:?}");
                                ok += 1;
                            }
                            None => {
                                assert!(
                                    got.is_err(),
                                    "{t:?} by {r:?} from {cur:?} must fail, got {got:?}"
                                );
                                // The requester check comes first and is independent of the state.
                                let permitted = table.iter().any(|(tn, rn, _, _)| {
                                    *tn == format!("{t:?}") && *rn == format!("{r:?}")
                                });
                                let want = if permitted {
                                    OwnershipError::InvalidState
                                } else {
                                    OwnershipError::NotPermitted
                                };
                                assert_eq!(got, Err(want), "{t:?} by {r:?} from {cur:?}");
                                err += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!((ok, err), (9, 7 * 3 * 64 - 9));
}

#[test]
fn transitions_conserve_a_single_owner() {
    // Every legal result has exactly one component in O or SO (the owner), or is all-N-but-one.
    for (_, _, _, after) in doc_table() {
        let owners = [after.host, after.guest, after.hyp]
            .iter()
            .filter(|s| matches!(s, CompState::Owned | CompState::SharedOwned))
            .count();
        assert_eq!(owners, 1, "{after:?}");
    }
}
