// `&self` and `&mut self` methods in an inherent impl: each attempt re-borrows `self`.
use std::cell::Cell;

use retry_runtime::{observe, resilient, retry_on, Classify, ErrorClass};

#[derive(Debug, PartialEq)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

struct Client {
    failures: Vec<u16>,
    calls: u32,
    reads: Cell<u32>,
}

impl Client {
    #[resilient(base = "1ms", max = 4)]
    async fn complete(&mut self, prompt: &str) -> Result<String, ApiError> {
        self.calls += 1;
        if let Some(code) = self.failures.pop() {
            return Err(ApiError(code));
        }
        Ok(format!("echo: {prompt}"))
    }

    #[resilient(base = "1ms", max = 2)]
    #[retry_on(503)]
    pub async fn read(&self) -> Result<u32, ApiError> {
        let n = self.reads.get() + 1;
        self.reads.set(n);
        if n == 1 {
            Err(ApiError(503))
        } else {
            Ok(n)
        }
    }

    // An associated fn without a receiver.
    #[resilient(base = "1ms")]
    async fn connect(name: &str) -> Result<Client, ApiError> {
        let _ = name;
        Ok(Client {
            failures: Vec::new(),
            calls: 0,
            reads: Cell::new(0),
        })
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::connect("scripted").await.unwrap();
        client.failures = vec![503, 429];

        let (out, report) = observe(client.complete("hi")).await;
        assert_eq!(out, Ok("echo: hi".to_string()));
        assert_eq!(report.attempts().len(), 3);
        assert_eq!(client.calls, 3);

        // Still usable after the `&mut self` call ended.
        assert_eq!(
            client.complete("again").await,
            Ok("echo: again".to_string())
        );
        assert_eq!(client.calls, 4);

        let (out, report) = observe(client.read()).await;
        assert_eq!(out, Ok(2));
        assert_eq!(report.attempts().len(), 2);
    });
}
