//! The hot path (ARCHITECTURE, "Hot path"): a `#[resilient]` call whose first attempt succeeds allocates nothing.
//!
//! A counting global allocator wraps `System`. Counting is switched on per thread, only around
//! the `.await` of the call under test, so the test harness, `block_on` and the runtime's own
//! set-up are never counted; each `#[test]` runs on its own thread, so the count is a
//! thread-local as well and parallel tests cannot add to each other's numbers.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::time::Duration;

use common::ApiError;
use retry_runtime::{
    observe, resilient, retry, retry_on, workflow, Budget, CallSite, Metered, Policy, Spend,
};

struct Counting;

thread_local! {
    // `const` initialisers and no destructors: reading these never allocates, so the
    // allocator can use them without recursing into itself.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: during thread teardown the slots may be gone; nothing is counted then.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` unchanged; counting only touches thread-locals.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Await `fut` with counting switched on; return its output and the allocations it made.
async fn count_allocations<F: Future>(fut: F) -> (F::Output, usize) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let out = fut.await;
    COUNTING.with(|on| on.set(false));
    (out, ALLOCATIONS.with(Cell::get))
}

/// A current-thread runtime, built outside every measured region.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Run `call` once to warm up (tracing callsite registration, thread-locals, the jitter
/// sequence), then once measured; return the measured allocation count.
fn allocations_of_second_call<F, Fut>(call: F) -> usize
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<u64, ApiError>>,
{
    let rt = runtime();
    rt.block_on(async {
        assert_eq!(call().await, Ok(7), "warm-up call");
        let (out, n) = count_allocations(call()).await;
        assert_eq!(out, Ok(7), "measured call");
        n
    })
}

#[resilient]
async fn default_policy(x: u64) -> Result<u64, ApiError> {
    Ok(black_box(x))
}

#[resilient(timeout = "5s")]
async fn with_timeout(x: u64) -> Result<u64, ApiError> {
    Ok(black_box(x))
}

#[resilient(timeout = "5s", deadline = "30s")]
async fn with_timeout_and_deadline(x: u64) -> Result<u64, ApiError> {
    Ok(black_box(x))
}

/// Like a real provider call: the attempt is pending once before it answers, so the
/// per-attempt timer is actually registered with tokio's timer wheel (and then cancelled).
#[resilient(timeout = "5s")]
async fn with_timeout_pending_once(x: u64) -> Result<u64, ApiError> {
    tokio::task::yield_now().await;
    Ok(black_box(x))
}

#[resilient(max = 5)]
#[retry_on(429, 500..=599, timeout)]
async fn with_retry_on(x: u64) -> Result<u64, ApiError> {
    Ok(black_box(x))
}

#[resilient(breaker = "alloc-test")]
async fn with_breaker(x: u64) -> Result<u64, ApiError> {
    Ok(black_box(x))
}

/// A billed answer, so that the budget has something to count.
#[derive(Debug, PartialEq)]
struct Billed(u64);

impl Metered for Billed {
    fn spend(&self) -> Spend {
        Spend::new(100, 50) // 0.0001 usd, 50 tokens
    }
}

#[resilient(breaker = "alloc-test-budget", budget = "0.10usd", timeout = "5s")]
async fn with_breaker_and_budget(x: u64) -> Result<Billed, ApiError> {
    Ok(Billed(black_box(x)))
}

async fn billed(x: u64) -> Result<u64, ApiError> {
    with_breaker_and_budget(x).await.map(|b| b.0)
}

static BY_HAND: Policy = Policy::new("alloc::by_hand").with_timeout(Duration::from_secs(5));
static BY_HAND_SITE: CallSite = CallSite::new(&BY_HAND);

#[test]
fn the_counter_is_live() {
    // If this fails the counter is dead and every "zero" below means nothing.
    let rt = runtime();
    let n = rt.block_on(count_allocations(async {
        black_box(Box::new(1u64));
    }));
    assert_eq!(
        n.1, 1,
        "Box::new inside the measured region must be counted"
    );

    // And a single success under observation allocates its report, which must show up too.
    let n = allocations_of_second_call(|| async { observe(default_policy(7)).await.0 });
    assert!(n >= 1, "the observed report must be counted, got {n}");
}

#[test]
fn default_policy_first_success_allocates_nothing() {
    assert_eq!(allocations_of_second_call(|| default_policy(7)), 0);
}

#[test]
fn timeout_first_success_allocates_nothing() {
    // The attempt is ready on its first poll, so `Timeout` never polls (registers) its
    // `Sleep`; building and dropping the unregistered timer entry does not allocate.
    assert_eq!(allocations_of_second_call(|| with_timeout(7)), 0);
    assert_eq!(
        allocations_of_second_call(|| with_timeout_and_deadline(7)),
        0
    );
}

#[test]
fn timeout_registered_in_the_timer_wheel_allocates_nothing() {
    // Counting is on for the whole await, so this also covers the scheduler running the
    // yielded task again; tokio's timer wheel is intrusive, registering is not allocating.
    // On a fresh runtime the first such call makes one allocation, and it is tokio's list of
    // deferred wakers (used by `yield_now`), not the timer: a bare `yield_now` does the same.
    assert_eq!(
        allocations_of_second_call(|| with_timeout_pending_once(7)),
        0
    );
}

#[test]
fn retry_on_first_success_allocates_nothing() {
    assert_eq!(allocations_of_second_call(|| with_retry_on(7)), 0);
}

#[test]
fn retry_fn_first_success_allocates_nothing() {
    let n = allocations_of_second_call(|| retry(&BY_HAND_SITE, || async { Ok(black_box(7)) }));
    assert_eq!(n, 0);
}

#[test]
fn breaker_and_budget_first_success_allocate_nothing() {
    // With a breaker and a budget. The breaker is resolved (and created, which
    // allocates) by the warm-up call; after that the call site holds a `&'static Breaker`.
    assert_eq!(allocations_of_second_call(|| with_breaker(7)), 0);
    assert_eq!(allocations_of_second_call(|| billed(7)), 0);
}

#[test]
fn a_call_inside_a_workflow_allocates_nothing() {
    // The workflow's own scope is an `Arc`, made by `workflow` outside the measured region;
    // the call inside only clones it.
    let rt = runtime();
    let (n, spent) = rt.block_on(workflow(Budget::usd(1.0), async {
        assert_eq!(billed(7).await, Ok(7), "warm-up call");
        count_allocations(billed(7)).await.1
    }));
    assert_eq!(
        spent,
        Spend::new(200, 100),
        "both calls were charged to the workflow"
    );
    assert_eq!(n, 0);
}

#[test]
fn a_subscriber_that_filters_debug_adds_nothing() {
    // Production has a subscriber; the success event is DEBUG, so it is filtered at the
    // callsite (its cached interest) before any field is formatted.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    let n = tracing::subscriber::with_default(subscriber, || {
        allocations_of_second_call(|| default_policy(7))
    });
    assert_eq!(n, 0);
}

#[test]
fn only_the_observed_call_allocates() {
    let observed = allocations_of_second_call(|| async {
        let (out, report) = observe(default_policy(7)).await;
        assert_eq!(report.attempts().len(), 1);
        out
    });
    // The report's attempt list is the one allocation; the task-local scope itself is on
    // the stack.
    assert_eq!(observed, 1, "observed call");
    assert_eq!(allocations_of_second_call(|| default_policy(7)), 0);
}

type Chunks = futures::stream::Iter<std::vec::IntoIter<Result<u64, ApiError>>>;

#[resilient(max = 3, first_token = "10s", idle = "30s")]
#[retry_on(500..=599)]
async fn streamed(
    chunks: Vec<Result<u64, ApiError>>,
) -> Result<retry_runtime::Streamed<Chunks>, ApiError> {
    Ok(retry_runtime::Streamed::new(futures::stream::iter(chunks)))
}

#[test]
fn passing_a_chunk_through_a_stream_allocates_nothing() {
    use futures::StreamExt;
    let rt = runtime();
    rt.block_on(async {
        let chunks: Vec<Result<u64, ApiError>> = (0..1_000).map(Ok).collect();
        // Opening and committing the call allocates (the stream's tail, its idle timer);
        // passing each chunk through, with the idle timer reset every time, does not.
        let mut stream = streamed(chunks).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 0);
        let (sum, allocations) = count_allocations(async {
            let mut sum = 0;
            for _ in 1..1_000 {
                sum += stream.next().await.unwrap().unwrap();
            }
            sum
        })
        .await;
        assert_eq!(sum, (1..1_000).sum::<u64>());
        assert_eq!(allocations, 0, "allocations while passing 999 chunks");
        assert!(stream.next().await.is_none());
    });
}
