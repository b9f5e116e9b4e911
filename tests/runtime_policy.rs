//! A policy built at run time (the builder, and a `[policy.NAME]` section of the installed
//! configuration) behaves as the attribute that says the same: on one scripted failure
//! sequence, the same attempts, the same classes, the same delays on a seeded clock, the same
//! stop reason, the same requests. And a bad section is refused in the attribute's words.

mod common;

use std::sync::Once;
use std::time::Duration;

use common::{fail, ok, slow, ApiError, ScriptedProvider, Step};
use retry_runtime::testing::{isolated, seed_jitter};
use retry_runtime::{
    configure, observe, resilient, retry, retry_on, Backoff, CallReport, CallSite, Config,
    ErrorClass, Policy, StopReason,
};

const S: Duration = Duration::from_secs(1);

const TOML: &str = r#"
[policy."rtp.toml"]
backoff = "exp_jitter"
max = 5
base = "500ms"
cap = "4s"
timeout = "1s"
deadline = "20s"
max_retry_after = "10s"
retry_on = [429, "500..=599", "timeout"]
breaker = "rtp"
"#;

/// Install the configuration before anything in this binary reads it (every test calls this
/// first; `Once` makes the others wait for the first).
fn setup() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| configure(Config::from_toml_str(TOML).unwrap()).unwrap());
}

#[resilient(
    name = "rtp.attribute",
    backoff = "exp_jitter",
    max = 5,
    base = "500ms",
    cap = "4s",
    timeout = "1s",
    deadline = "20s",
    max_retry_after = "10s",
    breaker = "rtp"
)]
#[retry_on(429, 500..=599, timeout)]
async fn by_attribute(provider: &ScriptedProvider) -> Result<String, ApiError> {
    provider.call().await
}

fn by_builder() -> &'static CallSite<'static> {
    static SITE: std::sync::OnceLock<&'static CallSite<'static>> = std::sync::OnceLock::new();
    SITE.get_or_init(|| {
        Policy::builder("rtp.builder")
            .backoff(Backoff::ExpJitter)
            .max_attempts(5)
            .base(Duration::from_millis(500))
            .cap(Duration::from_secs(4))
            .timeout(S)
            .deadline(Duration::from_secs(20))
            .max_retry_after(Duration::from_secs(10))
            .retry_on("429, 500..=599, timeout")
            .breaker("rtp")
            .build()
            .unwrap()
    })
}

/// What a call did, less its label: per attempt its number, wait before, class and
/// `Retry-After`; the stop; the requests the provider saw; the call's whole time.
type Trace = (
    Vec<(u32, Duration, Option<ErrorClass>, Option<Duration>)>,
    Option<StopReason>,
    usize,
    Duration,
);

fn trace(report: &CallReport, provider: &ScriptedProvider) -> Trace {
    let attempts = report
        .attempts()
        .iter()
        .map(|a| (a.number, a.delay_before, a.class, a.retry_after))
        .collect();
    (
        attempts,
        report.stop().cloned(),
        provider.calls(),
        report.elapsed(),
    )
}

enum Way {
    Attribute,
    Builder,
    Toml,
}

async fn run(way: Way, script: Vec<Step>, seed: u64) -> (Result<String, ApiError>, Trace) {
    let provider = ScriptedProvider::new(script);
    // Breakers of their own per run, and the same jitter.
    let (out, report) = isolated(async {
        seed_jitter(seed);
        match way {
            Way::Attribute => observe(by_attribute(&provider)).await,
            Way::Builder => observe(retry(by_builder(), || provider.call())).await,
            Way::Toml => {
                let site = CallSite::configured("rtp.toml").unwrap();
                observe(retry(site, || provider.call())).await
            }
        }
    })
    .await;
    let want = match way {
        Way::Attribute => "rtp.attribute",
        Way::Builder => "rtp.builder",
        Way::Toml => "rtp.toml",
    };
    assert_eq!(report.function(), want);
    assert_eq!(report.breaker(), Some("rtp"));
    let trace = trace(&report, &provider);
    (out, trace)
}

fn incident() -> Vec<Step> {
    vec![
        fail(ApiError::status(503)),
        fail(ApiError::rate_limited(2 * S)),
        slow(ok("late"), 3 * S), // cut at the 1 s timeout
        fail(ApiError::status(502)),
        fail(ApiError::status(400)), // a caller fault: not retried
    ]
}

#[tokio::test(start_paused = true)]
async fn builder_toml_and_attribute_make_the_same_attempts_waits_and_stop() {
    setup();
    let (a_out, a) = run(Way::Attribute, incident(), 7).await;
    let (b_out, b) = run(Way::Builder, incident(), 7).await;
    let (t_out, t) = run(Way::Toml, incident(), 7).await;
    assert_eq!(a, b, "builder");
    assert_eq!(a, t, "toml");
    for out in [&a_out, &b_out, &t_out] {
        assert_eq!(out, &Err(ApiError::status(400)));
    }
    // And the trace is the incident's: five attempts, the 429's wait exactly its header,
    // the slow answer cut as a timeout, the 400 ending the call.
    let (attempts, stop, requests, _) = &a;
    let classes: Vec<Option<ErrorClass>> = attempts.iter().map(|a| a.2).collect();
    assert_eq!(
        classes,
        [
            Some(ErrorClass::Status(503)),
            Some(ErrorClass::Status(429)),
            Some(ErrorClass::Timeout),
            Some(ErrorClass::Status(502)),
            Some(ErrorClass::Status(400)),
        ]
    );
    assert_eq!(attempts[2].1, 2 * S, "the Retry-After wait");
    assert_eq!(stop, &Some(StopReason::NotRetryable));
    assert_eq!(*requests, 5);
    // Jittered waits: another seed gives other delays, so the equality above is not the
    // trivial one.
    let (_, other) = run(Way::Builder, incident(), 8).await;
    assert_ne!(a.0, other.0);
}

#[tokio::test(start_paused = true)]
async fn the_same_when_attempts_run_out() {
    setup();
    let all_503 = || {
        (0..6)
            .map(|_| fail(ApiError::status(503)))
            .collect::<Vec<_>>()
    };
    let (_, a) = run(Way::Attribute, all_503(), 3).await;
    let (_, b) = run(Way::Builder, all_503(), 3).await;
    let (_, t) = run(Way::Toml, all_503(), 3).await;
    assert_eq!(a, b);
    assert_eq!(a, t);
    assert_eq!(a.1, Some(StopReason::AttemptsExhausted));
    assert_eq!(a.2, 5);
}

#[tokio::test]
async fn a_policy_the_configuration_lacks_is_an_error_naming_the_closest() {
    setup();
    let error = CallSite::configured("rtp.tmol").unwrap_err().to_string();
    assert!(error.contains("did you mean `rtp.toml`"), "{error}");
    // The same site on every lookup: one label, one estimate, one breaker slot.
    let first = CallSite::configured("rtp.toml").unwrap() as *const CallSite;
    assert_eq!(
        first,
        CallSite::configured("rtp.toml").unwrap() as *const CallSite
    );
}

/// The first message of a trybuild case's expected output (`error: …`).
fn ui_message(case: &str) -> String {
    let path = format!("{}/tests/ui/fail/{case}.stderr", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line in {path}"))
        .to_string()
}

#[test]
fn a_bad_section_is_refused_in_the_attributes_words() {
    for (section, case) in [
        ("max = 0", "max_zero"),
        ("max = 21", "max_too_large"),
        ("cap = \"1s\"\nbase = \"10s\"", "base_above_cap"),
        ("budget = \"0.10eur\"", "budget_eur"),
        ("breaker = \"OpenAI\"", "breaker_bad_name"),
        ("retry_on = [400]", "retry_on_caller_fault"),
    ] {
        let text = format!("[policy.p]\n{section}\n");
        let error = Config::from_toml_str(&text).unwrap_err().to_string();
        let attribute = ui_message(case);
        assert!(
            error.contains(&attribute),
            "{case}: the section says\n  {error}\nthe attribute says\n  {attribute}"
        );
        assert!(error.contains("(line 2)"), "{error}");
    }
    // What only code can say is refused with the reason, not as an unknown key.
    let error = Config::from_toml_str("[policy.p]\nfallback = \"cached\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("written at the call site"), "{error}");
    let error = Config::from_toml_str("[policy.p]\nmaxx = 3\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("maxx"), "{error}");
}
