//! One-line bodies compile without a warning under `#![deny(warnings)]`: the generated code
//! must not trip `unused_braces` (or anything else) in a user's strict CI.
#![deny(warnings)]

use retry_runtime::{resilient, Rejected};

#[resilient]
async fn one() -> Result<u32, Rejected> { Ok(1) }

#[resilient(max = 2, timeout = "1s")]
async fn two(x: u32) -> Result<u32, Rejected> { Ok(x) }

#[resilient(max = 2, base = "1ms")]
async fn three(x: &str) -> Result<usize, Rejected> { Ok(x.len()) }

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    assert_eq!(rt.block_on(one()).unwrap(), 1);
    assert_eq!(rt.block_on(two(2)).unwrap(), 2);
    assert_eq!(rt.block_on(three("abc")).unwrap(), 3);
}
