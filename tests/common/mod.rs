//! A scripted provider for tests: each call takes the next scripted outcome and is counted.
#![allow(dead_code)]

pub mod recorder;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use retry_runtime::{Classify, ErrorClass, Metered, Rejected, Spend};

/// What a test provider can fail with.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    Status {
        code: u16,
        retry_after: Option<Duration>,
        should_retry: Option<bool>,
    },
    Network,
    Runtime(Rejected),
}

impl ApiError {
    pub fn status(code: u16) -> Self {
        ApiError::Status {
            code,
            retry_after: None,
            should_retry: None,
        }
    }

    pub fn rate_limited(retry_after: Duration) -> Self {
        ApiError::Status {
            code: 429,
            retry_after: Some(retry_after),
            should_retry: None,
        }
    }
}

impl From<Rejected> for ApiError {
    fn from(r: Rejected) -> Self {
        ApiError::Runtime(r)
    }
}

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        match self {
            ApiError::Status { code, .. } => ErrorClass::Status(*code),
            ApiError::Network => ErrorClass::Transport,
            ApiError::Runtime(r) => r.class(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
    fn should_retry(&self) -> Option<bool> {
        match self {
            ApiError::Status { should_retry, .. } => *should_retry,
            _ => None,
        }
    }
}

/// One scripted answer: an outcome, optionally after a delay (a slow provider).
#[derive(Debug, Clone)]
pub struct Step {
    pub outcome: Result<String, ApiError>,
    pub latency: Duration,
}

pub fn ok(text: &str) -> Step {
    Step {
        outcome: Ok(text.to_string()),
        latency: Duration::ZERO,
    }
}

pub fn fail(e: ApiError) -> Step {
    Step {
        outcome: Err(e),
        latency: Duration::ZERO,
    }
}

pub fn slow(step: Step, latency: Duration) -> Step {
    Step { latency, ..step }
}

/// A provider that answers from a script and counts the calls it sees.
#[derive(Debug, Default)]
pub struct ScriptedProvider {
    script: Mutex<Vec<Step>>,
    calls: AtomicUsize,
}

impl ScriptedProvider {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        let mut script: Vec<Step> = steps.into_iter().collect();
        script.reverse();
        Self {
            script: Mutex::new(script),
            calls: AtomicUsize::new(0),
        }
    }

    /// The number of calls the provider saw.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Answer the next call; an exhausted script answers 200 "done".
    pub async fn call(&self) -> Result<String, ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let step = self
            .script
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| ok("done"));
        if !step.latency.is_zero() {
            tokio::time::sleep(step.latency).await;
        }
        step.outcome
    }
}

/// A `tracing` layer that records every event from the runtime (target `retry_runtime`):
/// level, message and fields, for assertions.
#[derive(Clone, Default)]
pub struct EventLog {
    events: std::sync::Arc<Mutex<Vec<Event>>>,
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Event {
    pub level: tracing::Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl Event {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl EventLog {
    /// The process-wide log, installed as the global subscriber on first use. Prefer it to
    /// `install`: with a global subscriber every callsite is always enabled, whereas scoped
    /// subscribers race with callsites registered concurrently on other test threads. Filter
    /// its events by a field that belongs to your test (`function`, `pool`, …).
    pub fn global() -> &'static EventLog {
        static LOG: std::sync::OnceLock<EventLog> = std::sync::OnceLock::new();
        LOG.get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            let log = EventLog::default();
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(log.clone()),
            )
            .expect("no other global subscriber in this test binary");
            log
        })
    }

    /// Install as this thread's default subscriber until the guard drops (current-thread
    /// runtimes run every task on this thread).
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Events whose message contains `text`.
    pub fn with_message(&self, text: &str) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| e.message.contains(text))
            .collect()
    }
}

struct FieldVisitor<'a>(&'a mut Event);

impl tracing::field::Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.0.message = value;
        } else {
            self.0.fields.push((field.name().to_string(), value));
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.message = value.to_string();
        } else {
            self.0
                .fields
                .push((field.name().to_string(), value.to_string()));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLog {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != "retry_runtime" {
            return;
        }
        let mut e = Event {
            level: *event.metadata().level(),
            message: String::new(),
            fields: Vec::new(),
        };
        event.record(&mut FieldVisitor(&mut e));
        self.events.lock().unwrap().push(e);
    }
}

/// A reply that knows what it cost (the budget, pool and store tests bill calls with it).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply(pub Spend);

impl Metered for Reply {
    fn spend(&self) -> Spend {
        self.0
    }
}
