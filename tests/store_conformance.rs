//! One suite of admission rules, run identically against `MemoryStore` and `RedisStore`.
//!
//! The rules exist twice: in `MemoryStore` (Rust) and in the Redis Lua scripts. Each case
//! below is written once against `&dyn Store` and runs on a fresh store of each kind: a
//! `MemoryStore` on a hand-driven clock, and a `RedisStore` (its own prefix per case) on a
//! real `redis-server` started here (see `tests/common/redis_server.rs`; skipped with a
//! message where none is installed, unless `RESILIENT_REQUIRE_REDIS=1`).
//!
//! Time is each store's own clock, never the caller's: `Subject::pass` moves the memory
//! store's clock, and really sleeps (a few ms at most) for Redis, whose `TIME` cannot be
//! driven. So no case depends on the caller's (tokio) clock, and where Redis's clock moves on
//! between two operations, the case allows for the few ms it may have moved.

#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use retry_runtime::store::memory::MemoryStore;
use retry_runtime::store::redis::RedisStore;
use retry_runtime::store::{
    Admit, Admitted, BreakerAsk, PaceAsk, PoolAsk, RetryRule, SharedBreaker, Store, StoreConfig,
    Update, Verdict,
};

const HOUR_MS: u64 = 3_600_000;
/// How far Redis's clock may move on between two operations of one case (loaded CI machine).
const SLACK: Duration = Duration::from_millis(25);

/// One store under test, and how to let its clock move.
struct Subject {
    store: Arc<dyn Store>,
    /// The memory store's clock (µs); `None`: the store keeps its own real time (Redis).
    manual: Option<Arc<AtomicU64>>,
}

impl Subject {
    fn memory() -> Self {
        // A window boundary for every window used below, so that runs are reproducible.
        let now = Arc::new(AtomicU64::new(100 * HOUR_MS * 1000));
        let clock = now.clone();
        Self {
            store: Arc::new(MemoryStore::with_clock(move || {
                clock.load(Ordering::Acquire)
            })),
            manual: Some(now),
        }
    }

    fn redis(url: &str, case: usize) -> Self {
        // A prefix per case: the cases share one server but no key.
        let config = StoreConfig::redis(url)
            .unwrap()
            .with_prefix(&format!("conformance-{case}"))
            .unwrap();
        Self {
            store: Arc::new(RedisStore::new(url, &config).unwrap()),
            manual: None,
        }
    }

    /// Let `d` pass on the store's clock.
    async fn pass(&self, d: Duration) {
        match &self.manual {
            Some(now) => {
                now.fetch_add(d.as_micros() as u64, Ordering::AcqRel);
            }
            None => tokio::time::sleep(d).await,
        }
    }

    async fn admit(&self, ask: Admit) -> Admitted {
        self.store.admit(ask).await.expect("the store answers")
    }

    async fn update(&self, update: Update) {
        self.store.update(update).await.expect("the store answers");
    }

    /// `got` is `want`, less what the store's clock moved on meanwhile (nothing for the
    /// memory store).
    fn near(&self, got: Duration, want: Duration, what: &str) {
        if self.manual.is_some() {
            assert_eq!(got, want, "{what}");
        } else {
            assert!(
                got <= want && got + SLACK > want,
                "{what}: {got:?}, expected {want:?} (less at most {SLACK:?})"
            );
        }
    }

    /// Whether the store's clock moved at most `d` since `since` (always, for the memory
    /// store): the condition under which a case about a short cooldown can tell.
    fn within(&self, since: Instant, d: Duration) -> bool {
        self.manual.is_some() || since.elapsed() < d
    }
}

// ---- asks ----

const B: &str = "b";
const P: &str = "p";
const R: &str = "r";

/// The breaker only, with no deposit or withdrawal: takes nothing.
fn look() -> Admit {
    Admit {
        breaker: Some(BreakerAsk {
            name: B,
            deposit: false,
            withdraw: None,
        }),
        ..Admit::default()
    }
}

/// A first attempt: deposits in the retry budget.
fn first() -> Admit {
    Admit {
        breaker: Some(BreakerAsk {
            name: B,
            deposit: true,
            withdraw: None,
        }),
        ..Admit::default()
    }
}

/// A retry under `ratio_ppm` retries per first attempt and `floor` per window.
fn retry(ratio_ppm: u64, floor: u64) -> Admit {
    Admit {
        breaker: Some(BreakerAsk {
            name: B,
            deposit: false,
            withdraw: Some(RetryRule {
                ratio_ppm,
                floor_per_window: floor,
            }),
        }),
        ..Admit::default()
    }
}

/// A reservation of `expected` in pool `P` (limit 100, windows of `window_ms`).
fn pool_in(window_ms: u64, expected: u64) -> PoolAsk {
    PoolAsk {
        name: P,
        window_ms,
        limit: 100,
        expected,
    }
}

fn pool(expected: u64) -> Admit {
    Admit {
        pool: Some(pool_in(HOUR_MS, expected)),
        ..Admit::default()
    }
}

fn pace_of(interval: Duration, burst: u64, max_wait: Duration) -> PaceAsk {
    PaceAsk {
        name: R,
        interval_us: interval.as_micros() as u64,
        burst,
        max_wait_us: max_wait.as_micros() as u64,
    }
}

fn pace(interval: Duration, burst: u64, max_wait: Duration) -> Admit {
    Admit {
        pace: Some(pace_of(interval, burst, max_wait)),
        ..Admit::default()
    }
}

fn open(cooldown: Duration, force: bool) -> Update {
    Update::BreakerOpened {
        breaker: B,
        cooldown,
        force,
    }
}

fn settle(window_ms: u64, window: u64, reserved: u64, real: u64) -> Update {
    Update::Settle {
        pool: P,
        window_ms,
        window,
        reserved,
        real,
    }
}

/// What is committed in pool `P`'s current window, by an ask of zero (which takes nothing,
/// admitted or not).
async fn committed(s: &Subject) -> u64 {
    s.admit(pool(0)).await.pool.expect("a pool answer").1
}

/// The breaker's shared state, by a look.
async fn breaker(s: &Subject) -> (Verdict, SharedBreaker) {
    let a = s.admit(look()).await;
    (a.verdict, a.breaker.expect("a breaker answer"))
}

/// How many retries the budget admits now (withdrawing them), up to 20.
async fn retries_left(s: &Subject, ratio_ppm: u64, floor: u64) -> usize {
    for n in 0..20 {
        if s.admit(retry(ratio_ppm, floor)).await.verdict != Verdict::Admitted {
            return n;
        }
    }
    20
}

// ---- breaker ----

async fn a_closed_breaker_is_nothing_stored_and_the_answer_has_only_what_was_asked(s: &Subject) {
    let a = s.admit(look()).await;
    assert_eq!(a.verdict, Verdict::Admitted);
    assert_eq!(
        a.breaker,
        Some(SharedBreaker {
            generation: 0,
            open_for: None
        })
    );
    assert_eq!((a.pool, a.pace_wait), (None, Duration::ZERO));
    let p = s.admit(pool(1)).await;
    assert_eq!(p.breaker, None, "no breaker asked, none answered");
    assert!(p.pool.is_some());
}

async fn an_open_breaker_rejects_for_its_cooldown_under_a_new_generation(s: &Subject) {
    s.update(open(Duration::from_secs(30), false)).await;
    let (verdict, b) = breaker(s).await;
    assert_eq!(verdict, Verdict::BreakerOpen);
    assert!(b.generation > 0, "an open state has a generation");
    s.near(
        b.open_for.expect("open"),
        Duration::from_secs(30),
        "what is left of the cooldown",
    );
    // Every kind of ask through the breaker is refused while it is open.
    assert_eq!(s.admit(first()).await.verdict, Verdict::BreakerOpen);
    assert_eq!(
        s.admit(retry(1_000_000, 5)).await.verdict,
        Verdict::BreakerOpen
    );
}

async fn without_force_a_running_open_state_is_kept_with_force_it_is_replaced(s: &Subject) {
    s.update(open(Duration::from_secs(30), false)).await;
    let (_, before) = breaker(s).await;
    s.update(open(Duration::from_secs(90), false)).await;
    let (verdict, kept) = breaker(s).await;
    assert_eq!(verdict, Verdict::BreakerOpen);
    assert_eq!(kept.generation, before.generation, "kept: same generation");
    assert!(
        kept.open_for.unwrap() <= Duration::from_secs(30),
        "kept: same cooldown"
    );
    // A failed probe forces a new open state.
    s.update(open(Duration::from_secs(90), true)).await;
    let (verdict, forced) = breaker(s).await;
    assert_eq!(verdict, Verdict::BreakerOpen);
    assert!(
        forced.generation > before.generation,
        "{forced:?} after {before:?}"
    );
    s.near(
        forced.open_for.unwrap(),
        Duration::from_secs(90),
        "forced cooldown",
    );
}

async fn closing_clears_the_open_state_and_a_reopen_gets_a_later_generation(s: &Subject) {
    s.update(open(Duration::from_secs(30), false)).await;
    let (_, opened) = breaker(s).await;
    s.update(Update::BreakerClosed { breaker: B }).await;
    let (verdict, closed) = breaker(s).await;
    assert_eq!(verdict, Verdict::Admitted);
    assert_eq!(
        closed,
        SharedBreaker {
            generation: 0,
            open_for: None
        }
    );
    // (A close forgets the old generation; the next one comes from the store's clock, which
    // has moved on by then.)
    s.pass(Duration::from_millis(1)).await;
    s.update(open(Duration::from_secs(30), false)).await;
    let (verdict, reopened) = breaker(s).await;
    assert_eq!(verdict, Verdict::BreakerOpen);
    assert!(reopened.generation > opened.generation);
}

async fn a_cooled_down_open_state_admits_is_kept_and_any_open_replaces_it(s: &Subject) {
    let cooldown = Duration::from_millis(10);
    let started = Instant::now();
    s.update(open(cooldown, false)).await;
    let (verdict, opened) = breaker(s).await;
    if s.within(started, cooldown) {
        assert_eq!(verdict, Verdict::BreakerOpen);
    }
    s.pass(cooldown + Duration::from_millis(2)).await;
    let (verdict, cooled) = breaker(s).await;
    assert_eq!(verdict, Verdict::Admitted, "the cooldown is over");
    assert_eq!(
        cooled,
        SharedBreaker {
            generation: opened.generation,
            open_for: Some(Duration::ZERO)
        },
        "kept for the half-open phase: open for nothing more, same generation"
    );
    // Not running any more: even an open without force replaces it.
    s.update(open(Duration::from_secs(30), false)).await;
    let (verdict, again) = breaker(s).await;
    assert_eq!(verdict, Verdict::BreakerOpen);
    assert!(again.generation > opened.generation);
}

// ---- retry budget ----

async fn the_retry_budget_allows_its_ratio_of_first_attempts(s: &Subject) {
    for _ in 0..4 {
        assert_eq!(s.admit(first()).await.verdict, Verdict::Admitted);
    }
    // 50% of 4 first attempts, no floor: exactly two.
    assert_eq!(retries_left(s, 500_000, 0).await, 2);
    // The refused withdrawal took nothing: two more first attempts pay for exactly one more.
    s.admit(first()).await;
    s.admit(first()).await;
    assert_eq!(retries_left(s, 500_000, 0).await, 1);
}

async fn the_retry_budgets_floor_allows_retries_without_first_attempts(s: &Subject) {
    assert_eq!(retries_left(s, 1_000_000, 2).await, 2);
    let refused = s.admit(retry(1_000_000, 2)).await;
    assert_eq!(refused.verdict, Verdict::RetryBudget);
    // A look neither deposits nor withdraws.
    for _ in 0..3 {
        s.admit(look()).await;
    }
    assert_eq!(retries_left(s, 1_000_000, 2).await, 0);
}

// ---- pool ----

async fn a_pool_reserves_refuses_settles_releases_and_adds_spend(s: &Subject) {
    let a = s.admit(pool(60)).await;
    assert_eq!(a.verdict, Verdict::Admitted);
    let (window, reserved) = a.pool.unwrap();
    assert_eq!(reserved, 60, "the answer counts this reservation");
    let refused = s.admit(pool(60)).await;
    assert_eq!(
        (refused.verdict, refused.pool),
        (Verdict::PoolFull, Some((window, 60))),
        "60 + 60 > 100; the refusal reports what is committed and takes nothing"
    );
    assert_eq!(
        s.admit(pool(40)).await.pool,
        Some((window, 100)),
        "exactly the limit fits"
    );
    s.update(Update::Release {
        pool: P,
        window,
        reserved: 40,
    })
    .await;
    s.update(settle(HOUR_MS, window, 60, 30)).await;
    assert_eq!(committed(s).await, 30, "real instead of reserved");
    s.update(Update::AddSpend {
        pool: P,
        window_ms: HOUR_MS,
        amount: 70,
    })
    .await;
    // At the limit, even an ask of zero is refused.
    let full = s.admit(pool(0)).await;
    assert_eq!(
        (full.verdict, full.pool),
        (Verdict::PoolFull, Some((window, 100)))
    );
}

async fn a_release_or_settlement_never_leaves_less_than_nothing(s: &Subject) {
    let (window, _) = s.admit(pool(30)).await.pool.unwrap();
    s.update(Update::Release {
        pool: P,
        window,
        reserved: 50,
    })
    .await;
    assert_eq!(committed(s).await, 0);
    // Had the total gone to -20, 100 would be admitted with 80 committed.
    assert_eq!(s.admit(pool(100)).await.pool, Some((window, 100)));
    s.update(settle(HOUR_MS, window, 150, 10)).await;
    assert_eq!(committed(s).await, 0, "100 - 150 + 10 stops at zero");
}

/// Pool names for the tries of a case about windows: a real clock may roll over mid-case,
/// and then the case tries again, in a pool nothing touched yet.
const TRIES: [&str; 5] = ["w0", "w1", "w2", "w3", "w4"];
/// A window short enough to end within a case (ms).
const W: u64 = 20;

fn windowed(name: &'static str, expected: u64) -> Admit {
    Admit {
        pool: Some(PoolAsk {
            name,
            ..pool_in(W, expected)
        }),
        ..Admit::default()
    }
}

/// The current window of pool `name` and what is committed in it (an ask of zero).
async fn probe(s: &Subject, name: &'static str) -> (u64, u64) {
    s.admit(windowed(name, 0))
        .await
        .pool
        .expect("a pool answer")
}

/// Wait until pool `name`'s window is no longer `window`; the new window.
async fn next_window(s: &Subject, name: &'static str, window: u64) -> u64 {
    for _ in 0..10 * W {
        let (now, _) = probe(s, name).await;
        if now != window {
            assert_eq!(now, window + 1, "windows are consecutive");
            return now;
        }
        s.pass(Duration::from_millis(1)).await;
    }
    panic!("window {window} never ended");
}

async fn a_settlement_after_its_window_rolled_over_charges_the_current_one(s: &Subject) {
    for name in TRIES {
        let (old, _) = s.admit(windowed(name, 40)).await.pool.unwrap();
        let current = next_window(s, name, old).await;
        s.update(Update::Settle {
            pool: name,
            window_ms: W,
            window: old,
            reserved: 40,
            real: 25,
        })
        .await;
        let refused = s.admit(windowed(name, 80)).await;
        let admitted = s.admit(windowed(name, 75)).await;
        let (last, _) = probe(s, name).await;
        if refused.pool.map(|(w, _)| w) != Some(current) || last != current {
            assert!(s.manual.is_none(), "the memory store's clock did not move");
            continue;
        }
        // The new window is charged the real cost (the old one keeps the reservation until
        // it expires): it starts from 25.
        assert_eq!(
            (refused.verdict, refused.pool),
            (Verdict::PoolFull, Some((current, 25)))
        );
        assert_eq!(
            (admitted.verdict, admitted.pool),
            (Verdict::Admitted, Some((current, 100)))
        );
        return;
    }
    panic!("every try straddled a window boundary");
}

async fn added_spend_goes_to_the_current_window_and_the_next_starts_empty(s: &Subject) {
    for name in TRIES {
        let (first, before) = probe(s, name).await;
        s.update(Update::AddSpend {
            pool: name,
            window_ms: W,
            amount: 30,
        })
        .await;
        let (last, after) = probe(s, name).await;
        if first != last {
            assert!(s.manual.is_none(), "the memory store's clock did not move");
            continue;
        }
        assert_eq!((before, after), (0, 30));
        let next = next_window(s, name, last).await;
        let (now, held) = probe(s, name).await;
        if now != next {
            continue;
        }
        assert_eq!(held, 0, "window {next} starts empty");
        return;
    }
    panic!("every try straddled a window boundary");
}

// ---- pacing ----

async fn the_pacing_bucket_serves_its_burst_then_one_slot_per_interval(s: &Subject) {
    let interval = Duration::from_millis(100);
    let mut waits = Vec::new();
    for _ in 0..4 {
        let a = s.admit(pace(interval, 2, Duration::MAX)).await;
        assert_eq!(a.verdict, Verdict::Admitted);
        waits.push(a.pace_wait);
    }
    assert_eq!(&waits[..2], &[Duration::ZERO; 2], "the burst goes at once");
    s.near(waits[2], interval, "third slot");
    s.near(waits[3], 2 * interval, "fourth slot");
    // A caller that cannot wait for the next slot is refused, told the wait, and takes none.
    let late = s.admit(pace(interval, 2, Duration::from_millis(50))).await;
    assert_eq!(late.verdict, Verdict::PaceTooLate);
    s.near(late.pace_wait, 3 * interval, "the slot it was refused");
    let next = s.admit(pace(interval, 2, Duration::MAX)).await;
    s.near(
        next.pace_wait,
        3 * interval,
        "the refused slot is still free",
    );
}

async fn the_pacing_bucket_refills_while_idle(s: &Subject) {
    let interval = Duration::from_millis(5);
    let waits = || async {
        let mut waits = Vec::new();
        for _ in 0..3 {
            waits.push(s.admit(pace(interval, 2, Duration::MAX)).await.pace_wait);
        }
        waits
    };
    let busy = waits().await;
    assert_eq!(&busy[..2], &[Duration::ZERO; 2]);
    s.near(busy[2], interval, "after the burst");
    // Idle past the last slot and the burst's length: the whole burst is back.
    s.pass(3 * interval).await;
    let rested = waits().await;
    assert_eq!(&rested[..2], &[Duration::ZERO; 2], "{rested:?}");
    s.near(rested[2], interval, "after the burst again");
}

// ---- all checks, then all writes ----

/// The ask that uses everything: a first attempt through the breaker, a reservation of 10 in
/// the pool and a slot from a bucket of one request a second (no burst).
fn everything(max_wait: Duration) -> Admit {
    Admit {
        breaker: first().breaker,
        pool: Some(pool_in(HOUR_MS, 10)),
        pace: Some(pace_of(Duration::from_secs(1), 1, max_wait)),
        probe: None,
    }
}

async fn an_admission_writes_all_of_it(s: &Subject) {
    let a = s.admit(everything(Duration::ZERO)).await;
    assert_eq!(a.verdict, Verdict::Admitted);
    assert_eq!(a.pool.unwrap().1, 10, "reserved");
    assert_eq!(a.pace_wait, Duration::ZERO);
    assert_eq!(committed(s).await, 10);
    let slot = s
        .admit(pace(Duration::from_secs(1), 1, Duration::MAX))
        .await;
    s.near(slot.pace_wait, Duration::from_secs(1), "its slot was taken");
    assert_eq!(
        retries_left(s, 1_000_000, 0).await,
        1,
        "its deposit was counted"
    );
}

async fn checks_go_breaker_retry_budget_pacer_pool_and_a_refusal_takes_nothing(s: &Subject) {
    // Every check fails: open breaker, empty retry budget, busy pacer, full pool.
    s.update(open(Duration::from_secs(30), false)).await;
    s.admit(pace(Duration::from_secs(1), 1, Duration::MAX))
        .await;
    let (window, _) = s.admit(pool(100)).await.pool.unwrap();
    let all = |max_wait| Admit {
        breaker: retry(1_000_000, 0).breaker,
        ..everything(max_wait)
    };
    let a = s.admit(all(Duration::ZERO)).await;
    assert_eq!(a.verdict, Verdict::BreakerOpen);
    assert_eq!(a.pool, Some((window, 100)), "the pool is reported even so");
    s.update(Update::BreakerClosed { breaker: B }).await;
    assert_eq!(
        s.admit(all(Duration::ZERO)).await.verdict,
        Verdict::RetryBudget
    );
    s.admit(first()).await; // room for one retry
    assert_eq!(
        s.admit(all(Duration::ZERO)).await.verdict,
        Verdict::PaceTooLate
    );
    // A caller that waits for the slot gets past the pacer, to the full pool.
    let b = s.admit(all(Duration::MAX)).await;
    assert_eq!(b.verdict, Verdict::PoolFull);
    assert_eq!(b.pool, Some((window, 100)));
    // None of the four refusals took anything.
    assert_eq!(committed(s).await, 100, "no reservation");
    let slot = s
        .admit(pace(Duration::from_secs(1), 1, Duration::MAX))
        .await;
    s.near(slot.pace_wait, Duration::from_secs(1), "no pacing slot");
    assert_eq!(retries_left(s, 1_000_000, 0).await, 1, "no withdrawal");
}

async fn a_first_attempt_refused_by_the_breaker_deposits_nothing(s: &Subject) {
    s.update(open(Duration::from_secs(30), false)).await;
    let a = s.admit(everything(Duration::MAX)).await;
    assert_eq!(a.verdict, Verdict::BreakerOpen);
    assert_eq!(a.pool.unwrap().1, 0);
    s.update(Update::BreakerClosed { breaker: B }).await;
    assert_eq!(retries_left(s, 1_000_000, 0).await, 0, "no deposit");
    assert_eq!(committed(s).await, 0, "no reservation");
    let slot = s
        .admit(pace(Duration::from_secs(1), 1, Duration::MAX))
        .await;
    assert_eq!(slot.pace_wait, Duration::ZERO, "no pacing slot");
}

// ---- the runner ----

/// Names the case that panicked, and on which store.
struct Naming(&'static str, &'static str);

impl Drop for Naming {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("conformance case `{}` failed on {}", self.1, self.0);
        }
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        const CASES: usize = [$(stringify!($case)),*].len();

        /// Every case, in order, each on a fresh store from `fresh`; answers how many ran.
        async fn run_suite(kind: &'static str, fresh: impl Fn(usize) -> Subject) -> usize {
            let mut ran = 0;
            $(
                let subject = fresh(ran);
                subject.store.ping().await.expect("the store answers a ping");
                let naming = Naming(kind, stringify!($case));
                $case(&subject).await;
                drop(naming);
                ran += 1;
            )*
            ran
        }
    };
}

suite![
    a_closed_breaker_is_nothing_stored_and_the_answer_has_only_what_was_asked,
    an_open_breaker_rejects_for_its_cooldown_under_a_new_generation,
    without_force_a_running_open_state_is_kept_with_force_it_is_replaced,
    closing_clears_the_open_state_and_a_reopen_gets_a_later_generation,
    a_cooled_down_open_state_admits_is_kept_and_any_open_replaces_it,
    the_retry_budget_allows_its_ratio_of_first_attempts,
    the_retry_budgets_floor_allows_retries_without_first_attempts,
    a_pool_reserves_refuses_settles_releases_and_adds_spend,
    a_release_or_settlement_never_leaves_less_than_nothing,
    a_settlement_after_its_window_rolled_over_charges_the_current_one,
    added_spend_goes_to_the_current_window_and_the_next_starts_empty,
    the_pacing_bucket_serves_its_burst_then_one_slot_per_interval,
    the_pacing_bucket_refills_while_idle,
    an_admission_writes_all_of_it,
    checks_go_breaker_retry_budget_pacer_pool_and_a_refusal_takes_nothing,
    a_first_attempt_refused_by_the_breaker_deposits_nothing,
];

#[tokio::test]
async fn memory_store_follows_the_rules() {
    assert_eq!(run_suite("MemoryStore", |_| Subject::memory()).await, CASES);
}

#[tokio::test]
async fn redis_store_follows_the_rules() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    assert_eq!(
        run_suite("RedisStore", |case| Subject::redis(&url, case)).await,
        CASES
    );
}
