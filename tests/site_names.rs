//! Call sites are told apart on dashboards: `name = "…"` labels a site's reports, events and
//! metrics, and two sites that would report under one label (two impls' `complete`) are a WARN
//! naming where both are written.

mod common;

use common::recorder::TestRecorder;
use common::EventLog;
use retry_runtime::metric_names::CALLS;
use retry_runtime::{observe, resilient, Rejected};

static RECORDER: std::sync::LazyLock<TestRecorder> =
    std::sync::LazyLock::new(TestRecorder::default);

struct OpenAi;
struct Anthropic;

impl OpenAi {
    #[resilient(max = 1, name = "openai.complete")]
    async fn complete(&self) -> Result<u32, Rejected> {
        Ok(1)
    }
}

impl Anthropic {
    #[resilient(max = 1, name = "anthropic.complete")]
    async fn complete(&self) -> Result<u32, Rejected> {
        Ok(2)
    }
}

mod unnamed {
    use super::*;

    pub struct A;
    pub struct B;

    impl A {
        #[resilient(max = 1)]
        pub async fn complete(&self) -> Result<u32, Rejected> {
            Ok(1)
        }
    }

    impl B {
        #[resilient(max = 1)]
        pub async fn complete(&self) -> Result<u32, Rejected> {
            Ok(2)
        }
    }
}

#[tokio::test]
async fn named_sites_count_separately_and_a_shared_label_is_a_warn() {
    metrics::set_global_recorder((*RECORDER).clone()).unwrap();
    let log = EventLog::global();

    for _ in 0..3 {
        OpenAi.complete().await.unwrap();
    }
    let (_, report) = observe(Anthropic.complete()).await;
    assert_eq!(report.function(), "anthropic.complete");
    let success = |f: &str| RECORDER.get(CALLS, &[("function", f), ("stop", "success")]);
    assert_eq!(success("openai.complete"), 3);
    assert_eq!(success("anthropic.complete"), 1);

    unnamed::A.complete().await.unwrap();
    unnamed::B.complete().await.unwrap();
    let warns: Vec<_> = log
        .with_message("two #[resilient] call sites report under one label")
        .into_iter()
        .filter(|e| e.field("function") == Some("site_names::unnamed::complete"))
        .collect();
    assert_eq!(warns.len(), 1, "{warns:?}");
    let (site, other) = (
        warns[0].field("site").unwrap(),
        warns[0].field("other_site").unwrap(),
    );
    assert!(site.contains("tests/site_names.rs:") && other.contains("tests/site_names.rs:"));
    assert_ne!(site, other);
    // Named sites never warn.
    assert!(log
        .with_message("two #[resilient] call sites")
        .iter()
        .all(|e| !e.field("function").unwrap_or("").ends_with(".complete")));
}
