//! `breaker`, `budget` and `pool` together, on a `Metered` reply; a generic fn's success type
//! that is not `Metered` still compiles (it counts as zero in workflows).

use retry_runtime::{
    observe, resilient, workflow, Budget, Classify, ErrorClass, Metered, Rejected, Spend,
};

#[derive(Debug)]
enum ApiError {
    Status(u16),
    Runtime(Rejected),
}

impl From<Rejected> for ApiError {
    fn from(r: Rejected) -> Self {
        ApiError::Runtime(r)
    }
}

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        match self {
            ApiError::Status(code) => ErrorClass::Status(*code),
            ApiError::Runtime(r) => r.class(),
        }
    }
}

#[derive(Debug, Clone)]
struct Reply(Spend);

impl Metered for Reply {
    fn spend(&self) -> Spend {
        self.0
    }
}

#[resilient(max = 3, base = "1ms", breaker = "ui-pass", budget = "0.10usd", pool = "ui-pass-pool")]
async fn complete(cost: u64) -> Result<Reply, ApiError> {
    Ok(Reply(Spend::from_micros(cost)))
}

#[resilient(max = 2, base = "1ms", budget = "20000tok", max_cost = "4000tok")]
async fn tokens() -> Result<Reply, ApiError> {
    Ok(Reply(Spend::from_tokens(1_200)))
}

#[resilient(max = 2, base = "1ms")]
async fn generic<T: Clone>(value: T) -> Result<T, ApiError> {
    Ok(value)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (reply, report) = observe(complete(1_500)).await;
        assert_eq!(reply.unwrap().0, Spend::from_micros(1_500));
        assert_eq!(report.spent(), Spend::from_micros(1_500));
        assert_eq!(report.breaker(), Some("ui-pass"));
        assert_eq!(tokens().await.unwrap().0.tokens(), 1_200);
        let (value, spent) = workflow(Budget::usd(1.0), generic(7u8)).await;
        assert_eq!(value.unwrap(), 7);
        assert!(spent.is_zero());
    });
}
