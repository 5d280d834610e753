//! No liveness cliff: an event lost after what was the last re-drive round
//! (round 3, 14 s after its commit with the simulator's 2 s `after` and
//! `republish_max` 3) is still re-driven, because rounds repeat at the
//! capped gap (8 s) until the horizon (32 s; `RedrivePolicy`). Before,
//! every order whose events were all lost until then stayed PENDING for
//! good, holding balance, slots and stock.

use purchase_saga_sim::faults::FaultPlan;
use purchase_saga_sim::{input_from_seed, run, Profile, SimSettings};

#[test]
fn events_lost_past_the_old_last_round_are_still_redriven() {
    let settings = SimSettings {
        // Capped gaps and the saga's own steps after healing.
        liveness_ms: 60_000,
        ..SimSettings::default()
    };
    let mut input = input_from_seed(7, Profile::None, 12, &settings);
    // The bus loses every publish for 20 s: every event committed in the
    // first 6 s (the orders) has spent its three doubling rounds by then.
    input.plan = FaultPlan {
        drop_publish_per_mille: 1000,
        heal_at_ms: 20_000,
        ..FaultPlan::none()
    };
    let o = run(&input, &settings);
    assert!(o.violations.is_empty(), "{:#?}", o.violations);
    assert_eq!(o.paths.get("PENDING"), None, "{:?}", o.paths);
    let lost = o
        .faults
        .iter()
        .find(|(k, _)| k.name() == "drop-publish")
        .map_or(0, |(_, n)| *n);
    assert!(lost >= 12, "the plan lost only {lost} publishes");
    assert!(
        o.simulated_ms > 20_000,
        "quiescent only after healing, at {} ms",
        o.simulated_ms
    );
}
