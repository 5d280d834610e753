//! The environment of one host's software ([`env_for`]): the library's
//! `Env` over the simulator's store, bus client, (possibly skewed) clock
//! and observers. Process hosts (`run.rs`) and the client host
//! (`client.rs`) are built on it.

use std::sync::Arc;

use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::runtime::relay::RelayWake;
use purchase_saga::runtime::{Env, Fanout, RuntimeConfig};

use crate::bus::SimBus;
use crate::clock::SkewedClock;
use crate::faults::Replica;
use crate::observer::SimObserver;
use crate::store::SimStore;
use crate::world::World;

/// The environment of one service (or the client) in a host: its store
/// connection, bus client, the host's (possibly skewed) clock, and the
/// observers (with `wake`, the host's relays'). `clock_of` names the host
/// in the plan's skews: a process runs on its lead replica's clock.
pub fn env_for(
    world: &Arc<World>,
    replica: Option<Replica>,
    clock_of: &str,
    config: RuntimeConfig,
    wake: Option<Arc<RelayWake>>,
) -> Env {
    let skew_ms = world.plan.skew_ms.get(clock_of).copied().unwrap_or(0);
    let sim_observer: Arc<dyn purchase_saga::runtime::Observer> =
        Arc::new(SimObserver { world: world.clone() });
    let observer: Arc<dyn purchase_saga::runtime::Observer> = match wake {
        Some(wake) => Arc::new(Fanout(vec![sim_observer, wake])),
        None => sim_observer,
    };
    Env {
        store: Arc::new(SimStore::new(world.clone(), replica)),
        bus: Arc::new(SimBus::default()),
        clock: Arc::new(SkewedClock {
            base: world.clock.clone(),
            skew_ms,
        }),
        gateway: Arc::new(SimulatedGateway::default()),
        observer,
        config,
    }
}
