//! [`ProbeLease`]: a half-open probe's fleet-wide slot, held in the store while its attempt
//! runs (see [`super::probe_lease`]).
//!
//! The lease is asked for in the attempt's admission (one round trip with the rest of it).
//! Held, it is renewed every third of its length on the store's thread. The attempt's result
//! ends the half-open period in the store ([`ProbeLease::end`]: re-open or close, and every
//! lease of the period goes with it), if the period is still the one it was leased in: the
//! first result of a period decides it, as in one process. A probe that ends without a
//! result (dropped, or refused after all) gives its lease back at once. What cannot be sent
//! (the process died, the store is away) lapses in the store, at most one lease after the
//! last renewal.

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tokio::task::AbortHandle;

use super::{ProbeAsk, Shared, Update};

/// A probe's lease: asked for, then held until the attempt's result. Dropped, it gives the
/// lease back (in the background: best effort, the lease's end is the backstop).
#[derive(Debug)]
pub(crate) struct ProbeLease {
    shared: &'static Shared,
    breaker: &'static str,
    token: u64,
    renewal: Option<AbortHandle>,
    release: bool,
}

impl ProbeLease {
    /// A lease to ask for with an admission through `breaker` (which admits `probes` while
    /// half-open): the ask, and the lease, which gives back on drop whatever the store may
    /// have granted, also before the answer came (a call dropped while the store answered).
    pub(crate) fn ask(
        shared: &'static Shared,
        breaker: &'static str,
        probes: u32,
    ) -> (ProbeAsk, ProbeLease) {
        let token = next_token();
        let ask = ProbeAsk {
            token,
            probes: probes.max(1),
            lease_ms: u64::try_from(shared.probe_lease().as_millis()).unwrap_or(u64::MAX),
        };
        let lease = ProbeLease {
            shared,
            breaker,
            token,
            renewal: None,
            release: true,
        };
        (ask, lease)
    }

    /// The store granted it: keep it, renewed, until the attempt's result.
    pub(crate) fn held(mut self) -> Self {
        if self.renewal.is_none() {
            self.renewal = Some(self.shared.renew_probe(self.breaker, self.token));
        }
        self
    }

    /// Nothing to give back: the store did not grant it.
    pub(crate) fn forget(mut self) {
        self.release = false;
    }

    /// The probe's result: re-open the fleet's breaker for `reopen` (it failed) or close it
    /// (`None`: the provider answered), if its half-open period goes on (in the background).
    pub(crate) fn end(mut self, reopen: Option<Duration>) {
        self.release = false;
        self.shared.send(Update::ProbeEnded {
            breaker: self.breaker,
            token: self.token,
            reopen,
        });
    }
}

impl Drop for ProbeLease {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        if self.release {
            self.shared.send(Update::ProbeReleased {
                breaker: self.breaker,
                token: self.token,
            });
        }
    }
}

/// A token no other lease in the fleet has: this process's random number plus a count (two
/// processes collide only if their numbers fall within their counts of each other).
fn next_token() -> u64 {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| {
        use rand::{RngCore, SeedableRng};
        rand::rngs::SmallRng::try_from_os_rng().map_or_else(
            |_| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                    ^ u64::from(std::process::id()).rotate_left(32)
            },
            |mut rng| rng.next_u64(),
        )
    });
    process.wrapping_add(COUNT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
pub(crate) mod rules {
    //! The probe-lease rules, written once against `&dyn Store`: run on a `MemoryStore` on a
    //! hand-driven clock (`store::memory`) and on a real `redis-server` in real time
    //! (`store::redis`), so that the script and the reference agree.
    use std::future::Future;
    use std::time::Duration;

    use crate::store::{Admit, Admitted, BreakerAsk, PoolAsk, ProbeAsk, Store, Update, Verdict};

    const PROBES: u32 = 2;

    fn ask(name: &'static str, token: Option<u64>, lease: Duration) -> Admit {
        Admit {
            breaker: Some(BreakerAsk {
                name,
                deposit: false,
                withdraw: None,
            }),
            probe: token.map(|token| ProbeAsk {
                token,
                probes: PROBES,
                lease_ms: lease.as_millis() as u64,
            }),
            ..Admit::default()
        }
    }

    async fn admit(store: &dyn Store, ask: Admit) -> Admitted {
        store.admit(ask).await.expect("the store answers")
    }

    async fn update(store: &dyn Store, update: Update) {
        store.update(update).await.expect("the store answers");
    }

    /// `pass(d)` lets `d` pass on the store's clock; `lease` is the leases' length; `name` a
    /// breaker no other test uses on this store.
    pub(crate) async fn probe_leases<P, F>(
        store: &dyn Store,
        name: &'static str,
        lease: Duration,
        pass: P,
    ) where
        P: Fn(Duration) -> F,
        F: Future<Output = ()>,
    {
        let cooldown = Duration::from_millis(100);
        let opened = |force| Update::BreakerOpened {
            breaker: name,
            cooldown,
            force,
        };
        let probe = |token| ask(name, Some(token), lease);
        let verdict = |a: Admitted| a.verdict;
        let leased = |a: Admitted| a.leased;

        // Closed (nothing stored) and open (cooling down): no lease is taken.
        assert_eq!(
            verdict_leased(admit(store, probe(1)).await),
            (Verdict::Admitted, false),
            "closed: a normal attempt"
        );
        update(store, opened(false)).await;
        assert_eq!(
            verdict_leased(admit(store, probe(1)).await),
            (Verdict::BreakerOpen, false)
        );

        // Cooled down: the fleet's half-open period admits exactly `probes` leases.
        pass(cooldown).await;
        assert_eq!(verdict(admit(store, probe(1)).await), Verdict::Admitted);
        assert!(leased(admit(store, probe(2)).await), "the second probe");
        assert_eq!(
            verdict_leased(admit(store, probe(3)).await),
            (Verdict::ProbesOut, false),
            "every probe is out"
        );
        // A look asks for no lease and takes none.
        let look = admit(store, ask(name, None, lease)).await;
        assert_eq!(verdict_leased(look), (Verdict::Admitted, false));
        assert_eq!(look.breaker.unwrap().open_for, Some(Duration::ZERO));

        // A released lease is free at once; a refusal elsewhere (a full pool) takes none.
        update(
            store,
            Update::ProbeReleased {
                breaker: name,
                token: 1,
            },
        )
        .await;
        let mut refused = probe(4);
        refused.pool = Some(PoolAsk {
            name,
            window_ms: 3_600_000,
            limit: 0,
            expected: 1,
        });
        assert_eq!(
            verdict_leased(admit(store, refused).await),
            (Verdict::PoolFull, false)
        );
        assert!(leased(admit(store, probe(5)).await), "lease 1's slot");
        assert_eq!(verdict(admit(store, probe(6)).await), Verdict::ProbesOut);

        // Renewed, a lease outlives its length; not renewed, it lapses; a lapsed one is not
        // renewed back.
        pass(lease * 3 / 5).await;
        update(
            store,
            Update::ProbeRenewed {
                breaker: name,
                token: 2,
                lease,
            },
        )
        .await;
        pass(lease * 3 / 5).await;
        update(
            store,
            Update::ProbeRenewed {
                breaker: name,
                token: 5,
                lease,
            },
        )
        .await;
        assert!(leased(admit(store, probe(7)).await), "lease 5 lapsed");
        assert_eq!(
            verdict(admit(store, probe(8)).await),
            Verdict::ProbesOut,
            "lease 2 was renewed, and lease 5 not renewed back"
        );

        // A new open state (a failed probe) ends the period and its leases; a close too.
        update(store, opened(true)).await;
        assert_eq!(verdict(admit(store, probe(9)).await), Verdict::BreakerOpen);
        pass(cooldown).await;
        assert!(leased(admit(store, probe(10)).await));
        assert!(leased(admit(store, probe(11)).await), "a fresh period");
        update(store, Update::BreakerClosed { breaker: name }).await;
        assert_eq!(
            verdict_leased(admit(store, probe(12)).await),
            (Verdict::Admitted, false),
            "closed"
        );
        update(store, opened(false)).await;
        pass(cooldown).await;
        assert!(leased(admit(store, probe(13)).await));
        assert!(
            leased(admit(store, probe(14)).await),
            "the close ended the old leases"
        );

        // A probe's result ends its period; the first one decides it, as in one process.
        let ended = |token, reopen| Update::ProbeEnded {
            breaker: name,
            token,
            reopen,
        };
        let look = || ask(name, None, lease);
        update(store, ended(13, Some(cooldown))).await;
        assert_eq!(verdict(admit(store, look()).await), Verdict::BreakerOpen);
        update(store, ended(14, None)).await;
        assert_eq!(
            verdict(admit(store, look()).await),
            Verdict::BreakerOpen,
            "a later result of the same period changes nothing"
        );
        pass(cooldown).await;
        assert!(leased(admit(store, probe(15)).await), "a fresh period");
        update(store, ended(16, Some(cooldown))).await;
        assert_eq!(
            verdict(admit(store, probe(17)).await),
            Verdict::Admitted,
            "a token that holds no lease ends nothing"
        );
        update(store, ended(15, None)).await;
        let closed = admit(store, look()).await;
        assert_eq!(
            (closed.verdict, closed.breaker.unwrap().open_for),
            (Verdict::Admitted, None),
            "its success closed the breaker"
        );
    }

    fn verdict_leased(a: Admitted) -> (Verdict, bool) {
        (a.verdict, a.leased)
    }
}
