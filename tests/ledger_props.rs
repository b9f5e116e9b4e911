//! The spend ledger's bound, over random interleavings of reserve / settle / release and
//! window roll-overs: what it commits is exactly settled spend plus reservations in flight,
//! and it exceeds its limit only by what attempts cost beyond what they reserved.

use std::time::Duration;

use proptest::prelude::*;
use retry_runtime::budget::{Ledger, Reservation};
use retry_runtime::{Budget, Spend};

#[derive(Debug, Clone)]
enum Op {
    Reserve(u64),
    /// Settle the i-th in-flight reservation (mod count) at this real cost.
    Settle(usize, u64),
    Release(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..2_000).prop_map(Op::Reserve),
        4 => (any::<usize>(), 0u64..3_000).prop_map(|(i, r)| Op::Settle(i, r)),
        1 => any::<usize>().prop_map(Op::Release),
        1 => (0u64..40_000).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn committed_is_settled_plus_in_flight_and_overshoot_is_bounded(
        limit in 1u64..20_000,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let window = 60_000u64;
        let ledger = Ledger::new(Some(Budget::micros(limit)), Some(Duration::from_millis(window)));
        let mut now = 0u64;
        // (reservation, window it was made in, amount)
        let mut in_flight: Vec<(Reservation, u64, u64)> = Vec::new();
        let mut settled_in_window = 0u64;
        let mut excess_in_window = 0u64;
        let mut current = 0u64;
        for op in ops {
            let w = now / window;
            if w != current {
                current = w;
                settled_in_window = 0;
                excess_in_window = 0;
            }
            match op {
                Op::Advance(ms) => now += ms,
                Op::Reserve(amount) => {
                    let committed = ledger.committed(now);
                    let fits = committed < limit && committed + amount <= limit;
                    match ledger.reserve(amount, now) {
                        Ok(r) => {
                            prop_assert!(fits, "reserved {} with {} of {} committed", amount, committed, limit);
                            in_flight.push((r, w, amount));
                        }
                        Err(seen) => {
                            prop_assert!(!fits, "refused {} with {} of {} committed", amount, committed, limit);
                            prop_assert_eq!(seen, committed);
                        }
                    }
                }
                Op::Settle(i, real) if !in_flight.is_empty() => {
                    let (r, made_in, amount) = in_flight.remove(i % in_flight.len());
                    ledger.settle(r, Spend::from_micros(real), now);
                    settled_in_window += real;
                    if made_in == w {
                        excess_in_window += real.saturating_sub(amount);
                    } else {
                        excess_in_window += real; // reserved in a window that rolled over
                    }
                }
                Op::Release(i) if !in_flight.is_empty() => {
                    let (r, _, _) = in_flight.remove(i % in_flight.len());
                    ledger.release(r);
                }
                Op::Settle(..) | Op::Release(_) => {}
            }
            let w = now / window;
            if w != current {
                continue; // checked on the next op, after the model rolls over too
            }
            let reserved: u64 = in_flight.iter().filter(|(_, made_in, _)| *made_in == w).map(|(_, _, a)| a).sum();
            prop_assert_eq!(ledger.committed(now), settled_in_window + reserved);
            prop_assert!(settled_in_window <= limit + excess_in_window,
                "settled {} > limit {} + excess {}", settled_in_window, limit, excess_in_window);
        }
    }
}
