// Generic fns with where-clauses, explicit lifetimes, const generics and `impl Trait`
// arguments.
use std::cell::Cell;
use std::fmt::Debug;

use retry_runtime::{observe, resilient, Classify, ErrorClass};

#[derive(Debug, PartialEq)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

trait Provider {
    fn answer(&self, prompt: &str) -> Result<String, ApiError>;
}

/// Fails with each of `codes` in turn, then echoes the prompt.
struct Flaky {
    codes: Vec<u16>,
    calls: Cell<usize>,
}

impl Provider for Flaky {
    fn answer(&self, prompt: &str) -> Result<String, ApiError> {
        let n = self.calls.get();
        self.calls.set(n + 1);
        match self.codes.get(n) {
            Some(code) => Err(ApiError(*code)),
            None => Ok(format!("echo: {prompt}")),
        }
    }
}

#[resilient(base = "1ms")]
async fn ask<P>(provider: &P, prompt: &str) -> Result<String, ApiError>
where
    P: Provider + ?Sized,
{
    provider.answer(prompt)
}

#[resilient(base = "1ms")]
async fn pick<'a, 'b: 'a>(
    provider: &'b dyn Provider,
    a: &'a str,
    b: &'a str,
) -> Result<&'a str, ApiError> {
    provider.answer(a)?;
    Ok(if a.len() >= b.len() { a } else { b })
}

// An owned generic argument is cloned for each attempt, so it must be `Clone`.
#[resilient(base = "1ms")]
async fn round_trip<T>(provider: &impl Provider, value: T) -> Result<T, ApiError>
where
    T: Clone + Debug,
{
    provider.answer(&format!("{value:?}"))?;
    Ok(value)
}

#[resilient(base = "1ms")]
async fn with_impl_arg(
    provider: &dyn Provider,
    prompt: impl AsRef<str> + Clone,
) -> Result<usize, ApiError> {
    let text = provider.answer(prompt.as_ref())?;
    Ok(text.len())
}

#[resilient(base = "1ms")]
async fn sum<const N: usize>(provider: &dyn Provider, values: [u32; N]) -> Result<u32, ApiError> {
    provider.answer("sum")?;
    Ok(values.iter().sum())
}

// A generic error type: `Classify` comes from the bound.
#[resilient(base = "1ms", max = 2)]
async fn generic_error<E>(fail: bool, make: fn(u16) -> E) -> Result<(), E>
where
    E: Classify + Debug,
{
    if fail {
        return Err(make(503));
    }
    Ok(())
}

fn flaky(codes: &[u16]) -> Flaky {
    Flaky {
        codes: codes.to_vec(),
        calls: Cell::new(0),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let provider = flaky(&[503]);
        let (out, report) = observe(ask(&provider, "hi")).await;
        assert_eq!(out, Ok("echo: hi".to_string()));
        assert_eq!(report.attempts().len(), 2);

        let dynamic: &dyn Provider = &flaky(&[]);
        assert_eq!(ask(dynamic, "dyn").await, Ok("echo: dyn".to_string()));

        let provider = flaky(&[429]);
        let (a, b) = (String::from("longer"), String::from("short"));
        assert_eq!(pick(&provider, &a, &b).await, Ok("longer"));
        assert_eq!(provider.calls.get(), 2);

        let provider = flaky(&[500, 502]);
        let (out, report) = observe(round_trip(&provider, vec![1, 2, 3])).await;
        assert_eq!(out, Ok(vec![1, 2, 3]));
        assert_eq!(report.attempts().len(), 3);

        let provider = flaky(&[503]);
        assert_eq!(with_impl_arg(&provider, String::from("abc")).await, Ok(9));
        assert_eq!(provider.calls.get(), 2);

        let provider = flaky(&[]);
        assert_eq!(sum(&provider, [1, 2, 3, 4]).await, Ok(10));

        let (out, report) = observe(generic_error(true, ApiError)).await;
        assert_eq!(out, Err(ApiError(503)));
        assert_eq!(report.attempts().len(), 2);
        assert_eq!(generic_error(false, ApiError).await, Ok(()));
    });
}
