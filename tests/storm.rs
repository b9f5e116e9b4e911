//! Short storms through the storm simulator (the `storm-sim` crate), asserting the direction of
//! every comparison between ours and the other policies, so that a regression in any piece
//! of the full policy (pacing, retry budget, breaker, jitter, the executor around them) fails
//! here. The figures themselves are in `docs/PERFORMANCE.md`; these runs are shortened
//! (30 s before, a 60 s incident, 60 s after) to take seconds in the debug profile.
//!
//! Ours runs the breaker's defaults in every scenario: the same protections must keep a
//! brownout answered (retries pay), let a slowed or shedding provider recover (retries and
//! load shed) and stop sending into an outage.
//!
//! One test function: the simulator configures the process-wide runtime once, and each
//! scenario has its own breaker, pacer and cache, used once per process.

use storm_sim::{Figures, Policy, Scenario};

fn run(spec: &Scenario, callers: u32, seed: u64) -> (Vec<Figures>, String) {
    let runs = storm_sim::run_scenario(spec, callers, seed);
    let figures: Vec<Figures> = runs.iter().map(|r| storm_sim::figures(spec, r)).collect();
    let table = format!(
        "({}) {}\n{}",
        spec.key,
        spec.title,
        storm_sim::table(&figures)
    );
    (figures, table)
}

fn of(figures: &[Figures], policy: Policy) -> &Figures {
    figures
        .iter()
        .find(|f| f.policy == policy)
        .expect("every policy ran")
}

#[test]
fn ours_beats_the_other_policies_in_short_storms() {
    // (a) 429 storm: 3x the rate limit.
    let (a, table) = run(&Scenario::storm().short(), 50, 11);
    println!("{table}");
    let ours = of(&a, Policy::Ours);
    let naive = of(&a, Policy::Naive);
    assert!(naive.amplification >= 2.0, "the storm is real:\n{table}");
    assert!(ours.amplification <= 1.1, "ours amplifies:\n{table}");
    for other in Policy::ALL.into_iter().filter(|&p| p != Policy::Ours) {
        let them = of(&a, other);
        let name = other.name();
        assert!(
            ours.amplification < them.amplification,
            "ours must send fewer provider calls per logical call than {name}:\n{table}"
        );
        assert!(
            ours.rate_limited < them.rate_limited,
            "ours must get fewer 429s than {name}:\n{table}"
        );
        assert!(
            ours.wasted_usd <= them.wasted_usd,
            "ours must waste no more than {name}:\n{table}"
        );
        assert!(
            ours.success >= them.success,
            "ours must answer no fewer calls than {name}:\n{table}"
        );
        assert!(
            ours.goodput >= them.goodput.map(|g| g - 0.01),
            "ours must deliver as many answers as {name}:\n{table}"
        );
    }

    // (d) metastable: retries keep a slowed provider down after the trigger ends.
    // Shortened, the trigger tips the provider over for most seeds, not all (in 3 of seeds
    // 1 to 15 the retrying policies ride it out): a seed where it does, and the check that it did.
    let (d, table) = run(&Scenario::metastable().short(), 50, 7);
    println!("{table}");
    let ours = of(&d, Policy::Ours);
    assert!(
        of(&d, Policy::Naive).amplification >= 1.5,
        "the collapse is real:\n{table}"
    );
    assert!(ours.recovery.is_some(), "ours must recover:\n{table}");
    for other in [Policy::Naive, Policy::Exp, Policy::FullJitter] {
        let them = of(&d, other);
        let name = other.name();
        assert!(them.recovery.is_none(), "{name} should stay down:\n{table}");
        assert!(
            ours.amplification < them.amplification,
            "ours must send fewer provider calls per logical call than {name}:\n{table}"
        );
        assert!(
            ours.wasted_usd < them.wasted_usd,
            "ours must waste less than {name}:\n{table}"
        );
        assert!(
            ours.success > them.success,
            "ours must answer more calls than {name}:\n{table}"
        );
        assert!(
            ours.p99 < them.p99,
            "ours must have a lower p99 latency than {name}:\n{table}"
        );
    }
    // The OpenAI SDK's 600 s timeout never retries here; ours recovers sooner and answers
    // faster, though it loses some calls to its 20 s timeout (see docs/PERFORMANCE.md).
    let sdk = of(&d, Policy::OpenAiSdk);
    assert!(
        ours.p99 < sdk.p99,
        "ours must have a lower p99 than the SDK:\n{table}"
    );
    assert!(
        ours.success >= 0.9,
        "ours must answer 90% of calls through the slowdown:\n{table}"
    );

    // (b) brownout, 70% failing: the breaker must read it as a brownout and keep retrying.
    let (b, table) = run(&Scenario::brownout().short(), 50, 11);
    println!("{table}");
    let ours = of(&b, Policy::Ours);
    let naive = of(&b, Policy::Naive);
    assert!(
        ours.success >= naive.success,
        "ours must answer as many calls as the naive loop in a brownout:\n{table}"
    );
    assert!(
        ours.wasted_usd <= naive.wasted_usd,
        "ours must waste no more than the naive loop in a brownout:\n{table}"
    );

    // (e) a milder brownout: within a few points of everyone.
    let (e, table) = run(&Scenario::brownout_30().short(), 50, 11);
    println!("{table}");
    let ours = of(&e, Policy::Ours);
    for other in Policy::ALL.into_iter().filter(|&p| p != Policy::Ours) {
        assert!(
            ours.success >= of(&e, other).success - 0.03,
            "ours must answer about as many calls as {}:\n{table}",
            other.name()
        );
    }

    // (c) hard outage: stop sending, and be back soon after.
    let (c, table) = run(&Scenario::outage().short(), 50, 11);
    println!("{table}");
    let ours = of(&c, Policy::Ours);
    assert!(
        ours.amplification <= 0.8,
        "ours sends into the outage:\n{table}"
    );
    assert!(
        ours.recovery.is_some_and(|r| r <= 10.0),
        "ours must be back within 10 s of the outage's end:\n{table}"
    );

    // (f) a load-shedding provider: retries keep it down unless they are shed.
    let (f, table) = run(&Scenario::shedding().short(), 50, 11);
    println!("{table}");
    let ours = of(&f, Policy::Ours);
    assert!(ours.recovery.is_some(), "ours must recover:\n{table}");
    assert!(ours.amplification <= 1.2, "ours amplifies:\n{table}");
    for other in [Policy::Naive, Policy::OpenAiSdk] {
        let them = of(&f, other);
        assert!(
            them.recovery.is_none(),
            "{} should keep the provider shedding:\n{table}",
            other.name()
        );
        assert!(
            ours.success > them.success,
            "ours must answer more calls than {}:\n{table}",
            other.name()
        );
    }
}
