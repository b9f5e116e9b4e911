//! The pure decision after a failed attempt: whether and when to retry, from the policy, the
//! attempt's outcome and the clock's reading. No clock, no randomness, no shared state, so each
//! rule is unit-tested on its own; what the shared state says is the gate's part.

use std::time::Duration;

use crate::classify::ErrorClass;
use crate::policy::Policy;
use crate::report::StopReason;

/// What [`decide`] chose after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then make another attempt.
    Retry {
        /// The wait.
        delay: Duration,
    },
    /// End the call with the attempt's error.
    Stop(StopReason),
}

/// What the executor knows about a failed attempt when deciding what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The failure's class.
    pub class: ErrorClass,
    /// The server's `x-should-retry` verdict.
    pub should_retry: Option<bool>,
    /// The server's requested wait.
    pub retry_after: Option<Duration>,
    /// Whether the call's deadline cut the attempt.
    pub cut_by_deadline: bool,
}

/// Decide, after attempt number `attempts` (1-based) failed, whether and when to retry.
///
/// `backoff` is the formula's delay for this retry; `elapsed` the time since the call began.
/// Pure: no clock, no randomness, so the rules are unit-tested one by one.
pub fn decide(
    policy: &Policy,
    attempts: u32,
    failure: Failure,
    backoff: Duration,
    elapsed: Duration,
) -> Decision {
    if failure.cut_by_deadline {
        return Decision::Stop(StopReason::DeadlineExceeded);
    }
    let retryable = match (failure.class, failure.should_retry) {
        (ErrorClass::Permanent, _) => false,
        (_, Some(false)) => return Decision::Stop(StopReason::ServerSaidNoRetry),
        (_, Some(true)) => true,
        (class, None) => policy.retry_on().retries(class),
    };
    if !retryable {
        return Decision::Stop(StopReason::NotRetryable);
    }
    if attempts >= policy.max_attempts() {
        return Decision::Stop(StopReason::AttemptsExhausted);
    }
    let mut delay = backoff;
    if let Some(requested) = failure.retry_after {
        if requested > policy.max_retry_after() {
            return Decision::Stop(StopReason::RetryAfterTooLong {
                requested,
                max: policy.max_retry_after(),
            });
        }
        // The server's wait is a floor: never retry sooner than it asked.
        delay = delay.max(requested);
    }
    if let Some(deadline) = policy.deadline() {
        // An attempt that would start at (or past) the deadline could not finish in time.
        if elapsed.saturating_add(delay) >= deadline {
            return Decision::Stop(StopReason::DeadlineExceeded);
        }
    }
    Decision::Retry { delay }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CodeRange, RetryOn};

    const S: Duration = Duration::from_secs(1);

    fn failure(class: ErrorClass) -> Failure {
        Failure {
            class,
            should_retry: None,
            retry_after: None,
            cut_by_deadline: false,
        }
    }

    #[test]
    fn caller_faults_and_permanent_are_not_retried() {
        let p = Policy::new("t");
        for class in [
            ErrorClass::Status(400),
            ErrorClass::Status(401),
            ErrorClass::Permanent,
            ErrorClass::Other,
        ] {
            assert_eq!(
                decide(&p, 1, failure(class), S, S),
                Decision::Stop(StopReason::NotRetryable),
                "{class:?}"
            );
        }
    }

    #[test]
    fn default_set_retries_rate_limits_and_outages() {
        let p = Policy::new("t");
        for class in [
            ErrorClass::Status(408),
            ErrorClass::Status(409),
            ErrorClass::Status(429),
            ErrorClass::Status(503),
            ErrorClass::Timeout,
            ErrorClass::Transport,
        ] {
            assert_eq!(
                decide(&p, 1, failure(class), S, S),
                Decision::Retry { delay: S }
            );
        }
    }

    #[test]
    fn max_attempts_stops() {
        let p = Policy::new("t").with_max_attempts(2);
        let f = failure(ErrorClass::Status(503));
        assert!(matches!(decide(&p, 1, f, S, S), Decision::Retry { .. }));
        assert_eq!(
            decide(&p, 2, f, S, S),
            Decision::Stop(StopReason::AttemptsExhausted)
        );
    }

    #[test]
    fn should_retry_overrides_the_list_but_not_permanent() {
        static ONLY_429: RetryOn = RetryOn::new(&[CodeRange::single(429)], false, false);
        let p = Policy::new("t").with_retry_on(ONLY_429);
        let mut f = failure(ErrorClass::Status(503));
        f.should_retry = Some(true);
        assert_eq!(decide(&p, 1, f, S, S), Decision::Retry { delay: S });
        f.class = ErrorClass::Status(429);
        f.should_retry = Some(false);
        assert_eq!(
            decide(&p, 1, f, S, S),
            Decision::Stop(StopReason::ServerSaidNoRetry)
        );
        f.class = ErrorClass::Permanent;
        f.should_retry = Some(true);
        assert_eq!(
            decide(&p, 1, f, S, S),
            Decision::Stop(StopReason::NotRetryable)
        );
    }

    #[test]
    fn retry_after_is_a_floor_bounded_by_max_retry_after() {
        let p = Policy::new("t").with_max_retry_after(10 * S);
        let mut f = failure(ErrorClass::Status(429));
        f.retry_after = Some(7 * S);
        assert_eq!(decide(&p, 1, f, S, S), Decision::Retry { delay: 7 * S });
        assert_eq!(decide(&p, 1, f, 9 * S, S), Decision::Retry { delay: 9 * S });
        f.retry_after = Some(11 * S);
        assert_eq!(
            decide(&p, 1, f, S, S),
            Decision::Stop(StopReason::RetryAfterTooLong {
                requested: 11 * S,
                max: 10 * S
            })
        );
    }

    #[test]
    fn no_wait_starts_that_would_end_past_the_deadline() {
        let p = Policy::new("t").with_deadline(10 * S);
        let f = failure(ErrorClass::Status(503));
        assert_eq!(
            decide(&p, 1, f, 2 * S, 7 * S),
            Decision::Retry { delay: 2 * S }
        );
        assert_eq!(
            decide(&p, 1, f, 3 * S, 7 * S),
            Decision::Stop(StopReason::DeadlineExceeded)
        );
        let mut cut = f;
        cut.cut_by_deadline = true;
        assert_eq!(
            decide(&p, 1, cut, S, S),
            Decision::Stop(StopReason::DeadlineExceeded)
        );
    }
}
