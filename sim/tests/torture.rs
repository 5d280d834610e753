//! `saga-sim torture` against the real services: a few seeds with the light
//! profile must come out clean under the whole checker, which must have
//! looked at every commit, ack and stream entry (`torture_mutant.rs` shows
//! that planted bugs do not come out clean, each caught by its check).
//!
//! Needs PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, a user that may CREATE
//! DATABASE) and the `redis-server` binary (each seed starts a private one
//! on a free port); fails, saying what to start, when either is missing.
//!
//! The five fault kinds of issue 17 are left out here: today's adapters do
//! not survive them (see the torture module docs and the integration
//! notes); once their fixes are merged, drop that line in
//! `torture_support::light`.

mod torture_support;

use purchase_saga_sim::torture::{self, Kind};
use torture_support::{assert_clean_with_every_order_on_a_path, light, require_services};

#[test]
fn light_faults_on_the_real_services_leave_every_invariant_holding() {
    require_services();
    let settings = light();
    for seed in 0..2 {
        let o = torture::run_seed(&settings, seed);
        assert_clean_with_every_order_on_a_path(&o);
        let injected: u64 = o.kinds.values().sum::<u64>() + o.sim_faults.values().sum::<u64>();
        assert!(injected > 0, "seed {seed}: a light plan injects faults");
        assert!(
            o.kinds.get(&Kind::RedisLoss).copied().unwrap_or(0) > 0,
            "seed {seed}: the light profile loses Redis's data once"
        );
        // Issue 24's kinds, counted by their effect: a 53100 met by an
        // inbox insert, the column's new type in the catalog, a frozen
        // holder's session ended by the server.
        for kind in [Kind::DiskFull, Kind::TypeChange, Kind::FrozenReplica] {
            assert!(
                o.kinds.get(&kind).copied().unwrap_or(0) > 0,
                "seed {seed}: {kind} took effect: {:?}\n{}",
                o.kinds,
                o.failure_report()
            );
        }
        // The whole checker ran: every commit, every ack and every stream
        // entry was looked at (`witness.rs`, `streams.rs`).
        for what in ["commits", "acks", "stream-entries"] {
            assert!(
                o.checked.get(what).copied().unwrap_or(0) > 0,
                "seed {seed}: no {what} checked: {:?}",
                o.checked
            );
        }
        assert!(
            o.checked["acks"] >= o.input.scenario.orders.len() as u64,
            "seed {seed}: every saga acks several deliveries: {:?}",
            o.checked
        );
    }
}
