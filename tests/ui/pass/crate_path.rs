// `crate = "..."`: a crate that re-exports the runtime names it, and the expansion goes
// through it.
mod rt {
    pub use retry_runtime::*;
}

mod client {
    use std::cell::Cell;

    use crate::rt::{resilient, retry_on, Classify, ErrorClass};

    #[derive(Debug, PartialEq)]
    pub struct ApiError(pub u16);

    impl Classify for ApiError {
        fn class(&self) -> ErrorClass {
            ErrorClass::Status(self.0)
        }
    }

    #[resilient(crate = "crate::rt", base = "1ms")]
    #[retry_on(503)]
    pub async fn complete(failures: &Cell<u32>) -> Result<&'static str, ApiError> {
        if failures.get() > 0 {
            failures.set(failures.get() - 1);
            return Err(ApiError(503));
        }
        Ok("done")
    }

    #[crate::rt::resilient(crate = "::retry_runtime", base = "1ms", max = 2)]
    pub async fn absolute(failures: &Cell<u32>) -> Result<&'static str, ApiError> {
        complete(failures).await
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let failures = std::cell::Cell::new(1);
        let (out, report) = crate::rt::observe(client::complete(&failures)).await;
        assert_eq!(out, Ok("done"));
        assert_eq!(report.attempts().len(), 2);

        assert_eq!(client::absolute(&failures).await, Ok("done"));
    });
}
