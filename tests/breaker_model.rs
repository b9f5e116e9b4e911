//! Model-based test: the atomic breaker against a small reference state machine, over random
//! sequences of admissions, results, cancellations and time steps.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use retry_runtime::breaker::{Admission, BreakerState, State};
use retry_runtime::{Breaker, BreakerConfig, ErrorClass};

#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Closed,
    Open { until: u64 },
    HalfOpen { admitted: u32 },
}

/// The reference: plain fields, a queue of failures (time, calls admitted by then) for the
/// failure-rate rule, the run (length, last failure) for the run rule; no packing, no
/// atomics. (No attempt is observed for the regime here, so a run that opens is `failures`
/// long: the regime's longer runs are tested in `regime_props.rs`.)
struct Model {
    cfg: BreakerConfig,
    state: ModelState,
    epoch: u8,
    failures: VecDeque<(u64, u64)>,
    calls: u64,
    run: (u32, u64),
}

impl Model {
    fn counts(&self, class: ErrorClass) -> bool {
        class.is_outage() || (self.cfg.count_429 && class == ErrorClass::Status(429))
    }

    fn admit(&mut self, now: u64) -> Admission {
        match self.state {
            ModelState::Closed => {
                self.calls += 1;
                Admission::Normal
            }
            ModelState::Open { until } if now < until => Admission::Rejected {
                retry_in: Duration::from_millis(until - now),
            },
            ModelState::Open { .. } => {
                self.epoch = self.epoch.wrapping_add(1);
                self.state = ModelState::HalfOpen { admitted: 1 };
                Admission::Probe { epoch: self.epoch }
            }
            ModelState::HalfOpen { admitted } if admitted < self.cfg.probes => {
                self.state = ModelState::HalfOpen {
                    admitted: admitted + 1,
                };
                Admission::Probe { epoch: self.epoch }
            }
            ModelState::HalfOpen { .. } => Admission::Rejected {
                retry_in: Duration::ZERO,
            },
        }
    }

    fn result(&mut self, admission: Admission, failure: Option<ErrorClass>, now: u64) {
        let counted = failure.is_some_and(|c| self.counts(c));
        let cooldown = self.cfg.cooldown.as_millis() as u64;
        if !counted {
            self.run = (0, 0); // an answer ends the run
        }
        match (self.state, admission) {
            (ModelState::HalfOpen { .. }, Admission::Probe { epoch }) if epoch == self.epoch => {
                if counted {
                    self.state = ModelState::Open {
                        until: now + cooldown,
                    };
                } else {
                    self.state = ModelState::Closed;
                    self.failures.clear();
                    self.run = (0, 0);
                }
            }
            (ModelState::Closed, Admission::Normal)
                if counted && self.cfg.failure_rate_ppm == 0 =>
            {
                let window = self.cfg.window.as_millis() as u64;
                let (run, last) = self.run;
                let run = if run == 0 || now - last >= window {
                    1
                } else {
                    run + 1
                };
                self.run = (run, now);
                if run >= self.cfg.failures {
                    self.state = ModelState::Open {
                        until: now + cooldown,
                    };
                }
            }
            (ModelState::Closed, Admission::Normal) if counted => {
                self.failures.push_back((now, self.calls));
                while self.failures.len() > self.cfg.failures as usize {
                    self.failures.pop_front();
                }
                let window = self.cfg.window.as_millis() as u64;
                let recent = self
                    .failures
                    .iter()
                    .filter(|&&(t, _)| now - t < window)
                    .count();
                // The share of calls since the oldest failure (its own call included).
                let since = self.calls - self.failures[0].1 + 1;
                let rate_reached =
                    self.failures.len() as u64 * 1_000_000 >= self.cfg.failure_rate_ppm * since;
                if recent >= self.cfg.failures as usize && rate_reached {
                    self.state = ModelState::Open {
                        until: now + cooldown,
                    };
                }
            }
            _ => {}
        }
    }

    fn cancel(&mut self, admission: Admission) {
        if let (ModelState::HalfOpen { admitted }, Admission::Probe { epoch }) =
            (self.state, admission)
        {
            if epoch == self.epoch && admitted > 0 {
                self.state = ModelState::HalfOpen {
                    admitted: admitted - 1,
                };
            }
        }
    }

    fn public_state(&self) -> BreakerState {
        match self.state {
            ModelState::Closed => BreakerState::Closed,
            ModelState::Open { .. } => BreakerState::Open,
            ModelState::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Admit,
    /// Finish the i-th outstanding admission (mod the number outstanding) with this outcome.
    Finish(usize, Option<ErrorClass>),
    Cancel(usize),
}

fn class() -> impl Strategy<Value = Option<ErrorClass>> {
    prop_oneof![
        2 => Just(None),
        2 => Just(Some(ErrorClass::Status(503))),
        1 => Just(Some(ErrorClass::Timeout)),
        1 => Just(Some(ErrorClass::Transport)),
        1 => Just(Some(ErrorClass::Status(429))),
        1 => Just(Some(ErrorClass::Status(400))),
        1 => Just(Some(ErrorClass::Permanent)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => prop_oneof![0u64..50, 0u64..5_000, 0u64..40_000].prop_map(Op::Advance),
        3 => Just(Op::Admit),
        3 => (any::<usize>(), class()).prop_map(|(i, c)| Op::Finish(i, c)),
        1 => any::<usize>().prop_map(Op::Cancel),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    let rate = prop_oneof![Just(0u64), 1u64..=1_000_000];
    (
        1u32..6,
        1u64..30,
        1u64..20,
        1u32..4,
        any::<bool>(),
        rate,
        any::<bool>(),
    )
        .prop_map(
            |(failures, window_s, cooldown_s, probes, count_429, failure_rate_ppm, adaptive)| {
                BreakerConfig {
                    failures,
                    adaptive,
                    failure_rate_ppm,
                    window: Duration::from_secs(window_s),
                    cooldown: Duration::from_secs(cooldown_s),
                    probes,
                    count_429,
                    ..BreakerConfig::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn breaker_agrees_with_the_model(cfg in config(), ops in prop::collection::vec(op(), 1..200)) {
        let breaker = Breaker::standalone("model", cfg.clone());
        let mut model = Model { cfg, state: ModelState::Closed, epoch: 0, failures: VecDeque::new(), calls: 0, run: (0, 0) };
        let mut now = 1_000u64;
        let mut outstanding: Vec<Admission> = Vec::new();
        for op in ops {
            match op {
                Op::Advance(ms) => now += ms,
                Op::Admit => {
                    let (got, _) = breaker.admit(now);
                    let want = model.admit(now);
                    prop_assert_eq!(got, want, "admission at {}", now);
                    if !matches!(got, Admission::Rejected { .. }) {
                        outstanding.push(got);
                    }
                }
                Op::Finish(i, failure) if !outstanding.is_empty() => {
                    let admission = outstanding.remove(i % outstanding.len());
                    breaker.record(admission, failure, now);
                    model.result(admission, failure, now);
                }
                Op::Cancel(i) if !outstanding.is_empty() => {
                    let admission = outstanding.remove(i % outstanding.len());
                    breaker.cancel(admission);
                    model.cancel(admission);
                }
                Op::Finish(..) | Op::Cancel(_) => {}
            }
            prop_assert_eq!(breaker.state(), model.public_state(), "state at {}", now);
        }
    }
}

#[test]
fn pure_transitions_are_reachable_from_closed() {
    // The pure functions the breaker's CAS loop applies, checked directly.
    let closed = State {
        state: BreakerState::Closed,
        epoch: 0,
        probes: 0,
        until_ms: 0,
    };
    let open = closed.on_result(Admission::Normal, Some(true), true, 1_000, 30_000);
    assert_eq!(open.state, BreakerState::Open);
    assert_eq!(open.until_ms, 31_000);
    let (probe, half) = open.admit(31_000, 1);
    assert_eq!(half.state, BreakerState::HalfOpen);
    assert_eq!(half.on_cancel(probe).probes, 0);
    assert_eq!(
        half.on_result(probe, None, false, 31_001, 30_000).state,
        BreakerState::Closed
    );
}
