//! The driver's side of the two host crashes of issue 13: the broker host
//! crashing with its state lost (`broker-loss`) and the client host
//! crashing (`client-crash`); each is restarted after its downtime, or at
//! once when the faults heal.
//!
//! The broker's state lives outside its host ([`Broker`]); the crash
//! empties it, as a Redis without persistence comes back. The turmoil crash
//! breaks every connection to it; while it is down connects are refused.
//! The client's durable memory is its [`RequestLog`] (see `client.rs`).

use std::sync::Arc;

use crate::broker::{self, Broker};
use crate::client::{self, RequestLog, CLIENT_HOST};
use crate::faults::{FaultKind, Scheduled};
use crate::world::{EntryKind, World};

/// See the module docs.
pub struct HostCrashes {
    pub broker: Broker,
    pub requests: Arc<RequestLog>,
    /// When the crashed broker restarts.
    broker_up_at: Option<u64>,
    /// When the crashed client restarts.
    client_up_at: Option<u64>,
}

impl HostCrashes {
    pub fn new(broker: Broker, requests: Arc<RequestLog>) -> HostCrashes {
        HostCrashes {
            broker,
            requests,
            broker_up_at: None,
            client_up_at: None,
        }
    }

    /// Applies a scheduled [`Scheduled::BrokerLoss`] or
    /// [`Scheduled::ClientCrash`] at `t` (a host already down stays down
    /// as it was).
    pub fn strike(&mut self, sim: &mut turmoil::Sim<'_>, world: &World, fault: &Scheduled, t: u64) {
        match *fault {
            Scheduled::BrokerLoss { down_ms } => {
                if self.broker_up_at.is_none() {
                    sim.crash(broker::HOST);
                    let lost = self.broker.lose_everything();
                    world.fault(
                        FaultKind::BrokerLoss,
                        None,
                        format!(
                            "broker crashed and lost all of its state ({lost} unacknowledged entries), down {down_ms}ms"
                        ),
                    );
                    self.broker_up_at = Some(t + down_ms);
                }
            }
            Scheduled::ClientCrash { point, down_ms } => {
                if self.client_up_at.is_none() {
                    if let Some(down_ms) = client::strike(&self.requests, world, point, down_ms) {
                        self.crash_client(sim, t + down_ms);
                    }
                }
            }
            Scheduled::Crash { .. } | Scheduled::Partition { .. } => {
                unreachable!("replica faults are the run loop's")
            }
        }
    }

    fn crash_client(&mut self, sim: &mut turmoil::Sim<'_>, up_at: u64) {
        sim.crash(CLIENT_HOST);
        self.client_up_at = Some(up_at);
    }

    /// Crashes the client if its armed crash point fired.
    pub fn take_requests(&mut self, sim: &mut turmoil::Sim<'_>, world: &World, t: u64) {
        if let Some(down_ms) = self.requests.take_crash_request() {
            if self.client_up_at.is_none() {
                let up_at = if world.healed() { t } else { t + down_ms };
                self.crash_client(sim, up_at);
            }
        }
    }

    /// The faults healed: the crashed hosts restart now.
    pub fn heal(&mut self, t: u64) {
        self.requests.disarm();
        for up_at in [&mut self.broker_up_at, &mut self.client_up_at]
            .into_iter()
            .flatten()
        {
            *up_at = t;
        }
    }

    /// Restarts the hosts whose downtime ended.
    pub fn restart_due(&mut self, sim: &mut turmoil::Sim<'_>, world: &World, t: u64) {
        if self.broker_up_at.is_some_and(|at| at <= t) {
            self.broker_up_at = None;
            sim.bounce(broker::HOST);
            world.log(
                EntryKind::Driver { at: None },
                "== broker restarted, empty ==".into(),
            );
        }
        if self.client_up_at.is_some_and(|at| at <= t) {
            self.client_up_at = None;
            sim.bounce(CLIENT_HOST);
            world.log(EntryKind::Driver { at: None }, "== client restarted ==".into());
        }
    }
}
