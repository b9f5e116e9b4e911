//! Quickstart: a flaky in-process "LLM provider" behind a `#[resilient]` function.
//!
//! ```text
//! cargo run --example quickstart              # seed 7
//! cargo run --example quickstart -- --seed 42 # other jitter, same seed => same delays
//! ```
//!
//! Each call prints its report: every attempt with the wait before it, its outcome, and why
//! the call stopped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use retry_runtime::{observe, resilient, retry_on, Classify, ErrorClass, Rejected};

/// What our provider client can fail with.
#[derive(Debug)]
enum LlmError {
    /// The provider answered with an error status (and maybe a Retry-After).
    Http {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The runtime cut the attempt (timeout) or the call (deadline).
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
            LlmError::Http { status, .. } => ErrorClass::Status(*status),
            LlmError::Runtime(r) => r.class(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Http { retry_after, .. } => *retry_after,
            LlmError::Runtime(_) => None,
        }
    }
}

/// A pretend provider: answers from a script of failures, then succeeds.
struct FlakyProvider {
    script: Mutex<Vec<Answer>>,
    calls: AtomicU32,
}

#[derive(Clone)]
enum Answer {
    Ok,
    Status(u16),
    RateLimited(Duration),
    Hang,
}

impl FlakyProvider {
    fn new(mut script: Vec<Answer>) -> Self {
        script.reverse();
        Self {
            script: Mutex::new(script),
            calls: AtomicU32::new(0),
        }
    }

    async fn chat(&self, prompt: &str) -> Result<String, LlmError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let next = self.script.lock().unwrap().pop().unwrap_or(Answer::Ok);
        match next {
            Answer::Ok => Ok(format!("a thoughtful answer to {prompt:?}")),
            Answer::Status(status) => Err(LlmError::Http {
                status,
                retry_after: None,
            }),
            Answer::RateLimited(wait) => Err(LlmError::Http {
                status: 429,
                retry_after: Some(wait),
            }),
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok("too late".into())
            }
        }
    }
}

/// The function our application calls: up to 4 attempts, full-jitter backoff from 200 ms,
/// each attempt cut at 1 s, the whole call at 10 s.
#[resilient(
    backoff = "exp_jitter",
    max = 4,
    base = "200ms",
    cap = "2s",
    timeout = "1s",
    deadline = "10s"
)]
#[retry_on(429, 500..=599, timeout)]
async fn complete(provider: &FlakyProvider, prompt: &str) -> Result<String, LlmError> {
    provider.chat(prompt).await
}

/// The same call behind a named circuit breaker, with the last good answer for the same
/// prompt as the fallback: during an outage the breaker stops sending traffic, and callers get
/// a (labelled, dated) cached answer instead of an error.
#[resilient(max = 2, base = "100ms", breaker = "quickstart", fallback = cached, stale_for = "10m")]
async fn complete_or_cached(
    provider: &FlakyProvider,
    #[key] prompt: &str,
) -> Result<String, LlmError> {
    provider.chat(prompt).await
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seed = std::env::args()
        .skip_while(|a| a != "--seed")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    retry_runtime::testing::seed_jitter(seed);
    println!("jitter seed {seed}\n");

    let scenarios: Vec<(&str, Vec<Answer>)> = vec![
        ("healthy provider", vec![Answer::Ok]),
        (
            "brownout: two 503s, then an answer",
            vec![Answer::Status(503), Answer::Status(503), Answer::Ok],
        ),
        (
            "rate limited: 429 with Retry-After 1s",
            vec![Answer::RateLimited(Duration::from_secs(1)), Answer::Ok],
        ),
        (
            "caller fault: 400 is never retried",
            vec![Answer::Status(400), Answer::Ok],
        ),
        (
            "hanging provider: each attempt cut at 1s",
            vec![Answer::Hang, Answer::Hang, Answer::Ok],
        ),
        (
            "hard outage: every attempt fails",
            vec![Answer::Status(503); 10],
        ),
    ];

    for (title, script) in scenarios {
        let provider = FlakyProvider::new(script);
        let (result, report) = observe(complete(&provider, "why is the sky blue?")).await;
        println!("== {title}");
        match &result {
            Ok(answer) => println!("   -> Ok({answer:?})"),
            Err(e) => println!("   -> Err({e:?})"),
        }
        println!(
            "   provider saw {} call(s)",
            provider.calls.load(Ordering::Relaxed)
        );
        print!("{report}");
        println!();
    }

    // A breaker opens after 5 outage failures in 60 s (the defaults); while it is open, calls
    // are refused without reaching the provider, and the cached answer is served instead.
    println!("== outage behind a breaker, with a cached answer as the fallback");
    let healthy = FlakyProvider::new(vec![Answer::Ok]);
    let _ = complete_or_cached(&healthy, "capital of France?").await;
    let down = FlakyProvider::new(vec![Answer::Status(503); 100]);
    for call in 1..=5 {
        let (result, report) = observe(complete_or_cached(&down, "capital of France?")).await;
        let served = match report.fallback() {
            Some(fb) => format!(
                "served by {} ({:.1?} old)",
                fb.kind,
                fb.age.unwrap_or_default()
            ),
            None => "no fallback".to_string(),
        };
        println!(
            "   call {call}: {} attempt(s), stop {}, {served}, answer {:?}",
            report.attempts().len(),
            report.stop().map(|s| s.as_str()).unwrap_or("-"),
            result.map_err(|e| format!("{e:?}")),
        );
    }
    println!(
        "   provider saw {} call(s) for 5 logical calls (10 without the breaker): once open, it kept calls away",
        down.calls.load(Ordering::Relaxed)
    );
}
