//! The storm simulator's engine, shared by the `storm` example (the command line) and
//! `tests/storm.rs` (the assertions).
//!
//! A simulated LLM provider and a population of callers run on tokio's paused clock, so an
//! hour of traffic takes seconds. Every policy calls the same provider through its own code:
//! the hand-written loops (naive, the OpenAI SDK's) as written, ours through real
//! `#[resilient]` functions and the real runtime (breaker, retry budget, pacer, fallback).
//! [`run_scenario`] runs the five policies through one [`Scenario`], [`figures`] sums a
//! [`Run`] up, [`table`] prints the figures and [`chart`] draws the provider's load.
//!
//! Fresh state per scenario: breakers, pacers and the fallback cache are process-wide, and
//! `configure` runs once per process. So each scenario's `ours` is its own function with its
//! own breaker and pacer (`storm-a` ... `storm-f`, see the `ours!` macro) and its own cache,
//! all configured at once; scenarios then run one after the other in one process. Within a
//! scenario the five policies run one after the other; only `ours` touches the named breaker
//! and pacer, and it runs once per scenario, so nothing carries over. (Run a scenario twice in
//! one process and its second `ours` would inherit the first one's breaker and cache.)
//!
//! The model and the figures' definitions are in `docs/PERFORMANCE.md`, "Storm simulator".

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod chart;
mod table;

pub use chart::chart;
pub use table::{table, table_header, table_row};

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore, SeedableRng};
use retry_runtime::{
    resilient, retry_on, Classify, ErrorClass, Metered, Price, Rejected, Spend, Usage,
};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// A seeded random number generator (`rand`'s `SmallRng`): the simulation draws nothing from
// the OS.

/// `rand`'s `SmallRng` behind the three draws the simulation makes; same seed, same stream.
#[derive(Debug, Clone)]
pub struct Rng(SmallRng);

impl Rng {
    /// A generator for `seed`, mixed with a stream number so that callers get independent
    /// streams.
    pub fn new(seed: u64, stream: u64) -> Self {
        Rng(SmallRng::seed_from_u64(
            seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F),
        ))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// Exponentially distributed with this mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// What goes wrong during a scenario's incident.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Incident {
    /// Offered load rises to `Scenario::incident_rps` (above the rate limit).
    LoadSpike,
    /// This share of admitted calls fails with 503 (billed for the prompt: the provider did
    /// the prefill before failing).
    Brownout(f64),
    /// Every call fails at once with 503 (nothing processed, nothing billed).
    Outage,
    /// Service times are multiplied by this factor (a lost GPU pool), on a provider whose
    /// capacity also falls as its backlog grows.
    Slowdown(f64),
    /// Offered load rises to `Scenario::incident_rps` on a provider that sheds load: above
    /// `capacity` attempts a second it answers a share with a fast 503 (nothing processed,
    /// nothing billed), and the capacity it keeps falls by `collapse` times the excess (the
    /// shedding itself costs it work), down to a tenth.
    Shedding {
        /// Attempts a second the provider serves while it is not overloaded.
        capacity: f64,
        /// How fast its capacity falls with the excess: at `capacity × (1 + x)` offered, it
        /// keeps `capacity × (1 − collapse × x)`.
        collapse: f64,
    },
}

/// One scenario: a provider, a load profile and an incident.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// `a` to `f`.
    pub key: char,
    /// What it shows.
    pub title: &'static str,
    /// Healthy traffic before the incident.
    pub warmup: Duration,
    /// How long the incident lasts.
    pub incident: Duration,
    /// Healthy traffic after it: time to recover.
    pub after: Duration,
    /// Logical calls per second offered outside the incident.
    pub base_rps: f64,
    /// Logical calls per second offered during the incident.
    pub incident_rps: f64,
    /// The account's request limit (requests per minute).
    pub rpm: u32,
    /// The account's token limit (tokens per minute).
    pub tpm: u64,
    /// Requests the provider serves at once.
    pub workers: usize,
    /// Mean service time of a healthy request, seconds.
    pub service_s: f64,
    /// Whether service slows down as the backlog grows (up to twice as slow).
    pub thrash: bool,
    /// The incident.
    pub kind: Incident,
}

impl Scenario {
    /// (a) 429 storm: offered load 3x the account's rate limit for 5 minutes.
    pub fn storm() -> Self {
        Scenario {
            key: 'a',
            title: "429 storm: offered load 3x the rate limit for 5 min",
            warmup: Duration::from_secs(60),
            incident: Duration::from_secs(300),
            after: Duration::from_secs(120),
            base_rps: 5.0,
            incident_rps: 30.0,
            rpm: 600,
            tpm: 1_000_000,
            workers: 64,
            service_s: 1.5,
            thrash: false,
            kind: Incident::LoadSpike,
        }
    }

    /// (b) Brownout: 70% of calls fail with 503 for 2 minutes.
    pub fn brownout() -> Self {
        Scenario {
            key: 'b',
            title: "brownout: 70% of calls fail with 503 for 2 min",
            incident: Duration::from_secs(120),
            incident_rps: 5.0,
            kind: Incident::Brownout(0.7),
            ..Self::storm()
        }
    }

    /// (c) Hard outage for 60 s.
    pub fn outage() -> Self {
        Scenario {
            key: 'c',
            title: "hard outage: every call fails for 60 s",
            incident: Duration::from_secs(60),
            incident_rps: 5.0,
            kind: Incident::Outage,
            ..Self::storm()
        }
    }

    /// (d) Metastable: the provider's capacity falls as its backlog grows; a 60 s slowdown
    /// (service 3x slower) triggers it, then ends. Healthy capacity is 25 req/s, at most 2x
    /// slower under a backlog (12.5 req/s): 10 req/s of first attempts drain it, not 3x that.
    pub fn metastable() -> Self {
        Scenario {
            key: 'd',
            title: "metastable: a 60 s slowdown, capacity falls as the backlog grows",
            warmup: Duration::from_secs(60),
            incident: Duration::from_secs(60),
            after: Duration::from_secs(300),
            base_rps: 10.0,
            incident_rps: 10.0,
            rpm: 1800,
            tpm: 3_000_000,
            workers: 25,
            service_s: 1.0,
            thrash: true,
            kind: Incident::Slowdown(3.0),
        }
    }

    /// (e) A milder brownout: 30% of calls fail with 503 for 2 minutes.
    pub fn brownout_30() -> Self {
        Scenario {
            key: 'e',
            title: "brownout: 30% of calls fail with 503 for 2 min",
            kind: Incident::Brownout(0.3),
            ..Self::brownout()
        }
    }

    /// (f) A provider that sheds load: it serves 10 attempts a second, answers the excess with
    /// fast 503s and loses capacity to the shedding itself. A 60 s spike to 14 calls a second
    /// tips it over; afterwards 6 calls a second fit, but three tries of each do not: retries
    /// keep it shedding until they are shed.
    pub fn shedding() -> Self {
        Scenario {
            key: 'f',
            title: "load shedding: fast 503s above 10 req/s, a 60 s spike to 14/s",
            warmup: Duration::from_secs(60),
            incident: Duration::from_secs(60),
            after: Duration::from_secs(180),
            base_rps: 6.0,
            incident_rps: 14.0,
            rpm: 1200,
            tpm: 2_000_000,
            workers: 64,
            service_s: 1.5,
            thrash: false,
            kind: Incident::Shedding {
                capacity: 10.0,
                collapse: 2.5,
            },
        }
    }

    /// Every scenario's key, in table order.
    pub const KEYS: [char; 6] = ['a', 'b', 'c', 'd', 'e', 'f'];

    /// The scenario named by `key`.
    pub fn by_key(key: char) -> Option<Self> {
        match key {
            'a' => Some(Self::storm()),
            'b' => Some(Self::brownout()),
            'c' => Some(Self::outage()),
            'd' => Some(Self::metastable()),
            'e' => Some(Self::brownout_30()),
            'f' => Some(Self::shedding()),
            _ => None,
        }
    }

    /// The same scenario, shortened for the test: 30 s before, a 60 s incident, 40 s after.
    pub fn short(mut self) -> Self {
        self.warmup = Duration::from_secs(30);
        self.incident = self.incident.min(Duration::from_secs(60));
        self.after = self.after.min(Duration::from_secs(60));
        self
    }

    /// When the incident starts, seconds from the start of the run.
    pub fn incident_start(&self) -> f64 {
        self.warmup.as_secs_f64()
    }

    /// When it ends.
    pub fn incident_end(&self) -> f64 {
        (self.warmup + self.incident).as_secs_f64()
    }

    /// When arrivals stop.
    pub fn end(&self) -> f64 {
        (self.warmup + self.incident + self.after).as_secs_f64()
    }

    fn in_incident(&self, t: f64) -> bool {
        t >= self.incident_start() && t < self.incident_end()
    }

    /// Logical calls per second offered at `t`.
    pub fn offered_rps(&self, t: f64) -> f64 {
        if self.in_incident(t) {
            self.incident_rps
        } else {
            self.base_rps
        }
    }

    /// What the provider can serve at `t`, requests per second: the rate limit, or the
    /// service capacity when that is lower (the chart's capacity line).
    pub fn capacity_rps(&self, t: f64) -> f64 {
        let limit = f64::from(self.rpm) / 60.0;
        let served = self.workers as f64 / self.service_s;
        match self.kind {
            Incident::Outage if self.in_incident(t) => 0.0,
            Incident::Slowdown(f) if self.in_incident(t) => limit.min(served / f),
            Incident::Shedding { capacity, .. } => limit.min(served).min(capacity),
            _ => limit.min(served),
        }
    }

    /// The most successful answers per second anyone could get during the incident: the
    /// offered load, bounded by the capacity (and by the share that succeeds, in a
    /// brownout). The denominator of goodput.
    pub fn useful_capacity_rps(&self) -> f64 {
        let t = self.incident_start();
        let cap = match self.kind {
            Incident::Brownout(fail) => self.capacity_rps(t) * (1.0 - fail),
            _ => self.capacity_rps(t),
        };
        cap.min(self.incident_rps)
    }
}

// ---------------------------------------------------------------------------------------
// The provider.

/// $2.50 per million input tokens, $10.00 per million output tokens.
pub fn price() -> Price {
    Price::per_million(2.50, 10.00)
}

/// Distinct prompts callers ask (the key of ours' cached fallback).
pub const PROMPTS: u32 = 1000;
/// One-way network delay.
const NET: Duration = Duration::from_millis(20);
/// How soon a 429 comes back.
const REJECT_AFTER: Duration = Duration::from_millis(30);
/// The time constant a shedding provider's load is smoothed over, seconds.
const LOAD_TAU_S: f64 = 10.0;
/// How soon a hard-outage 503 comes back.
const OUTAGE_AFTER: Duration = Duration::from_millis(100);

/// Prompt tokens of a prompt: 200..1800, fixed per prompt.
pub fn prompt_tokens(prompt: u32) -> u64 {
    200 + Rng::new(u64::from(prompt), 7).next_u64() % 1600
}

/// An answer: which logical call it was made for (a cached answer served to another call
/// says so), and what it used.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The logical call the provider answered.
    pub call: u64,
    /// Tokens used.
    pub usage: Usage,
}

impl Metered for Answer {
    fn spend(&self) -> Spend {
        price().cost(self.usage)
    }
}

/// What a provider call fails with.
#[derive(Debug, Clone)]
pub enum SimError {
    /// An HTTP error status, with `Retry-After` on a 429, and what the attempt was billed.
    Http {
        /// The status.
        status: u16,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
        /// What the provider billed for this failed attempt.
        billed: Spend,
    },
    /// The client's own timeout cut the attempt (the hand-written loops).
    Timeout,
    /// The runtime cut or refused the call.
    Runtime(Rejected),
}

impl From<Rejected> for SimError {
    fn from(r: Rejected) -> Self {
        SimError::Runtime(r)
    }
}

impl Classify for SimError {
    fn class(&self) -> ErrorClass {
        match self {
            SimError::Http { status, .. } => ErrorClass::Status(*status),
            SimError::Timeout => ErrorClass::Timeout,
            SimError::Runtime(r) => r.class(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            SimError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
    fn spend(&self) -> Spend {
        match self {
            SimError::Http { billed, .. } => *billed,
            _ => Spend::ZERO,
        }
    }
}

/// A token bucket refilled continuously, holding one second's worth (OpenAI enforces its
/// per-minute limits over short periods like this).
#[derive(Debug)]
struct Bucket {
    per_sec: f64,
    level: f64,
    at: f64,
}

impl Bucket {
    fn new(per_minute: f64) -> Self {
        let per_sec = per_minute / 60.0;
        Bucket {
            per_sec,
            level: per_sec,
            at: 0.0,
        }
    }

    fn refill(&mut self, now: f64) {
        self.level = (self.level + (now - self.at) * self.per_sec).min(self.per_sec.max(1.0));
        self.at = now;
    }

    /// Seconds until `units` fit (0 if they do now).
    fn wait_for(&self, units: f64) -> f64 {
        let need = units.min(self.per_sec.max(1.0)) - self.level;
        if need <= 0.0 {
            0.0
        } else {
            need / self.per_sec
        }
    }
}

/// Everything the provider saw, per second of the run.
#[derive(Debug, Default, Clone)]
pub struct ProviderStats {
    /// Attempts that reached the provider, per second.
    pub calls_per_sec: Vec<u32>,
    /// Answers delivered to a caller that was still waiting, per second.
    pub delivered_per_sec: Vec<u32>,
    /// Attempts per logical call id.
    pub attempts: Vec<u32>,
    /// 429s sent.
    pub rate_limited: u64,
    /// Everything billed, micro-dollars.
    pub billed_micros: u64,
    /// Billed for answers a caller received, micro-dollars.
    pub useful_micros: u64,
}

fn bump(v: &mut Vec<u32>, i: usize) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += 1;
}

#[derive(Debug)]
struct ProviderState {
    rng: Rng,
    requests: Bucket,
    tokens: Bucket,
    // When each worker is next free (seconds); its length is the worker count.
    workers: BinaryHeap<Reverse<Ms>>,
    // When each admitted request leaves the system: the backlog is those still in it.
    in_system: BinaryHeap<Reverse<Ms>>,
    // A shedding provider's offered load (arrivals a second, smoothed) and when it was read.
    load: f64,
    load_at: Ms,
    stats: ProviderStats,
}

// Times inside the provider are milliseconds since the run started (integers: ordered heaps).
type Ms = u64;

/// The simulated provider: a rate limiter (requests and tokens per minute, 429 with
/// `Retry-After`), a pool of workers with a queue in front, billing per attempt, and the
/// scenario's incident.
#[derive(Debug)]
pub struct Provider {
    spec: Scenario,
    start: Instant,
    state: Mutex<ProviderState>,
}

enum Admission {
    Outage,
    Shed,
    RateLimited(Duration),
    Brownout { done: Ms, billed: Spend },
    Served { done: Ms, usage: Usage },
}

impl Provider {
    /// A provider for this scenario whose run starts now.
    pub fn new(spec: &Scenario, seed: u64) -> Self {
        let workers = (0..spec.workers).map(|_| Reverse(0)).collect();
        Provider {
            spec: spec.clone(),
            start: Instant::now(),
            state: Mutex::new(ProviderState {
                rng: Rng::new(seed, u64::MAX),
                requests: Bucket::new(f64::from(spec.rpm)),
                tokens: Bucket::new(spec.tpm as f64),
                workers,
                in_system: BinaryHeap::new(),
                load: 0.0,
                load_at: 0,
                stats: ProviderStats::default(),
            }),
        }
    }

    fn now_ms(&self) -> Ms {
        self.start.elapsed().as_millis() as Ms
    }

    fn at(&self, ms: Ms) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// One chat completion for logical call `call`, asking `prompt`.
    pub async fn chat(&self, call: u64, prompt: u32) -> Result<Answer, SimError> {
        tokio::time::sleep(NET).await;
        let admission = self.admit(call, prompt);
        match admission {
            Admission::Outage => {
                tokio::time::sleep(OUTAGE_AFTER + NET).await;
                Err(SimError::Http {
                    status: 503,
                    retry_after: None,
                    billed: Spend::ZERO,
                })
            }
            Admission::Shed => {
                tokio::time::sleep(REJECT_AFTER + NET).await;
                Err(SimError::Http {
                    status: 503,
                    retry_after: None,
                    billed: Spend::ZERO,
                })
            }
            Admission::RateLimited(retry_after) => {
                tokio::time::sleep(REJECT_AFTER + NET).await;
                Err(SimError::Http {
                    status: 429,
                    retry_after: Some(retry_after),
                    billed: Spend::ZERO,
                })
            }
            Admission::Brownout { done, billed } => {
                tokio::time::sleep_until(self.at(done) + NET).await;
                Err(SimError::Http {
                    status: 503,
                    retry_after: None,
                    billed,
                })
            }
            Admission::Served { done, usage } => {
                tokio::time::sleep_until(self.at(done) + NET).await;
                // The caller is still there (a caller that gave up dropped this future): the
                // bill bought an answer. Work for callers that left is billed all the same.
                let answer = Answer { call, usage };
                let now = self.now_ms();
                let mut s = self.state.lock().unwrap();
                s.stats.useful_micros += answer.spend().micros();
                bump(&mut s.stats.delivered_per_sec, (now / 1000) as usize);
                Ok(answer)
            }
        }
    }

    fn admit(&self, call: u64, prompt: u32) -> Admission {
        let now = self.now_ms();
        let t = now as f64 / 1000.0;
        let spec = &self.spec;
        let mut s = self.state.lock().unwrap();
        bump(&mut s.stats.calls_per_sec, (now / 1000) as usize);
        bump(&mut s.stats.attempts, call as usize);
        let incident = spec.in_incident(t);
        if incident && spec.kind == Incident::Outage {
            return Admission::Outage;
        }
        if let Incident::Shedding { capacity, collapse } = spec.kind {
            // The offered load as the provider feels it: arrivals a second, smoothed over
            // the last few seconds (an overloaded server does not recover in one quiet second): a 10 s time constant.
            let dt = (now - s.load_at) as f64 / 1000.0;
            s.load = s.load * (-dt / LOAD_TAU_S).exp() + 1.0 / LOAD_TAU_S;
            s.load_at = now;
            let offered = s.load;
            let excess = (offered - capacity).max(0.0) / capacity;
            let kept = capacity * (1.0 - collapse * excess).max(0.1);
            if offered > kept && s.rng.unit() >= kept / offered {
                return Admission::Shed;
            }
        }
        let output = 100 + s.rng.next_u64() % 400;
        let usage = Usage {
            input: prompt_tokens(prompt),
            output,
        };
        let weight = (usage.input + usage.output) as f64;
        s.requests.refill(t);
        s.tokens.refill(t);
        let wait = s.requests.wait_for(1.0).max(s.tokens.wait_for(weight));
        if wait > 0.0 {
            s.stats.rate_limited += 1;
            // `retry-after-ms` (Azure OpenAI, and read first by the OpenAI SDKs): when the
            // bucket has room again, as the provider sees it.
            return Admission::RateLimited(Duration::from_millis(
                (wait * 1000.0).ceil().max(1.0) as u64
            ));
        }
        s.requests.level -= 1.0;
        s.tokens.level -= weight;

        // Queue for a worker; service time grows with the backlog on a thrashing provider.
        while s.in_system.peek().is_some_and(|r| r.0 <= now) {
            s.in_system.pop();
        }
        let backlog = s.in_system.len() as f64;
        let workers = spec.workers as f64;
        let mut factor = 1.0;
        if spec.thrash {
            factor *= 1.0 + ((backlog - 2.0 * workers) / (4.0 * workers)).clamp(0.0, 1.0);
        }
        if let (true, Incident::Slowdown(f)) = (incident, spec.kind) {
            factor *= f;
        }
        let service = (0.3 + s.rng.exp(spec.service_s - 0.3)).min(10.0) * factor;
        let Reverse(free) = s.workers.pop().unwrap_or(Reverse(now));
        let begin = free.max(now);
        let done = begin + (service * 1000.0) as Ms;
        s.workers.push(Reverse(done));
        s.in_system.push(Reverse(done));

        if let (true, Incident::Brownout(fail)) = (incident, spec.kind) {
            if s.rng.unit() < fail {
                let billed = price().cost(Usage {
                    input: usage.input,
                    output: 0,
                });
                s.stats.billed_micros += billed.micros();
                return Admission::Brownout { done, billed };
            }
        }
        s.stats.billed_micros += price().cost(usage).micros();
        Admission::Served { done, usage }
    }

    /// What the provider saw so far.
    pub fn stats(&self) -> ProviderStats {
        self.state.lock().unwrap().stats.clone()
    }
}

// ---------------------------------------------------------------------------------------
// The policies.

/// The retry policies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `for i in 0..3 { call; sleep(1s) }`, hand-written, 20 s client timeout.
    Naive,
    /// `#[resilient(backoff = "exp")]`: exponential, no jitter.
    Exp,
    /// `#[resilient(backoff = "exp_jitter")]`: full jitter, nothing else.
    FullJitter,
    /// The openai-python SDK's default, hand-written: 2 retries, `min(0.5 × 2^n, 8) s ×
    /// (1 − 0.25 × rand)`, `Retry-After` honoured when 0 < it <= 60 s, 600 s timeout.
    OpenAiSdk,
    /// Ours: jitter + classification + breaker + retry budget + pacing + `Retry-After` +
    /// cached fallback.
    Ours,
}

impl Policy {
    /// All of them, in table order.
    pub const ALL: [Policy; 5] = [
        Policy::Naive,
        Policy::Exp,
        Policy::FullJitter,
        Policy::OpenAiSdk,
        Policy::Ours,
    ];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Naive => "naive 3x/1s",
            Policy::Exp => "exp, no jitter",
            Policy::FullJitter => "full jitter",
            Policy::OpenAiSdk => "openai sdk",
            Policy::Ours => "ours (full)",
        }
    }
}

/// The per-attempt timeout of every policy but the OpenAI SDK's.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// The OpenAI SDK's default timeout.
pub const OPENAI_TIMEOUT: Duration = Duration::from_secs(600);

async fn naive(p: &Provider, call: u64, prompt: u32) -> Result<Answer, SimError> {
    let mut last = SimError::Timeout;
    for i in 0..3 {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, p.chat(call, prompt)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = e,
            Err(_) => last = SimError::Timeout,
        }
        if i < 2 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Err(last)
}

#[resilient(backoff = "exp", max = 3, base = "500ms", cap = "30s", timeout = "20s")]
#[retry_on(429, 500..=599, timeout)]
async fn exp_no_jitter(p: &Provider, call: u64, prompt: u32) -> Result<Answer, SimError> {
    p.chat(call, prompt).await
}

#[resilient(
    backoff = "exp_jitter",
    max = 3,
    base = "500ms",
    cap = "30s",
    timeout = "20s"
)]
#[retry_on(429, 500..=599, timeout)]
async fn full_jitter(p: &Provider, call: u64, prompt: u32) -> Result<Answer, SimError> {
    p.chat(call, prompt).await
}

/// openai-python's `_calculate_retry_timeout` and `_should_retry` (v1.x), with its defaults:
/// `max_retries = 2`, `timeout = 600 s`. It retries 408, 409, 429, 5xx, timeouts and
/// connection errors.
async fn openai_sdk(
    p: &Provider,
    call: u64,
    prompt: u32,
    rng: &mut Rng,
) -> Result<Answer, SimError> {
    const MAX_RETRIES: u32 = 2;
    let mut retries = 0;
    loop {
        let error = match tokio::time::timeout(OPENAI_TIMEOUT, p.chat(call, prompt)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => e,
            Err(_) => SimError::Timeout,
        };
        let retryable = match &error {
            SimError::Http { status, .. } => matches!(status, 408 | 409 | 429 | 500..=599),
            SimError::Timeout => true,
            SimError::Runtime(_) => false,
        };
        if !retryable || retries == MAX_RETRIES {
            return Err(error);
        }
        let delay = match error.retry_after() {
            Some(ra) if !ra.is_zero() && ra <= Duration::from_secs(60) => ra,
            _ => {
                let sleep = (0.5 * 2f64.powi(retries as i32)).min(8.0);
                Duration::from_secs_f64(sleep * (1.0 - 0.25 * rng.unit()))
            }
        };
        retries += 1;
        tokio::time::sleep(delay).await;
    }
}

/// Ours, once per scenario: breakers, pacers and the fallback cache are process-wide, so
/// each scenario's `ours` gets its own (`storm-a` ... `storm-f`, and its own call site and
/// cache), and scenarios can run one after the other in one process with fresh state.
///
/// Full jitter, up to 5 attempts, 429/5xx/timeouts retried (a 400 never), a breaker on its
/// defaults (its regime and retry budget), a pacer keeping under the rate limit, `Retry-After`
/// honoured (runtime default, up to 60 s), a 20 s attempt timeout and a 30 s deadline, a
/// 1.1-cent budget per call (twice an average answer: retries go where they are cheap), and
/// the last good answer to the same prompt as the fallback.
macro_rules! ours {
    ($($key:literal => $fn_name:ident => $name:tt),* $(,)?) => {
        $(
            #[resilient(
                backoff = "exp_jitter",
                max = 5,
                base = "500ms",
                cap = "30s",
                timeout = "20s",
                deadline = "30s",
                breaker = $name,
                pace = $name,
                fallback = cached,
                budget = "0.011usd",
                stale_for = "1h"
            )]
            #[retry_on(429, 500..=599, timeout)]
            async fn $fn_name(p: &Provider, call: u64, #[key] prompt: u32) -> Result<Answer, SimError> {
                p.chat(call, prompt).await
            }
        )*

        async fn ours(key: char, p: &Provider, call: u64, prompt: u32) -> Result<Answer, SimError> {
            match key {
                $( $key => $fn_name(p, call, prompt).await, )*
                _ => unreachable!("no scenario {key}"),
            }
        }
    };
}

ours!(
    'a' => ours_a => "storm-a",
    'b' => ours_b => "storm-b",
    'c' => ours_c => "storm-c",
    'd' => ours_d => "storm-d",
    'e' => ours_e => "storm-e",
    'f' => ours_f => "storm-f",
);

/// The breaker and pacer name of ours in the scenario `key`.
pub fn name(key: char) -> String {
    format!("storm-{key}")
}

/// The pacer of ours: the account's known limits, learning from 429s on top.
///
/// Built in code (`Config::with_pacer`) from the scenario's limits, so that they are written
/// once, in [`Scenario`].
pub fn pace_config(spec: &Scenario) -> retry_runtime::pace::PaceConfig {
    retry_runtime::pace::PaceConfig {
        rpm: Some(spec.rpm),
        tpm: Some(spec.tpm),
        adaptive: true,
        burst: Duration::from_secs(1),
        ..retry_runtime::pace::PaceConfig::default()
    }
}

/// Configure the runtime for every scenario, once per process (later calls do nothing).
pub fn configure() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The breakers run on their defaults: what `breaker = "…"` alone gives a user.
        let mut config = retry_runtime::Config::default();
        for key in Scenario::KEYS {
            let spec = Scenario::by_key(key).expect("a scenario");
            config = config.with_pacer(&name(key), pace_config(&spec));
        }
        retry_runtime::configure(config).expect("configure runs once, before any call");
    });
}

// ---------------------------------------------------------------------------------------
// Running a scenario.

/// How a logical call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider's answer for this call.
    Fresh,
    /// A fallback answer (ours: the cached answer to the same prompt).
    Fallback,
    /// An error.
    Failed,
}

/// One logical call.
#[derive(Debug, Clone, Copy)]
pub struct CallRecord {
    /// Its id.
    pub id: u64,
    /// When it started, seconds from the start of the run.
    pub arrival: f64,
    /// How long until the caller had its answer or its error, seconds.
    pub latency: f64,
    /// How it ended.
    pub outcome: Outcome,
}

/// The raw result of one policy in one scenario.
#[derive(Debug, Clone)]
pub struct Run {
    /// The policy.
    pub policy: Policy,
    /// What the provider saw.
    pub provider: ProviderStats,
    /// Every logical call.
    pub calls: Vec<CallRecord>,
}

async fn logical_call(
    key: char,
    policy: Policy,
    p: &Provider,
    id: u64,
    prompt: u32,
    rng: &mut Rng,
) -> Outcome {
    let result = match policy {
        Policy::Naive => naive(p, id, prompt).await,
        Policy::Exp => exp_no_jitter(p, id, prompt).await,
        Policy::FullJitter => full_jitter(p, id, prompt).await,
        Policy::OpenAiSdk => openai_sdk(p, id, prompt, rng).await,
        Policy::Ours => ours(key, p, id, prompt).await,
    };
    match result {
        Ok(answer) if answer.call == id => Outcome::Fresh,
        Ok(_) => Outcome::Fallback,
        Err(_) => Outcome::Failed,
    }
}

/// Run one policy through one scenario with `callers` independent callers (each an open-loop
/// Poisson stream of logical calls, together offering the scenario's load) on the current
/// runtime, which must have a paused clock. Returns when every call has ended.
pub async fn run_policy(spec: &Scenario, policy: Policy, callers: u32, seed: u64) -> Run {
    // Start on a whole second of the runtime's clock: breakers, retry budgets and pacers
    // count in per-second buckets, so the same run must meet the same second boundaries
    // whatever ran before it in the process.
    let ms = retry_runtime::testing::clock_ms();
    tokio::time::sleep(Duration::from_millis(1000 - ms % 1000)).await;
    retry_runtime::testing::seed_jitter(seed);
    let provider = Arc::new(Provider::new(spec, seed));
    let start = Instant::now();
    let next_id = Arc::new(AtomicU64::new(0));
    let records = Arc::new(Mutex::new(Vec::new()));
    let max_rps = spec.base_rps.max(spec.incident_rps);
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let spec = spec.clone();
        let provider = provider.clone();
        let next_id = next_id.clone();
        let records = records.clone();
        tasks.spawn(async move {
            let mut rng = Rng::new(seed, u64::from(caller));
            let per_caller = max_rps / f64::from(callers);
            let mut t = 0.0;
            let mut calls = tokio::task::JoinSet::new();
            loop {
                // Thinning: candidate arrivals at the peak rate, kept with the current share.
                t += rng.exp(1.0 / per_caller);
                if t >= spec.end() {
                    break;
                }
                if rng.unit() >= spec.offered_rps(t) / max_rps {
                    continue;
                }
                tokio::time::sleep_until(start + Duration::from_secs_f64(t)).await;
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let prompt = (rng.next_u64() % u64::from(PROMPTS)) as u32;
                let mut call_rng = Rng::new(seed ^ 0x5EED, id);
                let key = spec.key;
                let provider = provider.clone();
                let records = records.clone();
                calls.spawn(async move {
                    let began = Instant::now();
                    let outcome =
                        logical_call(key, policy, &provider, id, prompt, &mut call_rng).await;
                    records.lock().unwrap().push(CallRecord {
                        id,
                        arrival: (began - start).as_secs_f64(),
                        latency: began.elapsed().as_secs_f64(),
                        outcome,
                    });
                });
            }
            while calls.join_next().await.is_some() {}
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a caller task panicked");
    }
    let mut calls = std::mem::take(&mut *records.lock().unwrap());
    calls.sort_by_key(|c| c.id);
    Run {
        policy,
        provider: provider.stats(),
        calls,
    }
}

/// Run every policy through `spec`, one after the other, on the process's paused-clock
/// runtime.
/// Each scenario has its own breaker, pacer and cache, so run each scenario once per process.
pub fn run_scenario(spec: &Scenario, callers: u32, seed: u64) -> Vec<Run> {
    configure();
    // One paused runtime for the process: its clock never reads real time, so the runtime's
    // clock (whose origin is the first instant the process read) moves only with the
    // simulation, and a run's figures never depend on how long the ones before it took.
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    });
    rt.block_on(async {
        let mut runs = Vec::new();
        for policy in Policy::ALL {
            runs.push(run_policy(spec, policy, callers, seed).await);
        }
        runs
    })
}

// ---------------------------------------------------------------------------------------
// Figures.

/// The figures of one policy in one scenario. Calls counted are those that arrived from the
/// start of the incident to the end of the run.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The policy.
    pub policy: Policy,
    /// Logical calls counted.
    pub calls: usize,
    /// Provider attempts per logical call.
    pub amplification: f64,
    /// Share of calls that got the provider's answer.
    pub success: f64,
    /// Share served by a fallback.
    pub fallback: f64,
    /// Answers delivered during the incident over what the provider could usefully serve
    /// (`None` when it could serve nothing: the outage).
    pub goodput: Option<f64>,
    /// Billed attempts that bought no answer (whole run), dollars.
    pub wasted_usd: f64,
    /// Latency until the caller had its answer or its error, seconds.
    pub p50: f64,
    /// Ditto, 99th percentile.
    pub p99: f64,
    /// Seconds from the end of the incident until every later 10 s window of arrivals had
    /// >= 95% fresh answers within 10 s; `None`: not recovered by the end of the run.
    pub recovery: Option<f64>,
    /// 429s the provider sent to this policy's calls (whole run).
    pub rate_limited: u64,
}

/// The windows the recovery time is measured in.
pub const RECOVERY_WINDOW: f64 = 10.0;
/// The share of healthy calls (a fresh answer within [`HEALTHY_LATENCY`]) in a window that
/// counts as recovered.
pub const HEALTHY: f64 = 0.95;
/// A fresh answer later than this is not healthy service (a healthy call's p99 is ~6 s).
pub const HEALTHY_LATENCY: f64 = 10.0;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

/// The figures of a run.
pub fn figures(spec: &Scenario, run: &Run) -> Figures {
    let from = spec.incident_start();
    let counted: Vec<&CallRecord> = run.calls.iter().filter(|c| c.arrival >= from).collect();
    let n = counted.len().max(1) as f64;
    let attempts: u64 = counted
        .iter()
        .map(|c| {
            u64::from(
                run.provider
                    .attempts
                    .get(c.id as usize)
                    .copied()
                    .unwrap_or(0),
            )
        })
        .sum();
    let share = |o: Outcome| counted.iter().filter(|c| c.outcome == o).count() as f64 / n;
    let mut lat: Vec<f64> = counted.iter().map(|c| c.latency).collect();
    lat.sort_by(f64::total_cmp);

    let (s0, s1) = (spec.incident_start() as usize, spec.incident_end() as usize);
    let delivered: u32 = (s0..s1)
        .map(|s| run.provider.delivered_per_sec.get(s).copied().unwrap_or(0))
        .sum();
    let useful = spec.useful_capacity_rps() * (s1 - s0) as f64;
    let goodput = (useful > 0.0).then(|| f64::from(delivered) / useful);

    // Recovery: the end of the last unhealthy window after the incident.
    let end = spec.incident_end();
    let windows = ((spec.end() - end) / RECOVERY_WINDOW).floor() as usize;
    let mut last_bad = None;
    for w in 0..windows {
        let lo = end + w as f64 * RECOVERY_WINDOW;
        let hi = lo + RECOVERY_WINDOW;
        let in_w: Vec<_> = run
            .calls
            .iter()
            .filter(|c| c.arrival >= lo && c.arrival < hi)
            .collect();
        let fresh = in_w
            .iter()
            .filter(|c| c.outcome == Outcome::Fresh && c.latency <= HEALTHY_LATENCY)
            .count();
        if !in_w.is_empty() && (fresh as f64) < HEALTHY * in_w.len() as f64 {
            last_bad = Some(w);
        }
    }
    let recovery = match last_bad {
        None => Some(0.0),
        Some(w) if w + 1 >= windows => None,
        Some(w) => Some((w + 1) as f64 * RECOVERY_WINDOW),
    };

    Figures {
        policy: run.policy,
        calls: counted.len(),
        amplification: attempts as f64 / n,
        success: share(Outcome::Fresh),
        fallback: share(Outcome::Fallback),
        goodput,
        wasted_usd: (run.provider.billed_micros - run.provider.useful_micros) as f64 / 1e6,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        recovery,
        rate_limited: run.provider.rate_limited,
    }
}
