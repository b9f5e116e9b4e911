//! One call through the executor for a request at the HTTP layer: the loop `retry` runs, with
//! a copy of the request per attempt and the answer's status as the attempt's verdict.

use std::future::Future;
use std::time::Duration;

use super::{HttpResponse, Replay};
use crate::classify::{Classify, ErrorClass, ProviderLimits};
use crate::executor::{Call, CallSite, Settled, Step};
use crate::integrations::http::HttpError;
use crate::rejected::Rejected;
use crate::spend::Spend;

/// What sends one copy of a request: the inner `tower` service, or the rest of a
/// `reqwest-middleware` chain.
pub(crate) trait Sender<Req> {
    /// The answer.
    type Response: HttpResponse;
    /// What sending can fail with.
    type Error: Classify + Send;

    /// Send `request` once.
    fn send(
        &mut self,
        request: Req,
    ) -> impl Future<Output = Result<Self::Response, Self::Error>> + Send + '_;
}

/// How one attempt failed.
enum Attempt<R, E> {
    /// A 4xx/5xx answer: a failure, and still the answer if it is the call's last.
    Failed { response: R, error: HttpError },
    /// The sender failed.
    Sent(E),
    /// The runtime cut or refused the attempt.
    Rejected(Rejected),
}

impl<R, E> From<Rejected> for Attempt<R, E> {
    fn from(rejected: Rejected) -> Self {
        Attempt::Rejected(rejected)
    }
}

impl<R, E: Classify> Classify for Attempt<R, E> {
    fn class(&self) -> ErrorClass {
        match self {
            Attempt::Failed { error, .. } => error.class(),
            Attempt::Sent(error) => error.class(),
            Attempt::Rejected(rejected) => rejected.class(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Attempt::Failed { error, .. } => error.retry_after(),
            Attempt::Sent(error) => error.retry_after(),
            Attempt::Rejected(rejected) => rejected.retry_after(),
        }
    }

    fn should_retry(&self) -> Option<bool> {
        match self {
            Attempt::Failed { error, .. } => error.should_retry(),
            Attempt::Sent(error) => error.should_retry(),
            Attempt::Rejected(rejected) => rejected.should_retry(),
        }
    }

    fn rate_limits(&self) -> Option<ProviderLimits> {
        match self {
            Attempt::Failed { error, .. } => error.rate_limits(),
            Attempt::Sent(error) => error.rate_limits(),
            Attempt::Rejected(rejected) => rejected.rate_limits(),
        }
    }

    fn spend(&self) -> Spend {
        match self {
            Attempt::Failed { error, .. } => error.spend(),
            Attempt::Sent(error) => error.spend(),
            Attempt::Rejected(rejected) => rejected.spend(),
        }
    }
}

/// Make one call at `site`: attempts send copies of `request` through `sender` as the
/// executor decides (admission, classification, waits, the report). The last failed answer
/// is the answer; the runtime's refusals and cuts become `rejected(…)`.
pub(crate) async fn drive<Req, S>(
    site: &'static CallSite<'static>,
    request: Req,
    sender: &mut S,
    rejected: fn(Rejected) -> S::Error,
) -> Result<S::Response, S::Error>
where
    Req: Replay + Send,
    S: Sender<Req> + Send,
{
    let mut call = Call::start_static(site);
    let mut request = request;
    let result = loop {
        // Each attempt sends a copy and keeps the request for the next; one that cannot be
        // copied is sent itself, as the call's last attempt.
        let (this, rest) = match request.replay() {
            Some(copy) => (copy, Some(request)),
            None => {
                call.last_attempt();
                (request, None)
            }
        };
        let outcome = call.attempt_guarded(attempt(sender, this)).await;
        match call.settle(outcome, spent) {
            Settled::Return(result) => break result,
            Settled::Retry(error) => {
                // `last_attempt` stops the call in `settle`: a retry always has a request.
                let Some(rest) = rest else { break Err(error) };
                if let Step::Return(result) = call.wait(error).await {
                    break result;
                }
                request = rest;
            }
        }
    };
    match call.done(result) {
        Ok((response, _)) => Ok(response),
        Err(Attempt::Failed { response, .. }) => Ok(response),
        Err(Attempt::Sent(error)) => Err(error),
        Err(Attempt::Rejected(refusal)) => Err(rejected(refusal)),
    }
}

/// What a success cost, as its attempt read it.
fn spent<R, E>(outcome: &Result<(R, Spend), E>) -> Spend {
    outcome.as_ref().map_or(Spend::ZERO, |(_, spend)| *spend)
}

/// One attempt: send a copy, and read the answer's verdict.
async fn attempt<Req, S>(
    sender: &mut S,
    mut request: Req,
) -> Result<(S::Response, Spend), Attempt<S::Response, S::Error>>
where
    Req: Replay,
    S: Sender<Req>,
{
    if let Some(context) = crate::context::current_attempt() {
        request.prepare(&context);
    }
    let response = sender.send(request).await.map_err(Attempt::Sent)?;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let (response, body) = response.read_error_body().await;
        let error = HttpError::new(status.as_u16(), response.headers(), &body);
        return Err(Attempt::Failed { response, error });
    }
    Ok(response.read_spend().await)
}
