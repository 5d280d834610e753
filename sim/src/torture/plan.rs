//! What torture injects into one seed: the simulator's [`FaultPlan`] (rates,
//! replica crashes, partitions, the saga deadline), drawn exactly as
//! `saga-sim run` draws it, plus the faults only real servers have
//! ([`Kind`]), scheduled from the same seed. Times are the plan's
//! milliseconds; the driver divides them by [`super::TIME_DIVISOR`].

use std::fmt;

use purchase_saga::domain::Service;
use purchase_saga::workload::Scenario;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::faults::{FaultKind, FaultPlan, Profile};
use crate::run::{input_from_seed, SimSettings};

/// The fault kinds torture adds to the simulator's [`FaultKind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `pg_terminate_backend` of every backend of the seed's database.
    PgKill,
    /// `CLIENT KILL` of every connection of the seed's Redis.
    RedisKill,
    /// The private redis-server restarted without persistence: all data
    /// lost (with `--redis-url`: every key of the seed's prefix deleted).
    RedisLoss,
    /// The database read-only for a while (issue 17).
    ReadOnly,
    /// An additive migration (ADD COLUMN) on a service's table (issue 17).
    Migration,
    /// An outbox row that no longer decodes (issue 17).
    BadOutboxRow,
    /// A pending entry deleted from a stream behind the consumers' back
    /// (issue 17).
    Xdel,
    /// A dead-letter key of the wrong type for a while, with an
    /// undecodable entry on that service's stream meanwhile (issue 17).
    WrongTypeDeadKey,
    /// A service's inbox on a small tablespace that is full (53100) for a
    /// while (issue 24).
    DiskFull,
    /// A column type change on the outbox, whose claim the pooled
    /// connections have cached (0A000; issue 24).
    TypeChange,
    /// A process that locks a row in a transaction and stops polling for
    /// longer than every timeout, then resumes (issue 24).
    FrozenReplica,
    /// The private redis-server out of memory for a while: `maxmemory`
    /// just under its used memory with `noeviction` (issue 24).
    RedisOom,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::PgKill,
        Kind::RedisKill,
        Kind::RedisLoss,
        Kind::ReadOnly,
        Kind::Migration,
        Kind::BadOutboxRow,
        Kind::Xdel,
        Kind::WrongTypeDeadKey,
        Kind::DiskFull,
        Kind::TypeChange,
        Kind::FrozenReplica,
        Kind::RedisOom,
    ];

    /// The kinds of issue 17, which today's adapters do not survive.
    pub const ISSUE_17: [Kind; 5] = [
        Kind::ReadOnly,
        Kind::Migration,
        Kind::BadOutboxRow,
        Kind::Xdel,
        Kind::WrongTypeDeadKey,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::PgKill => "pg-kill",
            Kind::RedisKill => "redis-kill",
            Kind::RedisLoss => "redis-loss",
            Kind::ReadOnly => "read-only",
            Kind::Migration => "migration",
            Kind::BadOutboxRow => "bad-outbox-row",
            Kind::Xdel => "xdel",
            Kind::WrongTypeDeadKey => "wrong-type-dead-key",
            Kind::DiskFull => "disk-full",
            Kind::TypeChange => "type-change",
            Kind::FrozenReplica => "frozen-replica",
            Kind::RedisOom => "redis-oom",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault kind `--without` can take out: the simulator's or torture's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyKind {
    Sim(FaultKind),
    Torture(Kind),
}

/// Parses a `--without` value: a kind's name, a comma-separated list of
/// them, or `issue-17` for the five kinds of issue 17.
pub fn parse_kinds(raw: &str) -> Result<Vec<AnyKind>, String> {
    let mut kinds = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name == "issue-17" {
            kinds.extend(Kind::ISSUE_17.map(AnyKind::Torture));
        } else if let Some(k) = FaultPlan::kind_named(name) {
            kinds.push(AnyKind::Sim(k));
        } else if let Some(k) = Kind::ALL.into_iter().find(|k| k.name() == name) {
            kinds.push(AnyKind::Torture(k));
        } else {
            let known: Vec<&str> = FaultKind::ALL
                .iter()
                .map(|k| k.name())
                .chain(Kind::ALL.iter().map(|k| k.name()))
                .collect();
            return Err(format!(
                "unknown fault kind {name:?}; known: {}, issue-17",
                known.join(", ")
            ));
        }
    }
    Ok(kinds)
}

/// One scheduled torture fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    PgKill,
    RedisKill,
    RedisLoss,
    ReadOnly {
        len_ms: u64,
    },
    Migration {
        service: Service,
    },
    /// `garbage`: a payload that is not JSON, else a copy of the newest
    /// real row with `"schemaVersion":2`.
    BadOutboxRow {
        service: Service,
        garbage: bool,
    },
    Xdel {
        service: Service,
    },
    WrongTypeDeadKey {
        service: Service,
        len_ms: u64,
    },
    DiskFull {
        service: Service,
        len_ms: u64,
    },
    TypeChange {
        service: Service,
    },
    FrozenReplica {
        service: Service,
        len_ms: u64,
    },
    RedisOom {
        len_ms: u64,
    },
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::PgKill => Kind::PgKill,
            Fault::RedisKill => Kind::RedisKill,
            Fault::RedisLoss => Kind::RedisLoss,
            Fault::ReadOnly { .. } => Kind::ReadOnly,
            Fault::Migration { .. } => Kind::Migration,
            Fault::BadOutboxRow { .. } => Kind::BadOutboxRow,
            Fault::Xdel { .. } => Kind::Xdel,
            Fault::WrongTypeDeadKey { .. } => Kind::WrongTypeDeadKey,
            Fault::DiskFull { .. } => Kind::DiskFull,
            Fault::TypeChange { .. } => Kind::TypeChange,
            Fault::FrozenReplica { .. } => Kind::FrozenReplica,
            Fault::RedisOom { .. } => Kind::RedisOom,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    pub at_ms: u64,
    pub fault: Fault,
}

/// Everything one seed starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TortureInput {
    pub seed: u64,
    pub scenario: Scenario,
    /// The simulator's plan for the same seed and profile.
    pub plan: FaultPlan,
    /// Torture's own faults, in time order, all before `plan.heal_at_ms`.
    pub timed: Vec<Timed>,
}

impl TortureInput {
    /// The scenario and plans `seed` fixes for `profile`, with `without`
    /// taken out.
    pub fn from_seed(seed: u64, profile: Profile, orders: usize, without: &[AnyKind]) -> TortureInput {
        let sim = input_from_seed(seed, profile, orders, &SimSettings::default());
        let mut plan = sim.plan;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7047_7e7e_7047_7e7e);
        let mut timed = generate(&mut rng, profile, plan.heal_at_ms);
        for kind in without {
            match *kind {
                AnyKind::Sim(k) => plan = plan.without(k),
                AnyKind::Torture(k) => timed.retain(|t| t.fault.kind() != k),
            }
        }
        TortureInput {
            seed,
            scenario: sim.scenario,
            plan,
            timed,
        }
    }
}

fn service(rng: &mut ChaCha8Rng) -> Service {
    Service::ALL[rng.random_range(0..Service::ALL.len())]
}

/// Torture's faults for `profile`, each at least once per seed (light) or
/// up to twice (heavy), at random moments before `heal_at_ms`. A window
/// (read-only, wrong-type key, out of memory) ends before the heal.
fn generate(rng: &mut ChaCha8Rng, profile: Profile, heal_at_ms: u64) -> Vec<Timed> {
    let (most, every_kind) = match profile {
        Profile::None => return Vec::new(),
        Profile::Light => (1, true),
        Profile::Heavy => (2, true),
        Profile::Swarm => (2, false),
    };
    let mut timed = Vec::new();
    for kind in Kind::ALL {
        if !every_kind && !rng.random_bool(0.5) {
            continue;
        }
        for _ in 0..rng.random_range(1..=most) {
            let at_ms = rng.random_range(0..heal_at_ms / 2);
            let window = heal_at_ms - at_ms;
            let fault = match kind {
                Kind::PgKill => Fault::PgKill,
                Kind::RedisKill => Fault::RedisKill,
                Kind::RedisLoss => Fault::RedisLoss,
                // Long enough for a delivery to exhaust its budget
                // (deliveries_max visibility timeouts).
                Kind::ReadOnly => Fault::ReadOnly {
                    len_ms: rng.random_range(window / 2..window),
                },
                Kind::Migration => Fault::Migration {
                    service: service(rng),
                },
                Kind::BadOutboxRow => Fault::BadOutboxRow {
                    service: service(rng),
                    garbage: rng.random_bool(0.5),
                },
                Kind::Xdel => Fault::Xdel {
                    service: service(rng),
                },
                Kind::WrongTypeDeadKey => Fault::WrongTypeDeadKey {
                    service: service(rng),
                    len_ms: rng.random_range(window / 4..window / 2),
                },
                // Long enough for a delivery to exhaust its budget, as
                // read-only.
                Kind::DiskFull => Fault::DiskFull {
                    service: service(rng),
                    len_ms: rng.random_range(window / 2..window),
                },
                Kind::TypeChange => Fault::TypeChange {
                    service: service(rng),
                },
                // Frozen for longer than every timeout of the seed's pools
                // (idle in transaction 1 s, statement 2 s, once scaled).
                Kind::FrozenReplica => Fault::FrozenReplica {
                    service: service(rng),
                    len_ms: rng.random_range(window * 3 / 4..window),
                },
                Kind::RedisOom => Fault::RedisOom {
                    len_ms: rng.random_range(window / 4..window / 2),
                },
            };
            timed.push(Timed { at_ms, fault });
        }
    }
    timed.sort_by_key(|t| t.at_ms);
    timed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_draws_the_same_input_again() {
        let a = TortureInput::from_seed(7, Profile::Heavy, 20, &[]);
        let b = TortureInput::from_seed(7, Profile::Heavy, 20, &[]);
        assert_eq!(a, b);
    }

    #[test]
    fn every_fault_comes_before_the_heal_and_without_removes_its_kind() {
        for seed in 0..50 {
            let input = TortureInput::from_seed(seed, Profile::Heavy, 20, &[]);
            for t in &input.timed {
                let end = match t.fault {
                    Fault::ReadOnly { len_ms }
                    | Fault::WrongTypeDeadKey { len_ms, .. }
                    | Fault::DiskFull { len_ms, .. }
                    | Fault::FrozenReplica { len_ms, .. }
                    | Fault::RedisOom { len_ms } => t.at_ms + len_ms,
                    _ => t.at_ms,
                };
                assert!(
                    end < input.plan.heal_at_ms,
                    "seed {seed}: {t:?} ends after the heal"
                );
            }
            for kind in Kind::ALL {
                assert!(
                    input.timed.iter().any(|t| t.fault.kind() == kind),
                    "heavy has every kind"
                );
            }
            let without = parse_kinds("issue-17,crash").expect("known kinds");
            let input = TortureInput::from_seed(seed, Profile::Heavy, 20, &without);
            assert!(input
                .timed
                .iter()
                .all(|t| !Kind::ISSUE_17.contains(&t.fault.kind())));
            assert!(
                input.plan.timed.is_empty()
                    || input
                        .plan
                        .timed
                        .iter()
                        .all(|t| !matches!(t.fault, crate::faults::Scheduled::Crash { .. }))
            );
        }
    }

    #[test]
    fn unknown_kinds_are_refused_with_the_known_ones() {
        let e = parse_kinds("xdel,nope").unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("wrong-type-dead-key"), "{e}");
    }
}
