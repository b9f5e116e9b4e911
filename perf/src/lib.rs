//! Nothing to link: this package holds the overhead bench (`benches/overhead.rs`), built with
//! tokio as a service builds it (no `test-util`). Run it with
//! `cargo bench -p resilient-bench --bench overhead`.
