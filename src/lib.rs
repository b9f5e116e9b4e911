//! Unpublished root package: owns tests/, examples/ and benches/.

// The README's examples are compiled and run as doctests, so the docs users copy from work.
// They live here, not in retry-runtime, whose published crate cannot include a file above it.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
