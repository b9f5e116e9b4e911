//! Compile-time behaviour of `#[resilient]` and `#[retry_on]`: what must compile (and run), and
//! what must be rejected with an error under the offending token.
//!
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test --test ui`, then read
//! the diff: each caret must sit under the token the message talks about.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
