//! Fault kinds, profiles and the fault plan of one run.
//!
//! A [`FaultPlan`] is plain data: the rates of the probabilistic faults, the
//! scheduled crashes and partitions, the saga deadline and the moment every
//! fault heals. A seed and a [`Profile`] generate one; proptest builds and
//! shrinks them directly.

use std::collections::BTreeMap;
use std::fmt;

use purchase_saga::domain::Service;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Every kind of fault the simulator injects; the summary counts how often
/// each actually happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    /// Store operations and network messages delayed by a random extra.
    Latency,
    /// The broker delivers one entry twice (a copy, or a pending entry to a
    /// second consumer while the first still works on it).
    Duplicate,
    /// The broker accepts a publish and loses it for a subscriber.
    DropPublish,
    /// The broker marks an entry delivered but the consumer never gets it.
    DropDelivery,
    /// A replica cannot reach the broker for a while.
    Partition,
    /// A replica crashes (at an arbitrary moment) and restarts later.
    Crash,
    /// A crash that discarded an open store transaction.
    CrashMidTransaction,
    /// A crash after the relay published and before it marked published.
    CrashAfterPublish,
    /// A crash after a commit that enqueued events, before the committing
    /// task sent them (send on commit; in relay mode, before the ack).
    CrashAfterCommit,
    /// The store aborts a transaction (serialization failure).
    StoreAbort,
    /// An order's deadline passed before it was terminal.
    Deadline,
    /// A replica's pruner deleted inbox or outbox rows (the runtime's own
    /// pruner loop, retention scaled to simulated time).
    Prune,
    /// A store operation answered `Unavailable` (connection refused/broken).
    Unavailable,
    /// A transaction waited for a connection of its replica's pool past the
    /// acquire timeout and got `Unavailable`.
    PoolExhausted,
    /// A host's clock runs ahead of or behind simulated time (counted once
    /// per skewed host).
    Skew,
    /// A commit that enqueued outbox rows woke its replica's relay.
    Wake,
    /// The broker host crashed and came back empty, as a Redis without
    /// persistence does: streams, groups, pending entries and dead letters
    /// gone; the buses re-create the groups on NOGROUP.
    BrokerLoss,
    /// The client host crashed (possibly after its order committed and
    /// before it learned so) and, restarted, re-sent what it could not
    /// prove was answered.
    ClientCrash,
    // The rare states below are not faults but states a bug would hide in
    // ([`FaultKind::RARE`]); some seeds are steered into them
    // ([`Steer`]), and each is counted when a run reached it, whether
    // steered or not.
    /// A consumer took a delivery past `deliveries_max` of an event its
    /// service had applied (its acks were lost): the consumer must ask the
    /// inbox and acknowledge it, not dead-letter it.
    AppliedPastLimit,
    /// A relay marked an entry after the lease of its claim had ended: the
    /// entry was due to the other relays while its publish was in flight.
    LeaseEndedMidPublish,
    /// A consumer received a batch holding a poison entry (one the broker
    /// injected, that never decodes) among good ones.
    PoisonInBatch,
    /// An entry claimed by a second consumer after the visibility timeout
    /// (a takeover) was acknowledged by both: the first consumer's ack
    /// raced the takeover.
    ClaimRacedTakeover,
}

impl FaultKind {
    pub const ALL: [FaultKind; 18] = [
        FaultKind::Latency,
        FaultKind::Duplicate,
        FaultKind::DropPublish,
        FaultKind::DropDelivery,
        FaultKind::Partition,
        FaultKind::Crash,
        FaultKind::CrashMidTransaction,
        FaultKind::CrashAfterPublish,
        FaultKind::CrashAfterCommit,
        FaultKind::StoreAbort,
        FaultKind::Deadline,
        FaultKind::Prune,
        FaultKind::Unavailable,
        FaultKind::PoolExhausted,
        FaultKind::Skew,
        FaultKind::Wake,
        FaultKind::BrokerLoss,
        FaultKind::ClientCrash,
    ];

    /// The rare states a sweep must reach (the coverage table lists them
    /// apart from the faults).
    pub const RARE: [FaultKind; 4] = [
        FaultKind::AppliedPastLimit,
        FaultKind::LeaseEndedMidPublish,
        FaultKind::PoisonInBatch,
        FaultKind::ClaimRacedTakeover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Duplicate => "duplicate",
            FaultKind::DropPublish => "drop-publish",
            FaultKind::DropDelivery => "drop-delivery",
            FaultKind::Partition => "partition",
            FaultKind::Crash => "crash",
            FaultKind::CrashMidTransaction => "crash-mid-tx",
            FaultKind::CrashAfterPublish => "crash-after-publish",
            FaultKind::CrashAfterCommit => "crash-after-commit",
            FaultKind::StoreAbort => "store-abort",
            FaultKind::Deadline => "deadline",
            FaultKind::Prune => "prune",
            FaultKind::Unavailable => "unavailable",
            FaultKind::PoolExhausted => "pool-exhausted",
            FaultKind::Skew => "skew",
            FaultKind::Wake => "wake",
            FaultKind::BrokerLoss => "broker-loss",
            FaultKind::ClientCrash => "client-crash",
            FaultKind::AppliedPastLimit => "applied-past-limit",
            FaultKind::LeaseEndedMidPublish => "lease-ended-mid-publish",
            FaultKind::PoisonInBatch => "poison-in-batch",
            FaultKind::ClaimRacedTakeover => "claim-raced-takeover",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How hard a sweep hits the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    None,
    Light,
    Heavy,
    /// Heavy rates, but each seed switches a random subset of kinds on.
    Swarm,
}

impl Profile {
    /// The rare states a sweep must reach (the coverage table lists them
    /// apart from the faults).
    pub const RARE: [FaultKind; 4] = [
        FaultKind::AppliedPastLimit,
        FaultKind::LeaseEndedMidPublish,
        FaultKind::PoisonInBatch,
        FaultKind::ClaimRacedTakeover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Light => "light",
            Profile::Heavy => "heavy",
            Profile::Swarm => "swarm",
        }
    }
}

/// One replica host of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Replica {
    pub service: Service,
    pub index: u8,
}

impl Replica {
    /// The turmoil host name, e.g. `payment-r1` (`-r`, so that a replica
    /// is never mistaken for an order id like `order-1`).
    pub fn host(self) -> String {
        format!("{}-r{}", self.service.slug(), self.index)
    }
}

impl fmt::Display for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host())
    }
}

/// Where a scheduled crash strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CrashPoint {
    /// Whenever the schedule says, in whatever the replica is doing.
    Anywhere,
    /// The replica's next commit: the transaction is open, its writes lost.
    BeforeCommit,
    /// The replica's next publish of outbox rows (a relay pass, or send on
    /// commit), between publish and mark-published.
    AfterPublish,
    /// The replica's next commit that enqueued events, after it committed
    /// and before the events are sent (send on commit).
    AfterCommit,
}

/// A seed steered into a rare state on purpose ([`FaultPlan::steer`]):
/// what the simulator does from `at_ms` on so that the state happens.
/// Only a rare state's own lever is pulled; whether the state was reached
/// is counted from what the run did ([`FaultKind::RARE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steer {
    pub state: FaultKind,
    pub at_ms: u64,
}

impl Steer {
    /// What the lever is, for the trace and the docs.
    pub fn lever(self) -> &'static str {
        match self.state {
            FaultKind::AppliedPastLimit => {
                "the broker loses every ack of the first entry acked from here on \
                 until its delivery count is past deliveries_max"
            }
            FaultKind::LeaseEndedMidPublish => {
                "the first mark of a relay from here on stalls past its claim's lease"
            }
            FaultKind::PoisonInBatch => {
                "the broker appends a poison entry right after each of the next publishes"
            }
            FaultKind::ClaimRacedTakeover => {
                "the broker holds the first ack from here on past the visibility timeout"
            }
            other => unreachable!("{other} is no rare state"),
        }
    }
}

/// One seed in this many (light, heavy, swarm) is steered into one of the
/// rare states ([`FaultKind::RARE`], drawn in turn), so a sweep of a few
/// hundred seeds reaches each.
pub const STEER_ONE_IN: u32 = 8;

/// Poison entries a [`FaultKind::PoisonInBatch`] steer appends (each
/// after a publish), so a lost delivery or a crash cannot take them all.
pub const POISON_ENTRIES: u32 = 3;

/// A fault at a moment of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheduled {
    /// Crash `replica` at `point`, restart it `down_ms` later.
    Crash {
        replica: Replica,
        point: CrashPoint,
        down_ms: u64,
    },
    /// Cut `replica` off the broker for `len_ms`.
    Partition { replica: Replica, len_ms: u64 },
    /// Crash the broker host; it restarts `down_ms` later with nothing.
    BrokerLoss { down_ms: u64 },
    /// Crash the client host at `point`, restart it `down_ms` later.
    ClientCrash { point: ClientCrashPoint, down_ms: u64 },
}

/// Where a scheduled crash of the client strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClientCrashPoint {
    /// Whenever the schedule says, in whatever the client is doing.
    Anywhere,
    /// The client's next placed order: committed, but the client crashes
    /// before it records the answer, so it must re-send the request.
    AfterPlace,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedFault {
    pub at_ms: u64,
    pub fault: Scheduled,
}

/// See the module docs. Rates are parts per thousand of the operations
/// they apply to; all of them stop at `heal_at_ms`. Serialised in corpus
/// entries (`corpus.rs`): a field missing from a stored plan (one added
/// since) takes [`FaultPlan::none`]'s value, the plan of a kind not drawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default = "FaultPlan::none")]
pub struct FaultPlan {
    /// Extra latency of a store operation or network message, up to this.
    pub jitter_ms_max: u64,
    pub duplicate_per_mille: u32,
    pub drop_publish_per_mille: u32,
    pub drop_delivery_per_mille: u32,
    pub abort_per_mille: u32,
    /// The saga deadline of this run (short: deadlines race the saga).
    pub saga_deadline_ms: i64,
    /// Crashes and partitions, in time order.
    pub timed: Vec<TimedFault>,
    /// From here on no fault is injected; replicas are up, links repaired.
    pub heal_at_ms: u64,
    /// Store operations answered `Unavailable`.
    pub unavailable_per_mille: u32,
    /// Connections in each replica's store pool until healing (0: no cap).
    pub pool_size: u32,
    /// Each host's clock offset from simulated time, by host name (hosts
    /// not named run on time). Clocks do not heal.
    pub skew_ms: BTreeMap<String, i64>,
    /// After quiescence the run goes on, idle, this long (and must still be
    /// quiescent): long enough for the pruners to delete what the retention
    /// lets go, which a run stopped at quiescence never reaches.
    pub linger_ms: u64,
    /// The rare state this seed is steered into, if any (one in
    /// [`STEER_ONE_IN`]).
    pub steer: Option<Steer>,
}

/// The saga deadline without the deadline fault.
pub const DEADLINE_MS_DEFAULT: i64 = 10_000;

/// Bound of a host's clock skew, either way.
pub const SKEW_MS_MAX: i64 = 500;

/// How long a lingering run goes on after quiescence: past the simulator's
/// inbox retention (`run::runtime_config`) plus two prune passes.
pub const LINGER_MS: u64 = 66_000;

/// One seed in this many lingers (heavy and swarm), so a sweep sees the
/// pruners delete without paying the idle time on every seed.
pub const LINGER_ONE_IN: u32 = 48;

/// One seed in this many loses the broker's state once (light, heavy;
/// swarm when the kind is on).
pub const BROKER_LOSS_ONE_IN: u32 = 8;

/// One seed in this many crashes the client once while it places orders.
pub const CLIENT_CRASH_ONE_IN: u32 = 4;

impl FaultPlan {
    /// No faults: the baseline.
    pub fn none() -> FaultPlan {
        FaultPlan {
            jitter_ms_max: 0,
            duplicate_per_mille: 0,
            drop_publish_per_mille: 0,
            drop_delivery_per_mille: 0,
            abort_per_mille: 0,
            saga_deadline_ms: DEADLINE_MS_DEFAULT,
            timed: Vec::new(),
            heal_at_ms: 0,
            unavailable_per_mille: 0,
            pool_size: 0,
            skew_ms: BTreeMap::new(),
            linger_ms: 0,
            steer: None,
        }
    }

    /// A plan for `profile` over `replicas`, drawn from `rng`. Input (order
    /// arrivals, within `arrival_span_ms`) always stops before the faults
    /// do, so recovery must not need new traffic.
    pub fn generate(
        rng: &mut impl Rng,
        profile: Profile,
        replicas: &[Replica],
        arrival_span_ms: u64,
    ) -> FaultPlan {
        assert!(!replicas.is_empty(), "a plan needs replicas to hit");
        let (scale, enabled): (u32, [bool; 8]) = match profile {
            Profile::None => return FaultPlan::none(),
            Profile::Light => (1, [true; 8]),
            Profile::Heavy => (4, [true; 8]),
            Profile::Swarm => {
                let mut on = [false; 8];
                for slot in &mut on {
                    *slot = rng.random_bool(0.5);
                }
                (4, on)
            }
        };
        let [latency, duplicate, drop_publish, drop_delivery, abort, deadline, crash, partition] = enabled;
        let rate =
            |on: bool, rng: &mut dyn rand::RngCore| if on { rng.random_range(5..=25) * scale } else { 0 };
        let heal_at_ms = arrival_span_ms + rng.random_range(3_000..=10_000);
        let mut timed = Vec::new();
        if crash {
            let crashes = if scale == 1 { 4 } else { rng.random_range(4..=9) };
            for n in 0..crashes {
                // Cycle the points so every kind of crash occurs.
                let point = [
                    CrashPoint::Anywhere,
                    CrashPoint::BeforeCommit,
                    CrashPoint::AfterPublish,
                    CrashPoint::AfterCommit,
                ][n % 4];
                timed.push(TimedFault {
                    at_ms: rng.random_range(0..heal_at_ms),
                    fault: Scheduled::Crash {
                        replica: replicas[rng.random_range(0..replicas.len())],
                        point,
                        down_ms: rng.random_range(100..=3_000),
                    },
                });
            }
        }
        if partition {
            for _ in 0..rng.random_range(1..=scale.max(2)) {
                timed.push(TimedFault {
                    at_ms: rng.random_range(0..heal_at_ms),
                    fault: Scheduled::Partition {
                        replica: replicas[rng.random_range(0..replicas.len())],
                        len_ms: rng.random_range(200..=3_000),
                    },
                });
            }
        }
        timed.sort_by_key(|t| t.at_ms);
        let mut plan = FaultPlan {
            jitter_ms_max: if latency {
                rng.random_range(5..=10) * u64::from(scale)
            } else {
                0
            },
            duplicate_per_mille: rate(duplicate, rng),
            drop_publish_per_mille: rate(drop_publish, rng),
            drop_delivery_per_mille: rate(drop_delivery, rng),
            abort_per_mille: rate(abort, rng),
            saga_deadline_ms: if deadline {
                rng.random_range(1_000..=4_000)
            } else {
                DEADLINE_MS_DEFAULT
            },
            timed,
            heal_at_ms,
            ..FaultPlan::none()
        };
        // The kinds added later draw after every earlier draw, so the older
        // kinds of a seed keep their values.
        let [unavailable, pool, skew, linger] = match profile {
            Profile::Swarm => [(); 4].map(|()| rng.random_bool(0.5)),
            _ => [true; 4],
        };
        plan.unavailable_per_mille = rate(unavailable, rng);
        if pool {
            plan.pool_size = rng.random_range(1..=3);
        }
        if skew {
            for host in replicas.iter().map(|r| r.host()).chain(["client".to_string()]) {
                let ms = rng.random_range(-SKEW_MS_MAX..=SKEW_MS_MAX);
                plan.skew_ms.insert(host, ms);
            }
        }
        if linger && rng.random_range(0..LINGER_ONE_IN) == 0 {
            plan.linger_ms = LINGER_MS;
        }
        // Issue 13's host crashes, drawn after all of the above.
        let [broker_loss, client_crash] = match profile {
            Profile::Swarm => [(); 2].map(|()| rng.random_bool(0.5)),
            _ => [true; 2],
        };
        if broker_loss && rng.random_range(0..BROKER_LOSS_ONE_IN) == 0 {
            plan.timed.push(TimedFault {
                at_ms: rng.random_range(0..heal_at_ms),
                fault: Scheduled::BrokerLoss {
                    down_ms: rng.random_range(100..=2_000),
                },
            });
        }
        if client_crash && rng.random_range(0..CLIENT_CRASH_ONE_IN) == 0 {
            let point = [ClientCrashPoint::Anywhere, ClientCrashPoint::AfterPlace][rng.random_range(0..2)];
            plan.timed.push(TimedFault {
                // While the client still places orders.
                at_ms: rng.random_range(0..arrival_span_ms.max(1)),
                fault: Scheduled::ClientCrash {
                    point,
                    down_ms: rng.random_range(100..=3_000),
                },
            });
        }
        // Stable: the older faults keep their order among themselves.
        plan.timed.sort_by_key(|t| t.at_ms);
        // Issue 23's steering, drawn after everything else: a seed that is
        // not steered keeps its plan (and its trace) as it was.
        if rng.random_range(0..STEER_ONE_IN) == 0 {
            let state = FaultKind::RARE[rng.random_range(0..FaultKind::RARE.len())];
            plan.steer = Some(Steer {
                state,
                // While orders still arrive, so there is traffic to steer.
                at_ms: rng.random_range(0..arrival_span_ms.max(1)),
            });
        }
        plan
    }
}

impl FaultPlan {
    /// This plan with one fault kind taken out: for finding which planted
    /// bugs need which faults to show. (Deadlines still pass on their own
    /// when a saga is slow; without this kind they are not made short.)
    pub fn without(mut self, kind: FaultKind) -> FaultPlan {
        let keep = |t: &TimedFault| match (&t.fault, kind) {
            (Scheduled::Partition { .. }, FaultKind::Partition) => false,
            (Scheduled::Crash { .. }, FaultKind::Crash) => false,
            (Scheduled::Crash { point, .. }, FaultKind::CrashMidTransaction) => {
                *point != CrashPoint::BeforeCommit
            }
            (Scheduled::Crash { point, .. }, FaultKind::CrashAfterPublish) => {
                *point != CrashPoint::AfterPublish
            }
            (Scheduled::Crash { point, .. }, FaultKind::CrashAfterCommit) => {
                *point != CrashPoint::AfterCommit
            }
            (Scheduled::BrokerLoss { .. }, FaultKind::BrokerLoss) => false,
            (Scheduled::ClientCrash { .. }, FaultKind::ClientCrash) => false,
            _ => true,
        };
        self.timed.retain(keep);
        match kind {
            FaultKind::Latency => self.jitter_ms_max = 0,
            FaultKind::Duplicate => self.duplicate_per_mille = 0,
            FaultKind::DropPublish => self.drop_publish_per_mille = 0,
            FaultKind::DropDelivery => self.drop_delivery_per_mille = 0,
            FaultKind::StoreAbort => self.abort_per_mille = 0,
            FaultKind::Deadline => self.saga_deadline_ms = DEADLINE_MS_DEFAULT,
            FaultKind::Unavailable => self.unavailable_per_mille = 0,
            FaultKind::PoolExhausted => self.pool_size = 0,
            FaultKind::Skew => self.skew_ms.clear(),
            FaultKind::Prune => self.linger_ms = 0,
            // The relay's wake is the runtime's own path, not a fault.
            FaultKind::Wake => {}
            FaultKind::AppliedPastLimit
            | FaultKind::LeaseEndedMidPublish
            | FaultKind::PoisonInBatch
            | FaultKind::ClaimRacedTakeover => {
                if self.steer.is_some_and(|s| s.state == kind) {
                    self.steer = None;
                }
            }
            FaultKind::Partition
            | FaultKind::BrokerLoss
            | FaultKind::ClientCrash
            | FaultKind::Crash
            | FaultKind::CrashMidTransaction
            | FaultKind::CrashAfterPublish
            | FaultKind::CrashAfterCommit => {}
        }
        self
    }

    /// The kind named `name` (as in the summary), if any.
    pub fn kind_named(name: &str) -> Option<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .chain(FaultKind::RARE)
            .find(|k| k.name() == name)
    }
}
