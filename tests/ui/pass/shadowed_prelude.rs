// User code that shadows the prelude and the names the expansion could have used: the
// generated code names only `::retry_runtime::__private::…`.
#![allow(non_snake_case, non_camel_case_types, dead_code, unused_macros)]

use retry_runtime::{observe, resilient, retry_on, Classify, ErrorClass};

#[derive(Debug, PartialEq)]
struct ApiError(u16);

impl Classify for ApiError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Status(self.0)
    }
}

type Result<T> = std::result::Result<T, ApiError>;
enum Option {}
struct Box;
struct Vec;
struct String;
struct Duration;
struct Policy;
struct Call;
enum Step {}
trait Clone {}
trait Future {}
trait Send {}
trait Sync {}
fn Ok() {}
fn Err() {}
fn Some() {}
fn drop() {}
macro_rules! concat {
    ($($t:tt)*) => {
        compile_error!("the user's concat! was called")
    };
}
macro_rules! module_path {
    () => {
        compile_error!("the user's module_path! was called")
    };
}
mod core {}
mod std_shadow {}
mod retry_runtime_shadow {}

#[resilient(base = "1ms", max = 3, timeout = "1s")]
#[retry_on(503, timeout)]
async fn complete(fail_first: &std::cell::Cell<bool>) -> Result<u32> {
    if fail_first.replace(false) {
        return std::result::Result::Err(ApiError(503));
    }
    std::result::Result::Ok(7)
}

impl From<retry_runtime::Rejected> for ApiError {
    fn from(_: retry_runtime::Rejected) -> Self {
        ApiError(0)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let flag = std::cell::Cell::new(true);
        let (out, report) = observe(complete(&flag)).await;
        assert_eq!(out, std::result::Result::Ok(7));
        assert_eq!(report.attempts().len(), 2);
        assert!(
            report.function().ends_with("::complete"),
            "{}",
            report.function()
        );
    });
}
