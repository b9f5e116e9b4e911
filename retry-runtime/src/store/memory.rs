//! [`MemoryStore`]: the shared-store rules inside one process.
//!
//! The same rules as the Redis scripts (module `store::redis`, feature `redis`), on a map behind a mutex: several
//! "processes" in one test can share it, and [`MemoryStore::set_reachable`] plays an outage.
//! It is not the default: without a configured store, breakers, pools and pacers keep their
//! state in their own atomics and never call a store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Admit, Admitted, SharedBreaker, Store, StoreError, StoreFuture, Update, Verdict};
use crate::retry_budget::WINDOW_SECS;

type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A [`Store`] in process memory. See the module docs.
///
/// ```
/// use std::time::Duration;
/// use retry_runtime::store::{memory::MemoryStore, Admit, PoolAsk, Store, Verdict};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = MemoryStore::new();
/// let ask = Admit {
///     pool: Some(PoolAsk { name: "doc", window_ms: 60_000, limit: 100, expected: 60 }),
///     ..Admit::default()
/// };
/// assert_eq!(store.admit(ask.clone()).await.unwrap().verdict, Verdict::Admitted);
/// assert_eq!(store.admit(ask).await.unwrap().verdict, Verdict::PoolFull); // 60 + 60 > 100
/// # }
/// ```
pub struct MemoryStore {
    clock: Clock,
    reachable: AtomicBool,
    operations: AtomicU64,
    state: Mutex<State>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("reachable", &self.reachable.load(Ordering::Relaxed))
            .field("operations", &self.operations())
            .finish()
    }
}

#[derive(Default)]
struct State {
    // breaker -> (open until, ms; generation), and when the entry expires (µs).
    breakers: HashMap<String, (u64, u64, u64)>,
    // (pool, window) -> committed
    pools: HashMap<(String, u64), i128>,
    // pacer -> theoretical arrival time (µs)
    pacers: HashMap<String, u64>,
    // (breaker, second) -> (first attempts, retries)
    retries: HashMap<(String, u64), (u64, u64)>,
    // breaker -> the probe leases of its half-open period: token -> expiry (ms)
    probes: HashMap<String, HashMap<u64, u64>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store whose clock is the process's monotonic clock.
    pub fn new() -> Self {
        let start = Instant::now();
        // Start a day in, like the runtime's clock, so early windows are not window zero.
        Self::with_clock(move || 86_400_000_000 + start.elapsed().as_micros() as u64)
    }

    /// A store reading time (microseconds) from `clock`, for tests that drive time by hand.
    pub fn with_clock(clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self {
            clock: Arc::new(clock),
            reachable: AtomicBool::new(true),
            operations: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// Play an outage (`false`) or its end (`true`): while unreachable, every operation fails.
    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Release);
    }

    /// Operations answered so far (admissions, updates, pings): round trips, for tests.
    pub fn operations(&self) -> u64 {
        self.operations.load(Ordering::Acquire)
    }

    /// What is committed in `pool`'s window `window`.
    pub fn committed(&self, pool: &str, window: u64) -> u64 {
        let state = self.lock();
        let v = state
            .pools
            .get(&(pool.to_owned(), window))
            .copied()
            .unwrap_or(0);
        u64::try_from(v.max(0)).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below is complete between statements: a poisoned lock is still valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<u64, StoreError> {
        if !self.reachable.load(Ordering::Acquire) {
            return Err(StoreError::NotConnected);
        }
        self.operations.fetch_add(1, Ordering::AcqRel);
        Ok((self.clock)())
    }

    /// The probe leases of `breaker` held now (not lapsed).
    pub fn probe_leases(&self, breaker: &str) -> usize {
        let now_ms = (self.clock)() / 1000;
        let state = self.lock();
        state
            .probes
            .get(breaker)
            .map_or(0, |leases| leases.values().filter(|&&e| e > now_ms).count())
    }

    /// The admission rule (the Redis `admit` script does the same): checks first, in order
    /// breaker (and its probe leases while half-open), retry budget, pacer, pool; then, if
    /// all pass, every write.
    fn admit_now(&self, ask: &Admit, now_us: u64) -> Admitted {
        let now_ms = now_us / 1000;
        let mut state = self.lock();
        let mut verdict = Verdict::Admitted;
        let mut out = Admitted {
            verdict,
            breaker: None,
            pool: None,
            pace_wait: Duration::ZERO,
            leased: false,
        };
        let mut lease = None;
        if let Some(b) = &ask.breaker {
            let entry = state
                .breakers
                .get(b.name)
                .copied()
                .filter(|&(_, _, expires)| expires > now_us);
            out.breaker = Some(match entry {
                None => SharedBreaker {
                    generation: 0,
                    open_for: None,
                },
                Some((until, generation, _)) => {
                    if until > now_ms {
                        verdict = Verdict::BreakerOpen;
                    } else if let Some(probe) = ask.probe {
                        // Cooled down: the fleet's half-open period.
                        let held = state
                            .probes
                            .get(b.name)
                            .map_or(0, |leases| leases.values().filter(|&&e| e > now_ms).count());
                        if held >= probe.probes.max(1) as usize {
                            verdict = Verdict::ProbesOut;
                        } else {
                            lease = Some(probe);
                        }
                    }
                    SharedBreaker {
                        generation,
                        open_for: Some(Duration::from_millis(until.saturating_sub(now_ms))),
                    }
                }
            });
        }
        let second = now_us / 1_000_000;
        if let (Verdict::Admitted, Some(b)) = (verdict, &ask.breaker) {
            if let Some(rule) = b.withdraw {
                let (mut firsts, mut retries) = (0u64, 0u64);
                for s in second + 1 - WINDOW_SECS..=second {
                    let (f, r) = state
                        .retries
                        .get(&(b.name.to_owned(), s))
                        .copied()
                        .unwrap_or((0, 0));
                    firsts += f;
                    retries += r;
                }
                if !crate::retry_budget::allowed(
                    retries + 1,
                    firsts,
                    rule.ratio_ppm,
                    rule.floor_per_window,
                ) {
                    verdict = Verdict::RetryBudget;
                }
            }
        }
        let mut new_tat = None;
        if let (Verdict::Admitted, Some(p)) = (verdict, &ask.pace) {
            let tat = state.pacers.get(p.name).copied().unwrap_or(0);
            let tolerance = p
                .burst
                .max(1)
                .saturating_sub(1)
                .saturating_mul(p.interval_us);
            let at = tat.saturating_sub(tolerance).max(now_us);
            let wait = at - now_us;
            out.pace_wait = Duration::from_micros(wait);
            if wait > p.max_wait_us {
                verdict = Verdict::PaceTooLate;
            } else {
                new_tat = Some(tat.max(at).saturating_add(p.interval_us.max(1)));
            }
        }
        if let Some(p) = &ask.pool {
            let window = now_ms / p.window_ms.max(1);
            let committed = state
                .pools
                .get(&(p.name.to_owned(), window))
                .copied()
                .unwrap_or(0);
            let committed = u64::try_from(committed.max(0)).unwrap_or(u64::MAX);
            out.pool = Some((window, committed));
            if verdict == Verdict::Admitted
                && !(committed < p.limit && committed.saturating_add(p.expected) <= p.limit)
            {
                verdict = Verdict::PoolFull;
            }
        }
        out.verdict = verdict;
        if verdict != Verdict::Admitted {
            return out;
        }
        if let Some(p) = &ask.pool {
            if let Some((window, committed)) = &mut out.pool {
                let entry = state.pools.entry((p.name.to_owned(), *window)).or_insert(0);
                *entry += i128::from(p.expected);
                *committed = u64::try_from((*entry).max(0)).unwrap_or(u64::MAX);
            }
        }
        if let (Some(p), Some(tat)) = (&ask.pace, new_tat) {
            state.pacers.insert(p.name.to_owned(), tat);
        }
        if let Some(b) = &ask.breaker {
            let counts = state
                .retries
                .entry((b.name.to_owned(), second))
                .or_default();
            if b.deposit {
                counts.0 += 1;
            }
            if b.withdraw.is_some() {
                counts.1 += 1;
            }
            if let Some(probe) = lease {
                let leases = state.probes.entry(b.name.to_owned()).or_default();
                leases.retain(|_, &mut e| e > now_ms);
                leases.insert(probe.token, now_ms.saturating_add(probe.lease_ms.max(1)));
                out.leased = true;
            }
        }
        out
    }

    /// Store an open state of `cooldown` (a new generation), which ends the half-open period
    /// and its probe leases.
    fn open(state: &mut State, breaker: &str, cooldown: Duration, now_us: u64) {
        let now_ms = now_us / 1000;
        let cooldown_ms = u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX);
        // As in Redis: max(now, old + 1), where an expired entry is no entry.
        let generation = state
            .breakers
            .get(breaker)
            .filter(|&&(_, _, expires)| expires > now_us)
            .map_or(0, |&(_, g, _)| g);
        let until = now_ms.saturating_add(cooldown_ms);
        let keep_ms = cooldown_ms.saturating_add(cooldown_ms.max(60_000));
        state.breakers.insert(
            breaker.to_owned(),
            (
                until,
                now_us.max(generation + 1),
                now_us.saturating_add(keep_ms.saturating_mul(1000)),
            ),
        );
        state.probes.remove(breaker);
    }

    fn update_now(&self, update: &Update, now_us: u64) {
        let now_ms = now_us / 1000;
        let mut state = self.lock();
        match *update {
            Update::Settle {
                pool,
                window_ms,
                window,
                reserved,
                real,
            } => {
                let current = now_ms / window_ms.max(1);
                if current == window {
                    let v = state.pools.entry((pool.to_owned(), window)).or_insert(0);
                    *v = (*v - i128::from(reserved) + i128::from(real)).max(0);
                } else {
                    *state.pools.entry((pool.to_owned(), current)).or_insert(0) += i128::from(real);
                }
            }
            Update::Release {
                pool,
                window,
                reserved,
            } => {
                if let Some(v) = state.pools.get_mut(&(pool.to_owned(), window)) {
                    *v = (*v - i128::from(reserved)).max(0);
                }
            }
            Update::AddSpend {
                pool,
                window_ms,
                amount,
            } => {
                let current = now_ms / window_ms.max(1);
                *state.pools.entry((pool.to_owned(), current)).or_insert(0) += i128::from(amount);
            }
            Update::BreakerOpened {
                breaker,
                cooldown,
                force,
            } => {
                let (until, _, expires) = state
                    .breakers
                    .get(breaker)
                    .copied()
                    .filter(|&(_, _, expires)| expires > now_us)
                    .unwrap_or((0, 0, 0));
                if !force && until > now_ms && expires > now_us {
                    return;
                }
                Self::open(&mut state, breaker, cooldown, now_us);
            }
            Update::ProbeEnded {
                breaker,
                token,
                reopen,
            } => {
                let leased = state
                    .probes
                    .get(breaker)
                    .is_some_and(|leases| leases.contains_key(&token));
                if !leased {
                    return;
                }
                match reopen {
                    Some(cooldown) => Self::open(&mut state, breaker, cooldown, now_us),
                    None => {
                        state.breakers.remove(breaker);
                        state.probes.remove(breaker);
                    }
                }
            }
            Update::BreakerClosed { breaker } => {
                state.breakers.remove(breaker);
                state.probes.remove(breaker);
            }
            Update::ProbeRenewed {
                breaker,
                token,
                lease,
            } => {
                let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
                if let Some(expires) = state
                    .probes
                    .get_mut(breaker)
                    .and_then(|leases| leases.get_mut(&token))
                    .filter(|e| **e > now_ms)
                {
                    *expires = now_ms.saturating_add(lease_ms);
                }
            }
            Update::ProbeReleased { breaker, token } => {
                if let Some(leases) = state.probes.get_mut(breaker) {
                    leases.remove(&token);
                }
            }
        }
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn admit(&self, ask: Admit) -> StoreFuture<'_, Admitted> {
        let answer = self.check().map(|now| self.admit_now(&ask, now));
        Box::pin(async move { answer })
    }

    fn update(&self, update: Update) -> StoreFuture<'_, ()> {
        let answer = self.check().map(|now| self.update_now(&update, now));
        Box::pin(async move { answer })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        let answer = self.check().map(|_| ());
        Box::pin(async move { answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BreakerAsk, PaceAsk, PoolAsk, RetryRule};
    use std::sync::atomic::AtomicU64;

    const HOUR_MS: u64 = 3_600_000;

    fn manual() -> (Arc<AtomicU64>, MemoryStore) {
        let now = Arc::new(AtomicU64::new(100 * HOUR_MS * 1000));
        let clock = now.clone();
        (
            now,
            MemoryStore::with_clock(move || clock.load(Ordering::Acquire)),
        )
    }

    fn pool(expected: u64) -> Admit {
        Admit {
            pool: Some(PoolAsk {
                name: "p",
                window_ms: HOUR_MS,
                limit: 100,
                expected,
            }),
            ..Admit::default()
        }
    }

    fn admit(store: &MemoryStore, ask: Admit) -> Admitted {
        let now = store.check().unwrap();
        store.admit_now(&ask, now)
    }

    fn update(store: &MemoryStore, update: Update) {
        let now = store.check().unwrap();
        store.update_now(&update, now);
    }

    #[test]
    fn a_settlement_after_the_window_rolled_over_charges_the_new_window() {
        let (now, s) = manual();
        let (window, _) = admit(&s, pool(40)).pool.unwrap();
        now.fetch_add(HOUR_MS * 1000, Ordering::AcqRel);
        update(
            &s,
            Update::Settle {
                pool: "p",
                window_ms: HOUR_MS,
                window,
                reserved: 40,
                real: 25,
            },
        );
        assert_eq!(
            s.committed("p", window),
            40,
            "the old window keeps its reservation"
        );
        assert_eq!(s.committed("p", window + 1), 25);
        // A new window starts from what was charged to it.
        assert_eq!(admit(&s, pool(80)).verdict, Verdict::PoolFull);
        assert_eq!(admit(&s, pool(75)).verdict, Verdict::Admitted);
    }

    #[test]
    fn the_fleets_pacing_bucket_schedules_slots_and_refills() {
        let (now, s) = manual();
        let ask = |max_wait_us| Admit {
            pace: Some(PaceAsk {
                name: "r",
                interval_us: 1000,
                burst: 3,
                max_wait_us,
            }),
            ..Admit::default()
        };
        let waits: Vec<u64> = (0..5)
            .map(|_| admit(&s, ask(u64::MAX)).pace_wait.as_micros() as u64)
            .collect();
        assert_eq!(waits, [0, 0, 0, 1000, 2000]);
        assert_eq!(admit(&s, ask(2999)).verdict, Verdict::PaceTooLate);
        assert_eq!(admit(&s, ask(3000)).pace_wait, Duration::from_micros(3000));
        // Idle for long enough, the whole burst is back.
        now.fetch_add(10_000, Ordering::AcqRel);
        let waits: Vec<u64> = (0..4)
            .map(|_| admit(&s, ask(u64::MAX)).pace_wait.as_micros() as u64)
            .collect();
        assert_eq!(waits, [0, 0, 0, 1000]);
    }

    #[test]
    fn retry_budget_counts_age_out_after_the_window() {
        let (now, s) = manual();
        let ask = |deposit, withdraw: bool| Admit {
            breaker: Some(BreakerAsk {
                name: "b",
                deposit,
                withdraw: withdraw.then_some(RetryRule {
                    ratio_ppm: 1_000_000,
                    floor_per_window: 0,
                }),
            }),
            ..Admit::default()
        };
        admit(&s, ask(true, false));
        assert_eq!(admit(&s, ask(false, true)).verdict, Verdict::Admitted);
        assert_eq!(admit(&s, ask(false, true)).verdict, Verdict::RetryBudget);
        now.fetch_add(WINDOW_SECS * 1_000_000, Ordering::AcqRel);
        admit(&s, ask(true, false));
        assert_eq!(admit(&s, ask(false, true)).verdict, Verdict::Admitted);
    }

    #[test]
    fn a_breakers_open_state_expires_and_its_generation_never_repeats() {
        let (now, s) = manual();
        let look = Admit {
            breaker: Some(BreakerAsk {
                name: "b",
                deposit: false,
                withdraw: None,
            }),
            ..Admit::default()
        };
        let open = Update::BreakerOpened {
            breaker: "b",
            cooldown: Duration::from_secs(1),
            force: false,
        };
        update(&s, open.clone());
        let first = admit(&s, look.clone());
        assert_eq!(first.verdict, Verdict::BreakerOpen);
        // Cooled down but kept (for the half-open phase): admitted, and still "open for 0".
        now.fetch_add(1_500_000, Ordering::AcqRel);
        let cooled = admit(&s, look.clone());
        assert_eq!(cooled.verdict, Verdict::Admitted);
        assert_eq!(cooled.breaker.unwrap().open_for, Some(Duration::ZERO));
        // Long after, it is gone; a new open gets a new generation.
        now.fetch_add(120_000_000, Ordering::AcqRel);
        assert_eq!(admit(&s, look.clone()).breaker.unwrap().open_for, None);
        update(&s, open);
        let again = admit(&s, look).breaker.unwrap();
        assert!(again.generation > first.breaker.unwrap().generation);
    }

    #[tokio::test]
    async fn half_open_probe_leases_are_counted_renewed_released_and_lapse() {
        let (now, s) = manual();
        let pass = |d: Duration| {
            now.fetch_add(d.as_micros() as u64, Ordering::AcqRel);
            std::future::ready(())
        };
        crate::store::probe::rules::probe_leases(&s, "b", Duration::from_secs(2), pass).await;
        assert_eq!(s.probe_leases("b"), 0, "the close ended them");
    }

    #[tokio::test]
    async fn an_unreachable_store_fails_every_operation() {
        let s = MemoryStore::new();
        s.set_reachable(false);
        assert!(s.ping().await.is_err());
        assert!(s.admit(pool(1)).await.is_err());
        s.set_reachable(true);
        assert!(s.ping().await.is_ok());
        assert_eq!(s.operations(), 1);
    }
}
