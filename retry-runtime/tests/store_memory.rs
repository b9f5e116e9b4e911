//! The executor wired to a shared store: a `MemoryStore` stands in for Redis, and direct
//! calls on it stand in for the other processes of the fleet. One test, in order, because the
//! store is process-wide and an outage is played on it.

// The call sites are `#[resilient]` functions.
#![cfg(feature = "macros")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use retry_runtime::store::memory::MemoryStore;
use retry_runtime::store::{self, Admit, BreakerAsk, PoolAsk, Store, StoreStatus, Update, Verdict};
use retry_runtime::{configure, resilient, Classify, Config, ErrorClass, Metered, Rejected, Spend};

#[derive(Debug, Clone, PartialEq)]
enum E {
    Down,
    Runtime(Rejected),
}

impl From<Rejected> for E {
    fn from(r: Rejected) -> Self {
        E::Runtime(r)
    }
}

impl Classify for E {
    fn class(&self) -> ErrorClass {
        match self {
            E::Down => ErrorClass::Status(503),
            E::Runtime(r) => r.class(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Reply(u64);

impl Metered for Reply {
    fn spend(&self) -> Spend {
        Spend::from_tokens(self.0)
    }
}

#[resilient(max = 1, breaker = "fleet-a")]
async fn through_a(fail: bool) -> Result<u32, E> {
    if fail {
        Err(E::Down)
    } else {
        Ok(1)
    }
}

#[resilient(max = 1, pool = "fleet-pool")]
async fn billed(tokens: u64) -> Result<Reply, E> {
    Ok(Reply(tokens))
}

#[resilient(max = 1, pool = "fleet-roomy")]
async fn roomy(tokens: u64) -> Result<Reply, E> {
    Ok(Reply(tokens))
}

#[resilient(
    max = 1,
    breaker = "fleet-rt",
    pool = "fleet-rt-pool",
    pace = "fleet-pace"
)]
async fn everything() -> Result<Reply, E> {
    Ok(Reply(0))
}

// A generous per-operation timeout: the in-memory store answers in microseconds, but on a
// loaded 2-core CI machine the hop to the store's thread can take longer than the 50 ms
// default, and a timeout would (rightly) switch the process to local state mid-test.
const TOML: &str = r#"
[store]
timeout = "2s"

[breaker.fleet-a]
failures = 2
cooldown = "30s"

[pool.fleet-pool]
limit = "100tok"
window = "1h"

[pool.fleet-roomy]
limit = "1000tok"
window = "1h"

[pool.fleet-rt-pool]
limit = "1000000tok"
window = "1h"

[pace.fleet-pace]
rpm = 60000
burst = "1ms"
"#;

fn pool_ask(expected: u64) -> Admit {
    Admit {
        pool: Some(PoolAsk {
            name: "fleet-pool",
            window_ms: 3_600_000,
            limit: 100,
            expected,
        }),
        ..Admit::default()
    }
}

/// Poll `check` for up to a second: background writes land a moment after the call.
async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// The store's operation count once nothing is in flight: the same for 50 ms.
async fn quiet(fleet: &MemoryStore) -> u64 {
    let mut last = fleet.operations();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = fleet.operations();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn calls_share_state_through_the_store_and_fall_back_without_it() {
    configure(Config::from_toml_str(TOML).unwrap()).unwrap();
    let fleet = Arc::new(MemoryStore::new());
    store::install(fleet.clone()).unwrap();
    assert!(store::wait_shared(Duration::from_secs(5)).await);
    assert_eq!(store::status(), StoreStatus::Shared);

    // Another process opens the breaker: calls here are rejected without running.
    fleet
        .update(Update::BreakerOpened {
            breaker: "fleet-a",
            cooldown: Duration::from_secs(30),
            force: false,
        })
        .await
        .unwrap();
    match through_a(false).await {
        Err(E::Runtime(Rejected::CircuitOpen { breaker, retry_in })) => {
            assert_eq!(breaker, "fleet-a");
            assert!(retry_in > Duration::from_secs(29));
        }
        other => panic!("expected a shared open breaker, got {other:?}"),
    }
    // Its probe succeeded there: the store's state wins here too.
    fleet
        .update(Update::BreakerClosed { breaker: "fleet-a" })
        .await
        .unwrap();
    assert_eq!(through_a(false).await, Ok(1));

    // Two failures here open it here, and the fleet sees it.
    let _ = through_a(true).await;
    let _ = through_a(true).await;
    let b_ask = Admit {
        breaker: Some(BreakerAsk {
            name: "fleet-a",
            deposit: false,
            withdraw: None,
        }),
        ..Admit::default()
    };
    assert!(
        eventually(
            async || fleet.admit(b_ask.clone()).await.unwrap().verdict == Verdict::BreakerOpen
        )
        .await,
        "the open breaker was published"
    );

    // The pool is the fleet's: another process reserved 50 of 100 tokens.
    let other = fleet.admit(pool_ask(50)).await.unwrap();
    let (window, _) = other.pool.unwrap();
    assert_eq!(billed(30).await, Ok(Reply(30)));
    assert!(eventually(async || fleet.committed("fleet-pool", window) == 80).await);
    // The next call is expected to cost 30 too: 80 + 30 > 100.
    match billed(30).await {
        Err(E::Runtime(Rejected::BudgetExhausted { spent, .. })) => {
            assert_eq!(spent, Spend::from_tokens(80))
        }
        other => panic!("expected the shared pool to refuse, got {other:?}"),
    }
    // The other process settles for less: room again.
    fleet
        .update(Update::Settle {
            pool: "fleet-pool",
            window_ms: 3_600_000,
            window,
            reserved: 50,
            real: 10,
        })
        .await
        .unwrap();
    assert_eq!(billed(30).await, Ok(Reply(30)));

    // One round trip per call on the happy path with a breaker, a pool and a pacer, plus one
    // background settlement for the pool. Counted from when the last call's own background
    // settlement has landed (it may still be in flight here, and would count as a 41st).
    let before = quiet(&fleet).await;
    for _ in 0..20 {
        everything().await.unwrap();
    }
    assert!(eventually(async || fleet.operations() - before == 40).await);
    assert_eq!(fleet.operations() - before, 40);

    // The pacer's slots come from the store: 20 more calls at 1000/s (no burst) take about
    // 20 ms, whatever the local pacer says.
    let started = Instant::now();
    for _ in 0..20 {
        everything().await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(15),
        "{:?}",
        started.elapsed()
    );

    // The store goes away: calls go on with local state.
    fleet.set_reachable(false);
    assert!(
        fleet.admit(pool_ask(0)).await.is_err(),
        "the fake outage is on"
    );
    assert_eq!(
        roomy(5).await,
        Ok(Reply(5)),
        "the call proceeds on local state"
    );
    assert_eq!(store::status(), StoreStatus::Local);
    assert_eq!(roomy(5).await, Ok(Reply(5)));
    // Local state goes on from the fleet's total as last seen (70 tokens), not from nothing:
    // one more call expected to cost 30 fits, the next does not.
    assert_eq!(billed(30).await, Ok(Reply(30)));
    match billed(30).await {
        Err(E::Runtime(Rejected::BudgetExhausted { spent, .. })) => {
            assert_eq!(spent, Spend::from_tokens(100))
        }
        other => panic!("expected the mirrored pool to refuse, got {other:?}"),
    }
    // It comes back: what was spent meanwhile is added to the shared window.
    fleet.set_reachable(true);
    assert!(store::wait_shared(Duration::from_secs(5)).await);
    let roomy_ask = Admit {
        pool: Some(PoolAsk {
            name: "fleet-roomy",
            window_ms: 3_600_000,
            limit: 1000,
            expected: 0,
        }),
        ..Admit::default()
    };
    let (roomy_window, _) = fleet.admit(roomy_ask).await.unwrap().pool.unwrap();
    assert!(
        eventually(async || fleet.committed("fleet-roomy", roomy_window) == 10
            && fleet.committed("fleet-pool", window) == 100)
        .await,
        "spent locally while away, then reconciled: {}",
        fleet.committed("fleet-roomy", roomy_window)
    );
}
