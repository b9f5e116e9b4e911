//! Fallbacks chosen in advance, run by the call when it ended in an outage: the last good
//! answer, another function, or the breaker's queue.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{Call, Outcome, Step};
use crate::breaker::BreakerState;
use crate::clock::now_ms;
use crate::fallback::{FallbackKind, FallbackReport};
use crate::rejected::{CanReject, Rejected};
use crate::report::{self, StopReason};

impl Call<'_> {
    /// Whether this result should go to the fallbacks: a failure that ended in an outage.
    pub fn falls_back<R: Outcome>(&self, result: &R) -> bool {
        !result.is_ok()
            && self
                .cold
                .as_ref()
                .and_then(|c| c.stop.as_ref())
                .is_some_and(StopReason::is_outage)
    }

    /// `fallback = cached`: the last good answer for `key`, if it is no older than the
    /// policy's `stale_for`.
    pub fn serve_cached<R>(&mut self, key: u64) -> Option<R>
    where
        R: Outcome,
        R::Ok: crate::fallback::CachedAnswer,
    {
        let (value, age) = self
            .site
            .cache
            .fetch::<R::Ok>(key, self.policy.stale_for())?;
        self.served(FallbackKind::Cached, Some(age), None);
        Some(R::from_result(Ok(value)))
    }

    /// `fallback = path::to_fn`: run the other function; if it answers, it served the call.
    pub async fn serve_fn<R, F>(&mut self, path: &'static str, call: F) -> R
    where
        R: Outcome,
        F: Future<Output = R>,
    {
        let result = call.await;
        if result.is_ok() {
            self.served(FallbackKind::Function(path), None, None);
        }
        result
    }

    fn served(&mut self, kind: FallbackKind, age: Option<Duration>, waited: Option<Duration>) {
        let because = self.cold().stop.clone().unwrap_or(StopReason::Cancelled);
        let fallback = FallbackReport {
            kind,
            age,
            waited,
            because,
        };
        report::degraded(self.policy.name(), &fallback);
        self.cold().fallback = Some(fallback);
    }

    /// `fallback = queue`: wait in the breaker's line (first in, first out) until the breaker
    /// admits again and the release schedule lets this caller go, then ask for the attempts
    /// to run again (`Step::Retry`). A full line, or a wait past `queue_wait`, ends the call
    /// with `Rejected::QueueFull` / `Rejected::QueueTimeout`.
    pub async fn park<T, E>(&mut self, result: Result<T, E>) -> Step<Result<T, E>>
    where
        E: CanReject,
    {
        let Some(breaker) = self.gate.breaker else {
            return Step::Return(result);
        };
        let queue = breaker.queue();
        let parked_at = *self.cold().parked_at.get_or_insert_with(Instant::now);
        let give_up = parked_at + self.policy.queue_wait();
        let timed_out = |call: &mut Self| {
            let waited = parked_at.elapsed();
            call.cold().line_guard = None;
            call.leave_queue();
            call.finish(StopReason::QueueTimeout { waited }, None);
            Step::Return(Err(E::from(Rejected::QueueTimeout {
                breaker: breaker.name(),
                waited,
            })))
        };
        if self.cold().line_guard.is_none() {
            let Some(place) = queue.join() else {
                self.finish(StopReason::QueueFull, None);
                return Step::Return(Err(E::from(Rejected::QueueFull {
                    breaker: breaker.name(),
                })));
            };
            self.cold().place = Some(place);
            breaker.publish_queue();
            match tokio::time::timeout_at(give_up, queue.line().lock_owned()).await {
                Ok(guard) => self.cold().line_guard = Some(guard),
                Err(_) => return timed_out(self),
            }
        }
        // At the head of the line: wait for the breaker (this caller may be its probe).
        loop {
            let wait = breaker.wait_hint(now_ms());
            if wait.is_zero() {
                break;
            }
            if Instant::now() + wait > give_up {
                tokio::time::sleep_until(give_up).await;
                return timed_out(self);
            }
            tokio::time::sleep(wait).await;
        }
        queue.await_release_slot().await;
        self.leave_queue();
        if breaker.state() == BreakerState::Closed {
            // No probe needed: let the next caller in line go (after its own release slot).
            self.cold().line_guard = None;
        }
        let waited = parked_at.elapsed();
        self.rerun(waited);
        self.served(FallbackKind::Queue, None, Some(waited));
        Step::Retry
    }

    /// A new round of attempts under the same policy, after waiting in the queue.
    fn rerun(&mut self, waited: Duration) {
        self.attempts = 0;
        self.cut = None;
        self.finished = false;
        let base = self.policy.base();
        let cold = self.cold();
        cold.refused = None;
        cold.stop = None;
        cold.delay_before = waited;
        cold.prev_backoff = base;
        self.attempt_started = Instant::now();
    }
}
