// Owned arguments (`String`, `Vec`, `mut`) that the body moves: each attempt gets a fresh copy
// of what the caller passed, not what an earlier attempt left behind.
use std::cell::Cell;

use retry_runtime::{observe, resilient, Classify, ErrorClass};

#[derive(Debug, PartialEq)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

thread_local! {
    static FAILURES: Cell<u32> = const { Cell::new(0) };
}

fn flaky() -> Result<(), ApiError> {
    FAILURES.with(|f| {
        if f.get() > 0 {
            f.set(f.get() - 1);
            Err(ApiError(503))
        } else {
            Ok(())
        }
    })
}

#[resilient(base = "1ms", max = 4)]
async fn send(prompt: String, mut history: Vec<String>, _: u8) -> Result<Vec<String>, ApiError> {
    history.push(prompt); // moves `prompt` and mutates this attempt's own `history`
    flaky()?;
    Ok(history)
}

#[resilient(base = "1ms", max = 4)]
async fn consume(tokens: Vec<u32>, label: Box<str>) -> Result<(usize, String), ApiError> {
    let owned: Vec<u32> = tokens.into_iter().filter(|t| *t > 1).collect();
    flaky()?;
    Ok((owned.len(), label.into_string()))
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        FAILURES.with(|f| f.set(2));
        let history = vec!["system".to_string()];
        let (out, report) = observe(send("hi".to_string(), history, 0)).await;
        assert_eq!(out, Ok(vec!["system".to_string(), "hi".to_string()]));
        assert_eq!(report.attempts().len(), 3);

        FAILURES.with(|f| f.set(1));
        let (out, report) = observe(consume(vec![1, 2, 3], "label".into())).await;
        assert_eq!(out, Ok((2, "label".to_string())));
        assert_eq!(report.attempts().len(), 2);
    });
}
