//! Compile-time behaviour of the macros: what must compile, and every user-facing error, with
//! the error pointing at the offending token. Re-bless with `TRYBUILD=overwrite`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
