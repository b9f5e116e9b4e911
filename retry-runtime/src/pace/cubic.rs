//! The adaptive law, pure: the CUBIC curve with its plateau and probe steps, and its
//! constants.

use std::time::Duration;

use super::{clamp_u64, NS_PER_SEC};

#[doc(hidden)]
/// AWS's multiplicative decrease: the rate after the first 429, or one that comes while the
/// rate still climbs after a cut, as a share of the rate it came at.
pub const BETA: f64 = 0.7;
#[doc(hidden)]
/// The cut for a 429 after resting on a plateau a while: it was a little too high.
pub const BETA_REST: f64 = 0.95;
#[doc(hidden)]
/// How far above the plateau the first probe step goes (the next ones double).
pub const PROBE: f64 = 0.05;
#[doc(hidden)]
/// AWS's CUBIC scale constant, in requests per second per second cubed.
pub const SCALE_C: f64 = 0.4;
#[doc(hidden)]
/// Where the climb after a cut pauses, as a share of the rate the 429 came at.
pub const PLATEAU: f64 = 0.97;
#[doc(hidden)]
/// The first pause on a plateau (and each probe step); a 429 that answers a probe doubles it.
pub const HOLD_MIN: Duration = Duration::from_secs(2);
#[doc(hidden)]
/// The longest pause on a plateau.
pub const HOLD_MAX: Duration = Duration::from_secs(64);
#[doc(hidden)]
/// AWS's floor: the adaptive rate never drops below this many requests per second.
pub const MIN_RATE: f64 = 0.5;

/// The adaptive rate's curve: AWS's CUBIC concave climb after a cut to a plateau just under
/// the ceiling, a hold there, then probe steps: a cubic rise to [`PROBE`] above the plateau,
/// held in turn; a step that held becomes the new plateau and the next step is twice as tall
/// (see the module docs). Pure: the rate is a function of time; [`Cubic::promoted`] moves
/// the plateau up when a step held.
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::pace::{Cubic, PLATEAU, PROBE};
///
/// let s = 1_000_000_000u64;
/// let law = Cubic::cut(10.0, 100 * s, Duration::from_secs(10));
/// assert!((law.rate_at(100 * s) - 7.0).abs() < 1e-9);        // 0.7 × 10 right after the cut
/// let on_plateau = law.plateau_from_ns() + 5 * s;
/// assert!((law.rate_at(on_plateau) - PLATEAU * 10.0).abs() < 1e-9);
/// assert!(!law.probing(on_plateau));
/// // Probe steps go 5% above the plateau, but no higher than the rate the 429 came at.
/// let probing = law.plateau_from_ns() + 20 * s;
/// assert!(law.probing(probing));
/// assert!((law.rate_at(probing) - 10.0).abs() < 1e-9);
/// assert!((1.0 + PROBE) * PLATEAU * 10.0 > 10.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cubic {
    // AWS's W: the rate the last far cut came at; shapes the climb before the plateau.
    w_max: f64,
    // The plateau: the last rate that held.
    level: f64,
    plateau_from_ns: u64,
    hold_ns: u64,
    // Probe steps that held since the plateau was set: each doubles the next.
    steps: u32,
    // The plateau before the last promotion (equal to `level` when there was none).
    previous: f64,
    // Whether the curve started with a cut (and its climb), rather than on a plateau.
    after_cut: bool,
    // The rate the last 429 came at (infinite when none did): probe steps stop there, and
    // go past it one small step at a time.
    ceiling: f64,
}

fn secs_between(a: u64, b: u64) -> f64 {
    (i128::from(a) - i128::from(b)) as f64 / NS_PER_SEC as f64
}

fn ns_of_secs(secs: f64) -> u64 {
    (secs.max(0.0) * NS_PER_SEC as f64).min(u64::MAX as f64) as u64
}

impl Cubic {
    /// AWS's cut at `now_ns`: from a rate of `w_max` to `BETA × w_max`, then its CUBIC climb
    /// to the plateau at `PLATEAU × w_max`, held for `hold`.
    pub fn cut(w_max: f64, now_ns: u64, hold: Duration) -> Self {
        Self::recover(BETA * w_max, w_max, w_max, now_ns, hold)
    }

    /// From `rate` at `now_ns`, AWS's CUBIC climb towards `w_max`, to the plateau at
    /// `PLATEAU × w_max`, held for `hold`; `ceiling` is the rate the 429 came at.
    pub fn recover(rate: f64, w_max: f64, ceiling: f64, now_ns: u64, hold: Duration) -> Self {
        let w_max = w_max.max(MIN_RATE);
        let level = PLATEAU * w_max;
        // K: when AWS's curve is back at W; D: how long before K it reaches the plateau.
        let k = ((w_max - rate).max(0.0) / SCALE_C).cbrt();
        let d = ((w_max - level) / SCALE_C).cbrt();
        Self {
            w_max,
            level,
            plateau_from_ns: now_ns.saturating_add(ns_of_secs(k - d)),
            hold_ns: clamp_u64(hold.as_nanos()),
            steps: 0,
            previous: level,
            after_cut: true,
            ceiling,
        }
    }

    /// A curve standing on its plateau at `level` from `now_ns`, for `hold`: a probe fell
    /// back to the last rate that held, or the provider announced its rate.
    pub fn plateau(level: f64, now_ns: u64, hold: Duration) -> Self {
        let level = level.max(MIN_RATE);
        Self {
            w_max: level,
            level,
            plateau_from_ns: now_ns,
            hold_ns: clamp_u64(hold.as_nanos()),
            steps: 0,
            previous: level,
            after_cut: false,
            ceiling: f64::INFINITY,
        }
    }

    /// The plateau: the last rate that held (or, after a cut, `PLATEAU` of the rate it came
    /// at).
    pub fn level(&self) -> f64 {
        self.level
    }

    /// When the plateau starts.
    pub fn plateau_from_ns(&self) -> u64 {
        self.plateau_from_ns
    }

    /// How long the plateau (and each probe step) lasts.
    pub fn hold(&self) -> Duration {
        Duration::from_nanos(self.hold_ns)
    }

    fn probe_from_ns(&self) -> u64 {
        self.plateau_from_ns.saturating_add(self.hold_ns)
    }

    /// Whether the curve is above its plateau at `now_ns`: probing for more.
    pub fn probing(&self, now_ns: u64) -> bool {
        now_ns >= self.probe_from_ns()
    }

    /// The curve after a 429 at `now_ns`, holding for `hold`, unless the 429 calls for
    /// AWS's cut (`None`). The rules, in order:
    ///
    /// * probing above the plateau: back to the plateau (the probe found the limit);
    /// * on a plateau (one reached after a cut: for at least [`HOLD_MIN`]): back to the
    ///   plateau before the last promotion if there was one (that step held, but not long
    ///   enough: a provider with a large burst lets a rate just over its limit through for
    ///   a while), else [`BETA_REST`] of it (the plateau is a little too high);
    /// * still climbing after a cut, or just arrived on its plateau: `None` (the ceiling is
    ///   well under what the curve assumed).
    ///
    /// `at` is the rate the 429 came at: the new ceiling.
    pub fn after_429(&self, now_ns: u64, at: f64, hold: Duration) -> Option<Self> {
        let rest = if self.after_cut {
            HOLD_MIN
        } else {
            Duration::ZERO
        };
        let rested = self
            .plateau_from_ns
            .saturating_add(clamp_u64(rest.as_nanos()));
        let level = if self.probing(now_ns) {
            self.level
        } else if now_ns >= rested && self.previous < self.level {
            self.previous
        } else if now_ns >= rested {
            BETA_REST * self.level
        } else {
            return None;
        };
        let level = level.max(MIN_RATE);
        Some(Self {
            w_max: level,
            level,
            plateau_from_ns: now_ns,
            hold_ns: clamp_u64(hold.as_nanos()),
            steps: 0,
            previous: self.previous.min(level),
            after_cut: false,
            ceiling: at.max(level),
        })
    }

    /// The rate the current probe step rises to: `PROBE`, then twice, four times… that
    /// share above the plateau (at most twice the plateau), but no higher than the ceiling
    /// while under it, and a single `PROBE` above the plateau at the ceiling.
    fn step(&self) -> f64 {
        let share = PROBE * f64::from(1u32 << self.steps.min(16));
        let step = (1.0 + share.min(1.0)) * self.level;
        if self.level * (1.0 + PROBE / 2.0) < self.ceiling {
            step.min(self.ceiling)
        } else if self.level <= self.ceiling {
            (1.0 + PROBE) * self.level
        } else {
            step
        }
    }

    /// When the probe step has been held for a whole hold without a 429.
    fn step_held_ns(&self) -> u64 {
        let rise = ((self.step() - self.level).max(0.0) / SCALE_C).cbrt();
        self.probe_from_ns()
            .saturating_add(ns_of_secs(rise))
            .saturating_add(self.hold_ns)
    }

    /// The rate the curve gives at `now_ns` (requests per second).
    pub fn rate_at(&self, now_ns: u64) -> f64 {
        let probe_from = self.probe_from_ns();
        let rate = if now_ns < self.plateau_from_ns {
            // AWS's curve, shifted to reach the plateau at `plateau_from`.
            let d = ((self.w_max - self.level).max(0.0) / SCALE_C).cbrt();
            self.w_max + SCALE_C * (secs_between(now_ns, self.plateau_from_ns) - d).powi(3)
        } else if now_ns < probe_from {
            self.level
        } else {
            let t = secs_between(now_ns, probe_from);
            (self.level + SCALE_C * t.powi(3)).min(self.step())
        };
        rate.max(MIN_RATE)
    }

    /// The curve as of `now_ns`: each probe step held for a whole hold without a 429 becomes
    /// the plateau (the limit is higher), and the next step, twice as tall, starts from it.
    pub fn promoted(mut self, now_ns: u64) -> Self {
        // Each step lasts at least a hold; a few dozen steps are hours of silence.
        for _ in 0..64 {
            let held = self.step_held_ns();
            if now_ns < held || self.hold_ns == 0 {
                break;
            }
            let level = self.step();
            // Past the ceiling and held: the limit rose; forget it, and start the doubling
            // over from a small step.
            let (ceiling, steps) = if level > self.ceiling {
                (f64::INFINITY, 0)
            } else {
                (self.ceiling, self.steps + 1)
            };
            self = Self {
                w_max: level,
                level,
                plateau_from_ns: held - self.hold_ns,
                hold_ns: self.hold_ns,
                steps,
                previous: self.level,
                after_cut: false,
                ceiling,
            };
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_SEC;
    const MS: u64 = 1_000_000;

    #[test]
    fn cubic_cut_is_aws_law_until_the_plateau_then_steps() {
        let now = 100 * S;
        let law = Cubic::cut(10.0, now, Duration::from_secs(5));
        let k = (10.0f64 * 0.3 / 0.4).cbrt();
        // AWS: r(t) = C (t - K)^3 + W, at t = 0.5 s.
        let t = 0.5;
        let aws = 0.4 * (t - k).powi(3) + 10.0;
        assert!((law.rate_at(now + S / 2) - aws).abs() < 1e-6);
        assert!((law.rate_at(now) - 7.0).abs() < 1e-9);
        // Rising to the plateau, then flat for the hold.
        let p = law.plateau_from_ns();
        assert!(law.rate_at(p - MS) < PLATEAU * 10.0);
        assert!((law.rate_at(p + 4 * S) - 9.7).abs() < 1e-9);
        assert!(!law.probing(p + 4 * S));
        // Then the probe: a cubic rise from the plateau (gentle first), stopping at the
        // ceiling (the rate the 429 came at), which is under one step.
        let probe = p + 5 * S;
        assert!(law.probing(probe));
        assert!((law.rate_at(probe) - 9.7).abs() < 1e-9);
        assert!((law.rate_at(probe + S / 2) - (9.7 + 0.4 / 8.0)).abs() < 1e-9);
        assert!((law.rate_at(probe + 2 * S) - 10.0).abs() < 1e-9);
        // A step held for a whole hold becomes the plateau.
        assert_eq!(law.promoted(probe + 2 * S), law);
        let held = |law: &Cubic| law.step_held_ns();
        let at_ceiling = law.promoted(held(&law));
        assert!((at_ceiling.level() - 10.0).abs() < 1e-9);
        // At the ceiling: one small step.
        let far = at_ceiling.plateau_from_ns() + 60 * S;
        assert!((at_ceiling.rate_at(far) - 10.5).abs() < 1e-9);
        // Past it and held: the limit rose; the ceiling is forgotten and the doubling starts
        // over: 5%, then 10%.
        let past = at_ceiling.promoted(held(&at_ceiling));
        assert!((past.level() - 10.5).abs() < 1e-9);
        let far = past.plateau_from_ns() + 60 * S;
        assert!((past.rate_at(far) - 10.5 * 1.05).abs() < 1e-9);
        let next = past.promoted(held(&past));
        let far = next.plateau_from_ns() + 60 * S;
        assert!((next.rate_at(far) - 10.5 * 1.05 * 1.1).abs() < 1e-9);
    }

    #[test]
    fn cubic_never_goes_under_the_floor() {
        let law = Cubic::cut(0.1, S, HOLD_MIN);
        assert!(law.rate_at(S) >= MIN_RATE);
    }

    #[test]
    fn what_a_429_means_depends_on_where_the_curve_is() {
        let hold = Duration::from_secs(5);
        let longer = Duration::from_secs(10);
        let law = Cubic::cut(10.0, 100 * S, hold);
        let p = law.plateau_from_ns();
        // Climbing after the cut, or just arrived on the plateau: the ceiling is lower still.
        assert!(law.after_429(100 * S + S / 2, 8.0, longer).is_none());
        assert!(law.after_429(p + S, 9.7, longer).is_none());
        // Resting on the plateau a while: a little too high, step down.
        let down = law.after_429(p + 3 * S, 9.7, longer).unwrap();
        assert!((down.level() - BETA_REST * 9.7).abs() < 1e-9);
        assert_eq!(down.hold(), longer);
        // Probing: back to the plateau.
        let back = law.after_429(p + 5 * S + S / 2, 9.75, longer).unwrap();
        assert!((back.level() - 9.7).abs() < 1e-9);
        // A plateau reached by a promotion: back to the one before it.
        let promoted = law.promoted(law.step_held_ns());
        let rest = promoted.plateau_from_ns() + hold.as_nanos() as u64 / 2;
        let before = promoted.after_429(rest, 10.0, longer).unwrap();
        assert!((before.level() - 9.7).abs() < 1e-9);
        // A plateau reached by falling back: any 429 on it is a step down, at once.
        let again = before
            .after_429(before.plateau_from_ns(), 9.7, longer)
            .unwrap();
        assert!((again.level() - BETA_REST * 9.7).abs() < 1e-9);
    }
}
