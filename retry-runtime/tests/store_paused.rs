//! A shared store under a paused test clock: the store's operations run in real time on its
//! own thread, so waiting for it does not time out at once, and the wait it asks for (the
//! fleet's pacing slot) passes on the paused clock like every other wait.

// The call sites are `#[resilient]` functions.
#![cfg(feature = "macros")]

use std::sync::Arc;
use std::time::Duration;

use retry_runtime::store::memory::MemoryStore;
use retry_runtime::store::{self, Store, StoreStatus};
use retry_runtime::{configure, observe, resilient, Config, Rejected};

#[resilient(max = 1, pace = "paused")]
async fn paced() -> Result<(), Rejected> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_fleets_pacing_slots_are_waited_on_the_paused_clock() {
    // 60 a minute, a burst of one: one slot a second for the whole fleet.
    let toml = "[pace.paused]\nrpm = 60\nburst = \"1ms\"\nadaptive = false\n";
    configure(Config::from_toml_str(toml).unwrap()).unwrap();
    let fleet = Arc::new(MemoryStore::new());
    store::install(fleet.clone()).unwrap();
    assert!(store::wait_shared(Duration::from_secs(5)).await);
    assert_eq!(store::status(), StoreStatus::Shared);

    // Another process of the fleet took the next three slots.
    for _ in 0..3 {
        let ask = store::Admit {
            pace: Some(store::PaceAsk {
                name: "paused",
                interval_us: 1_000_000,
                burst: 1,
                max_wait_us: u64::MAX,
            }),
            ..store::Admit::default()
        };
        fleet.admit(ask).await.unwrap();
    }
    let started = tokio::time::Instant::now();
    let (result, report) = observe(paced()).await;
    result.unwrap();
    // This process's own pacer had room at once; the fleet's next slot is about three seconds
    // away (the store's clock is real time), and the paused clock jumps there.
    let waited = report.attempts()[0].paced;
    assert!(
        waited > Duration::from_millis(2900) && waited <= Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(started.elapsed() >= waited);
}
