//! Reports serialize (feature `serde`) for JSON logs: the function, every attempt with its
//! class, delay and spend, the stop reason and the fallback.

use retry_runtime::{observe, resilient, Rejected};
use std::time::Duration;

#[resilient(max = 2, base = "10ms")]
async fn flaky() -> Result<u32, Rejected> {
    Err(Rejected::AttemptTimedOut {
        timeout: Duration::from_secs(1),
    })
}

#[tokio::test(start_paused = true)]
async fn a_report_is_json() {
    let (_, report) = observe(flaky()).await;
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["function"], "report_json::flaky");
    assert_eq!(json["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(json["attempts"][0]["class"], "Timeout");
    assert_eq!(json["stop"], "AttemptsExhausted");
    assert!(
        json["attempts"][1]["delay_before"]["nanos"].is_number(),
        "{json}"
    );
    assert_eq!(json["spent"]["micros"], 0);
}
