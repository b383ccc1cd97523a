//! Compile-time rules: one compile-fail case per rule, and the seed-000 exit path as a
//! compile-pass case.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
