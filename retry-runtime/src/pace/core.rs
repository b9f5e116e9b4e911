//! The state behind the pacer's lock: the buckets, the adaptive state, and the rate changes
//! a success, a 429 or the provider's headers make.

use std::time::Duration;

use super::cubic::{Cubic, BETA, HOLD_MAX, HOLD_MIN, MIN_RATE};
use super::gcra::Gcra;
use super::measure::{read_window, HintRate, SendRate};
use super::{clamp_u64, PaceConfig, ProviderLimits, NS_PER_MIN, NS_PER_SEC};

/// Requests sent this soon after a cut (or before it) meet the provider's memory of the
/// overshoot: their 429s do not cut again.
pub const MIN_CUT_GAP: Duration = Duration::from_secs(1);
/// The share of the provider's announced rate the pacer keeps to.
pub const HINT_MARGIN: f64 = 0.95;
/// How long the provider's numbers cap the rate after the last header that carried them.
pub const HINT_TTL: Duration = Duration::from_secs(10);
// The base of a cut: min(rate, MEASURED_SLACK × measured).
const MEASURED_SLACK: f64 = 1.25;
// How long before now a new head of the line may be charged from. Tokio's timers fire on the
// millisecond and a parked worker wakes a little later still, so a head that slept is often
// 1-2 ms past its due time; charged from when it took the head, the one behind it would lose
// that lateness, and a line would come out at two permits a millisecond whatever its rate
// (with 1 ms here, a line at 100,000 a second with no burst came out at 91,000). Bounded, so
// that a line that fell behind (a busy CPU) sends no more than 2 ms of its rate at once.
const TIMER_SLACK_NS: u64 = 2_000_000;

fn interval_for(per_sec: f64) -> u64 {
    if per_sec.is_finite() && per_sec > 0.0 {
        (NS_PER_SEC as f64 / per_sec)
            .round()
            .clamp(1.0, u64::MAX as f64) as u64
    } else {
        u64::MAX
    }
}

/// The adaptive part of the state.
#[derive(Debug, Clone)]
struct Adaptive {
    // `None` until the first 429 or header: no adaptive limit yet.
    law: Option<Cubic>,
    rate: Option<f64>,
    bucket: Gcra,
    hold: Duration,
    last_cut_ns: Option<u64>,
    // The provider's announced request rate (already with the margin) and until when it holds.
    cap: Option<(f64, u64)>,
}

/// Everything a decision needs, behind one short lock.
#[derive(Debug)]
pub(super) struct Core {
    requests: Option<Gcra>,
    pub(super) tokens: Option<Gcra>,
    configured_token_interval: Option<u64>,
    token_burst: Duration,
    adaptive: Adaptive,
    hint_requests: HintRate,
    hint_tokens: HintRate,
    // `remaining = 0`: nothing is granted before this.
    hold_until_ns: u64,
    pub(super) queued_requests: u64,
    pub(super) queued_tokens: u64,
    // When the line was last handed on: the due time of the last permit granted, or when a
    // head left it without one.
    pub(super) handed_ns: u64,
    send: SendRate,
}

/// A change of the adaptive rate, to report outside the lock.
#[derive(Debug, Clone, Copy)]
pub(super) struct RateChange {
    pub(super) before: Option<f64>,
    pub(super) after: f64,
    pub(super) reason: &'static str,
}

impl Core {
    pub(super) fn new(config: &PaceConfig) -> Self {
        Self {
            requests: config
                .rpm
                .map(|rpm| Gcra::per_minute(u64::from(rpm), config.burst)),
            tokens: config.tpm.map(|tpm| Gcra::per_minute(tpm, config.burst)),
            configured_token_interval: config.tpm.map(|tpm| NS_PER_MIN / tpm.max(1)),
            token_burst: config.burst,
            adaptive: Adaptive {
                law: None,
                rate: None,
                bucket: Gcra::new(u64::MAX, 1),
                hold: HOLD_MIN,
                last_cut_ns: None,
                cap: None,
            },
            hint_requests: HintRate::default(),
            hint_tokens: HintRate::default(),
            hold_until_ns: 0,
            queued_requests: 0,
            queued_tokens: 0,
            handed_ns: 0,
            send: SendRate::default(),
        }
    }

    /// When a request of `tokens`, ready at `ready_ns`, conforms to every bucket.
    pub(super) fn conform(&self, ready_ns: u64, tokens: u64) -> u64 {
        let mut at = ready_ns.max(self.hold_until_ns);
        if let Some(b) = &self.requests {
            at = at.max(b.earliest(ready_ns, 1));
        }
        if let Some(b) = &self.tokens {
            at = at.max(b.earliest(ready_ns, tokens));
        }
        if self.adaptive.rate.is_some() {
            at = at.max(self.adaptive.bucket.earliest(ready_ns, 1));
        }
        at
    }

    /// The first moment the caller that just took the head of the line (arriving at
    /// `arrived_ns`) could have been served: when the line was handed on to it, or its arrival
    /// if later, and no more than `TIMER_SLACK_NS` before now.
    pub(super) fn ready_at_head(&self, arrived_ns: u64, now_ns: u64) -> u64 {
        arrived_ns
            .max(self.handed_ns)
            .max(now_ns.saturating_sub(TIMER_SLACK_NS))
            .min(now_ns)
    }

    /// When a newcomer weighing `tokens` would be served behind everyone queued.
    pub(super) fn project(&self, now_ns: u64, tokens: u64) -> u64 {
        let ahead = self.queued_requests;
        let mut at = now_ns.max(self.hold_until_ns);
        if let Some(b) = &self.requests {
            at = at.max(b.project(now_ns, ahead, 1));
        }
        if let Some(b) = &self.tokens {
            at = at.max(b.project(now_ns, self.queued_tokens, tokens));
        }
        if self.adaptive.rate.is_some() {
            at = at.max(self.adaptive.bucket.project(now_ns, ahead, 1));
        }
        at
    }

    pub(super) fn take(&mut self, at_ns: u64, tokens: u64) {
        if let Some(b) = &mut self.requests {
            b.take(at_ns, 1);
        }
        if let Some(b) = &mut self.tokens {
            b.take(at_ns, tokens);
        }
        if self.adaptive.rate.is_some() {
            self.adaptive.bucket.take(at_ns, 1);
        }
        self.handed_ns = self.handed_ns.max(at_ns);
        self.send.record(at_ns);
    }

    fn set_rate(&mut self, now_ns: u64, rate: f64, reason: &'static str) -> Option<RateChange> {
        let rate = rate.max(MIN_RATE);
        let before = self.adaptive.rate;
        if before == Some(rate) {
            return None;
        }
        let interval = interval_for(rate);
        if before.is_none() {
            // The bucket starts now, empty of debt.
            self.adaptive.bucket = Gcra::new(interval, 1);
        } else {
            self.adaptive.bucket.set_interval(now_ns, interval);
        }
        self.adaptive.rate = Some(rate);
        Some(RateChange {
            before,
            after: rate,
            reason,
        })
    }

    fn cap(&self, now_ns: u64) -> Option<f64> {
        self.adaptive
            .cap
            .filter(|&(_, until)| now_ns < until)
            .map(|(cap, _)| cap)
    }

    /// A 429. `granted_ns`: when the request was granted, if known.
    pub(super) fn on_rate_limited(
        &mut self,
        now_ns: u64,
        granted_ns: Option<u64>,
    ) -> Option<RateChange> {
        if let Some(last) = self.adaptive.last_cut_ns {
            // The provider's window remembers the overshoot a while: a request sent before
            // the last cut, or within `MIN_CUT_GAP` after it, met that memory. Without the
            // grant time, the answer's time stands in for it.
            let sent = granted_ns.unwrap_or(now_ns);
            let echo = sent < last.saturating_add(clamp_u64(MIN_CUT_GAP.as_nanos()));
            if echo {
                return None;
            }
        }
        let measured = self.send.per_sec(now_ns);
        let from_sends = if measured > 0.0 {
            MEASURED_SLACK * measured
        } else {
            f64::INFINITY
        };
        let base = match self.adaptive.rate {
            Some(rate) => rate.min(from_sends),
            None => from_sends,
        };
        let base = if base.is_finite() { base } else { MIN_RATE };
        let longer = (self.adaptive.hold * 2).min(HOLD_MAX);
        let at = self.adaptive.rate.unwrap_or(base);
        let fall_back = self
            .adaptive
            .law
            .and_then(|law| law.promoted(now_ns).after_429(now_ns, at, longer));
        let law = match fall_back {
            // A probe step found the limit, or a plateau was a little high: back to the last
            // rate that held (or just under the plateau), and hold longer before probing.
            Some(law) => {
                self.adaptive.hold = longer;
                law
            }
            // The first 429: AWS's cut.
            None if self.adaptive.law.is_none() => Cubic::cut(base, now_ns, self.adaptive.hold),
            // Still climbing after a cut: the ceiling is lower still. AWS's cut, and TCP
            // CUBIC's fast convergence: climb back towards (1 + BETA) / 2 of the rate only.
            None => Cubic::recover(
                BETA * base,
                (1.0 + BETA) / 2.0 * base,
                base,
                now_ns,
                self.adaptive.hold,
            ),
        };
        self.adaptive.law = Some(law);
        self.adaptive.last_cut_ns = Some(now_ns);
        // A 429 never raises the rate (the curve may be above a capped rate).
        let rate = law
            .rate_at(now_ns)
            .min(self.adaptive.rate.unwrap_or(f64::INFINITY));
        self.set_rate(now_ns, rate, "rate_limited")
    }

    /// A success: follow the curve, no higher than twice what is sent (unless it already
    /// was) and the provider's announced rate.
    pub(super) fn on_success(&mut self, now_ns: u64) -> Option<RateChange> {
        let (Some(law), Some(current)) = (self.adaptive.law, self.adaptive.rate) else {
            return None;
        };
        let law = law.promoted(now_ns);
        self.adaptive.law = Some(law);
        let measured = self.send.per_sec(now_ns);
        let mut rate = law.rate_at(now_ns);
        if rate > current {
            rate = rate.min(current.max(2.0 * measured));
        }
        let mut reason = "success";
        if let Some(cap) = self.cap(now_ns).filter(|&cap| cap < rate) {
            rate = cap;
            reason = "hint";
        }
        self.set_rate(now_ns, rate, reason)
    }

    pub(super) fn on_hint(&mut self, now_ns: u64, limits: &ProviderLimits) -> Option<RateChange> {
        let requests = read_window(
            limits.limit_requests,
            limits.remaining_requests,
            limits.reset_requests,
        );
        let tokens = read_window(
            limits.limit_tokens,
            limits.remaining_tokens,
            limits.reset_tokens,
        );
        if let Some(bound) = requests.rate_bound {
            self.hint_requests.observe(now_ns, bound);
        }
        if let Some(bound) = tokens.rate_bound {
            self.hint_tokens.observe(now_ns, bound);
        }
        let request_rate = self.hint_requests.estimate(now_ns);
        let token_rate = self.hint_tokens.estimate(now_ns);
        // An empty window: hold everything until it has room for one more.
        for (window, limit, rate) in [
            (requests, limits.limit_requests, request_rate),
            (tokens, limits.limit_tokens, token_rate),
        ] {
            if let Some(reset) = window.empty_for {
                let refilled = match (limit, rate) {
                    (Some(limit), Some(rate)) if rate > 0.0 => {
                        Duration::from_secs_f64((limit.saturating_sub(1)) as f64 / rate)
                    }
                    _ => Duration::ZERO,
                };
                let wait = clamp_u64(reset.saturating_sub(refilled).as_nanos());
                self.hold_until_ns = self.hold_until_ns.max(now_ns.saturating_add(wait));
            }
        }
        if let Some(rate) = token_rate {
            let hinted = interval_for(HINT_MARGIN * rate);
            let interval = self
                .configured_token_interval
                .map_or(hinted, |configured| configured.max(hinted));
            let burst = Gcra::per_minute(NS_PER_MIN / interval.max(1), self.token_burst).burst();
            match &mut self.tokens {
                Some(bucket) => {
                    bucket.set_interval(now_ns, interval);
                    bucket.set_burst(burst);
                }
                None => self.tokens = Some(Gcra::new(interval, burst)),
            }
        }
        let cap = HINT_MARGIN * request_rate?;
        let until = now_ns.saturating_add(clamp_u64(HINT_TTL.as_nanos()));
        self.adaptive.cap = Some((cap, until));
        match self.adaptive.rate {
            // No rate yet, or a higher one: the curve rests at the provider's rate.
            Some(rate) if rate <= cap => None,
            _ => {
                self.adaptive.law = Some(Cubic::plateau(cap, now_ns, self.adaptive.hold));
                self.set_rate(now_ns, cap, "hint")
            }
        }
    }

    pub(super) fn effective_rate(&self) -> Option<f64> {
        let configured = self.requests.map(|b| b.per_sec());
        match (configured, self.adaptive.rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pace::PLATEAU;

    const S: u64 = NS_PER_SEC;
    const MS: u64 = 1_000_000;

    /// Callers keep sending at 10/s: record their grants up to `until`.
    fn send_until(core: &mut Core, sent: &mut u64, until: u64) {
        while *sent < until {
            core.take(*sent, 0);
            *sent += 100 * MS;
        }
    }

    #[test]
    fn first_429_is_aws_cut_and_one_while_climbing_converges_fast() {
        let mut core = Core::new(&PaceConfig::default());
        let mut sent = 10 * S;
        let now = 12 * S;
        send_until(&mut core, &mut sent, now);
        let first = core.on_rate_limited(now, Some(now)).unwrap();
        assert_eq!(first.before, None);
        // 1.25 x the measured 10/s (19 grants in the last 2 s: 9.5/s).
        assert!((first.after - BETA * 1.25 * 9.5).abs() < 1e-6, "{first:?}");
        // Still climbing 1.5 s later: AWS's cut from the current rate, and a lower plateau.
        let later = now + 1500 * MS;
        send_until(&mut core, &mut sent, later);
        let climbing = core.adaptive.rate.unwrap();
        let second = core.on_rate_limited(later, Some(later)).unwrap();
        assert!((second.after - BETA * climbing).abs() < 1e-6, "{second:?}");
        let law = core.adaptive.law.unwrap();
        assert!((law.level() - PLATEAU * (1.0 + BETA) / 2.0 * climbing).abs() < 1e-9);
    }

    #[test]
    fn a_probe_that_finds_the_limit_falls_back_and_doubles_the_hold() {
        let mut core = Core::new(&PaceConfig::default());
        let mut sent = 10 * S;
        send_until(&mut core, &mut sent, 12 * S);
        core.on_rate_limited(12 * S, Some(12 * S)).unwrap();
        let law = core.adaptive.law.unwrap();
        let probing = law.plateau_from_ns() + HOLD_MIN.as_nanos() as u64 + 500 * MS;
        send_until(&mut core, &mut sent, probing);
        core.adaptive.rate = Some(law.rate_at(probing));
        let back = core.on_rate_limited(probing, Some(probing)).unwrap();
        assert!((back.after - law.level()).abs() < 1e-9, "{back:?}");
        assert!(back.after < back.before.unwrap());
        assert_eq!(core.adaptive.law.unwrap().hold(), 2 * HOLD_MIN);
    }

    #[test]
    fn echoes_of_an_overshoot_do_not_cut_again() {
        // With grant times: sent before the cut, or within the gap after it.
        let mut core = Core::new(&PaceConfig::default());
        core.take(S, 0);
        assert!(core.on_rate_limited(S, Some(S)).is_some());
        assert!(core.on_rate_limited(3 * S, Some(S - MS)).is_none());
        assert!(core.on_rate_limited(3 * S, Some(S + 999 * MS)).is_none());
        assert!(core.on_rate_limited(3 * S, Some(2 * S)).is_some());
        // Without: the answer's time stands in for the grant's.
        let mut core = Core::new(&PaceConfig::default());
        core.take(S, 0);
        assert!(core.on_rate_limited(S, None).is_some());
        assert!(core.on_rate_limited(S + 999 * MS, None).is_none());
        assert!(core.on_rate_limited(2 * S, None).is_some());
    }

    #[test]
    fn the_climb_stays_within_twice_the_measured_rate() {
        let mut core = Core::new(&PaceConfig::default());
        core.take(S, 0);
        core.on_rate_limited(S, Some(S)).unwrap();
        // Nothing more is sent for a minute: the curve would be far above 2 x measured.
        let change = core.on_success(61 * S);
        assert!(change.is_none(), "{change:?}");
        assert!(core.adaptive.rate.unwrap() <= 1.25 * 0.7 + 1e-9);
    }

    #[test]
    fn a_head_is_ready_when_the_line_was_handed_on_within_the_timer_slack() {
        let mut core = Core::new(&PaceConfig::default());
        core.take(10 * S, 0);
        // Handed on 400 us ago (its timer fired late): ready then, not now.
        assert_eq!(core.ready_at_head(9 * S, 10 * S + 400_000), 10 * S);
        // Arrived after that: ready on arrival.
        assert_eq!(
            core.ready_at_head(10 * S + 100, 10 * S + 400_000),
            10 * S + 100
        );
        // A line that fell behind catches up no more than the slack.
        assert_eq!(core.ready_at_head(9 * S, 12 * S), 12 * S - TIMER_SLACK_NS);
    }

    #[test]
    fn hints_bound_the_rate_and_an_empty_window_holds() {
        let mut core = Core::new(&PaceConfig::default());
        let now = 10 * S;
        let limits = ProviderLimits {
            limit_requests: Some(10),
            remaining_requests: Some(9),
            reset_requests: Some(Duration::from_millis(100)),
            ..ProviderLimits::default()
        };
        let change = core.on_hint(now, &limits).unwrap();
        assert!((change.after - HINT_MARGIN * 10.0).abs() < 1e-9);
        // A looser bound does not raise it; a tighter one lowers it.
        let loose = ProviderLimits {
            remaining_requests: Some(5),
            reset_requests: Some(Duration::from_millis(400)),
            ..limits
        };
        assert!(core.on_hint(now + MS, &loose).is_none());
        let empty = ProviderLimits {
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_millis(1_250)),
            ..limits
        };
        let change = core.on_hint(now + 2 * MS, &empty).unwrap();
        assert!((change.after - HINT_MARGIN * 8.0).abs() < 1e-9);
        // Room for one request comes back after 1.25 s - 9 / 8 per s = 125 ms.
        assert_eq!(core.hold_until_ns, now + 2 * MS + 125 * MS);
        // Successes climb no higher than the cap while the headers are fresh.
        assert!(core.on_success(now + 3 * S).is_none());
    }
}
