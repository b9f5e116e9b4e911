// An `async fn` in a trait, implemented with `#[resilient]`.
use std::cell::Cell;

use retry_runtime::{observe, resilient, retry_on, Classify, ErrorClass};

#[derive(Debug, PartialEq)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

trait Llm {
    async fn complete(&self, prompt: &str) -> Result<String, ApiError>;
    async fn reset(&mut self) -> Result<(), ApiError>;
}

struct Scripted {
    failures: Cell<u32>,
    resets: u32,
}

impl Llm for Scripted {
    #[resilient(base = "1ms", max = 5)]
    #[retry_on(503)]
    async fn complete(&self, prompt: &str) -> Result<String, ApiError> {
        if self.failures.get() > 0 {
            self.failures.set(self.failures.get() - 1);
            return Err(ApiError(503));
        }
        Ok(format!("echo: {prompt}"))
    }

    #[resilient(base = "1ms")]
    async fn reset(&mut self) -> Result<(), ApiError> {
        self.resets += 1;
        if self.resets == 1 {
            return Err(ApiError(502));
        }
        Ok(())
    }
}

async fn use_any<L: Llm>(llm: &mut L) -> Result<String, ApiError> {
    llm.reset().await?;
    llm.complete("generic").await
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut llm = Scripted {
            failures: Cell::new(2),
            resets: 0,
        };
        let (out, report) = observe(llm.complete("hi")).await;
        assert_eq!(out, Ok("echo: hi".to_string()));
        assert_eq!(report.attempts().len(), 3);

        assert_eq!(use_any(&mut llm).await, Ok("echo: generic".to_string()));
        assert_eq!(llm.resets, 2);
    });
}
