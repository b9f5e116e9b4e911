//! The worked example of docs/BUDGETS.md, computed: an hour of a provider answering mostly 429s
//! and billed timeouts, one logical call per second, a naive retry loop against
//! `#[resilient]` with a per-call budget and an hourly pool. The test renders the table and
//! checks that the docs quote it exactly (`UPDATE_DOCS=1 cargo test --test budget_doc`
//! rewrites the block).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use retry_runtime::{
    configure, observe, resilient, Budget, Classify, Config, ErrorClass, Metered, PoolConfig,
    Rejected, Spend,
};

const ANSWER: Spend = Spend::from_micros(10_000); // $0.01 a full answer
const PARTIAL: Spend = Spend::from_micros(5_000); // $0.005 streamed before the timeout

#[derive(Debug)]
enum LlmError {
    RateLimited,
    /// Timed out after streaming started: billed for what was streamed.
    CutOff,
    Runtime(Rejected),
}

impl From<Rejected> for LlmError {
    fn from(r: Rejected) -> Self {
        LlmError::Runtime(r)
    }
}

impl Classify for LlmError {
    fn class(&self) -> ErrorClass {
        match self {
            LlmError::RateLimited => ErrorClass::Status(429),
            LlmError::CutOff => ErrorClass::Timeout,
            LlmError::Runtime(r) => r.class(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        matches!(self, LlmError::RateLimited).then_some(Duration::from_secs(2))
    }
    fn spend(&self) -> Spend {
        match self {
            LlmError::CutOff => PARTIAL,
            _ => Spend::ZERO,
        }
    }
}

struct Answer;

impl Metered for Answer {
    fn spend(&self) -> Spend {
        ANSWER
    }
}

/// The provider during the incident: of its attempts, 50% 429 (free), 30% billed
/// timeouts, 20% answers; drawn from a counter, so every run is the same.
#[derive(Default)]
struct Provider {
    attempts: Cell<u64>,
    billed: Cell<u64>,
    wasted: Cell<u64>,
}

impl Provider {
    fn call(&self) -> Result<Answer, LlmError> {
        let n = self.attempts.get();
        self.attempts.set(n + 1);
        let roll = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 10;
        match roll {
            0..=4 => Err(LlmError::RateLimited),
            5..=7 => {
                self.billed.set(self.billed.get() + PARTIAL.micros());
                self.wasted.set(self.wasted.get() + PARTIAL.micros());
                Err(LlmError::CutOff)
            }
            _ => {
                self.billed.set(self.billed.get() + ANSWER.micros());
                Ok(Answer)
            }
        }
    }
}

/// What a naive team writes: three tries, a second apart, whatever the error.
async fn naive(provider: &Provider) -> Result<Answer, LlmError> {
    let mut last = Err(LlmError::RateLimited);
    for _ in 0..3 {
        last = provider.call();
        if last.is_ok() {
            return last;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    last
}

#[resilient(max = 3, base = "500ms", cap = "8s", budget = "0.01usd")]
async fn per_call(provider: &Provider) -> Result<Answer, LlmError> {
    provider.call()
}

#[resilient(
    max = 3,
    base = "500ms",
    cap = "8s",
    budget = "0.01usd",
    pool = "doc-hourly"
)]
async fn pooled(provider: &Provider) -> Result<Answer, LlmError> {
    provider.call()
}

#[derive(Clone, Copy)]
enum Policy {
    Naive,
    PerCall,
    Pooled,
}

struct Figures {
    calls: u64,
    answered: u64,
    attempts: u64,
    billed: u64,
    wasted: u64,
}

async fn hour(provider: Rc<Provider>, policy: Policy) -> Figures {
    let answered = Rc::new(Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    let calls = 3600;
    local
        .run_until(async {
            let mut tasks = Vec::new();
            for _ in 0..calls {
                let (provider, answered) = (provider.clone(), answered.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let ok = match policy {
                        Policy::Naive => naive(&provider).await.is_ok(),
                        Policy::PerCall => observe(per_call(&provider)).await.0.is_ok(),
                        Policy::Pooled => observe(pooled(&provider)).await.0.is_ok(),
                    };
                    answered.set(answered.get() + u64::from(ok));
                }));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
        .await;
    Figures {
        calls,
        answered: answered.get(),
        attempts: provider.attempts.get(),
        billed: provider.billed.get(),
        wasted: provider.wasted.get(),
    }
}

fn usd(micros: u64) -> String {
    format!(
        "${}.{:02}",
        micros / 1_000_000,
        (micros % 1_000_000) / 10_000
    )
}

fn row(name: &str, f: &Figures) -> String {
    format!(
        "| {name} | {} | {} | {} | {} | {} | {:.2} |",
        f.attempts,
        f.answered,
        usd(f.billed),
        usd(f.wasted),
        if f.answered == 0 {
            "-".to_string()
        } else {
            format!("${:.4}", f.billed as f64 / 1e6 / f.answered as f64)
        },
        f.attempts as f64 / f.calls as f64,
    )
}

#[tokio::test(start_paused = true)]
async fn budgets_worked_example() {
    configure(Config::default().with_pool(
        "doc-hourly",
        PoolConfig {
            limit: Budget::usd(15.00),
            window: Duration::from_secs(3600),
        },
    ))
    .unwrap();
    retry_runtime::testing::seed_jitter(2026);

    let naive_f = hour(Rc::new(Provider::default()), Policy::Naive).await;
    let per_call_f = hour(Rc::new(Provider::default()), Policy::PerCall).await;
    let ours_f = hour(Rc::new(Provider::default()), Policy::Pooled).await;

    let table = [
        "| policy | provider attempts | answered | billed | wasted (billed failures) | per answer | attempts per call |".to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
        row("naive: 3 tries, 1 s apart", &naive_f),
        row("`#[resilient]`: budget $0.01/call", &per_call_f),
        row("`#[resilient]`: budget $0.01/call, pool $15/h", &ours_f),
    ]
    .join("\n");
    println!("{table}");

    // The directions the page claims.
    assert!(
        ours_f.billed <= 15_000_000 + 4 * ANSWER.micros(),
        "the pool holds the hour near $15"
    );
    assert!(ours_f.billed < naive_f.billed);
    assert!(ours_f.wasted < naive_f.wasted);
    assert!(ours_f.attempts < naive_f.attempts);
    assert!(
        per_call_f.wasted < naive_f.wasted,
        "the per-call budget alone cuts waste"
    );
    assert!(per_call_f.attempts < naive_f.attempts);

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/BUDGETS.md");
    let doc = std::fs::read_to_string(path).expect("docs/BUDGETS.md");
    let (begin, end) = ("<!-- figures:begin -->\n", "\n<!-- figures:end -->");
    let start = doc.find(begin).expect("figures:begin marker") + begin.len();
    let stop = doc.find(end).expect("figures:end marker");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let updated = format!("{}{}{}", &doc[..start], table, &doc[stop..]);
        std::fs::write(path, updated).unwrap();
    } else {
        assert_eq!(
            &doc[start..stop],
            table,
            "docs/BUDGETS.md is out of date: run UPDATE_DOCS=1 cargo test --test budget_doc"
        );
    }
}
