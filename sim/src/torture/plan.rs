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

use super::databases::Layout;
use crate::faults::{FaultKind, FaultPlan, Profile};
use crate::run::{input_from_seed, SimSettings};

/// The fault kinds torture adds to the simulator's [`FaultKind`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `pg_terminate_backend` of every backend of the seed's database
    /// (split layout: of one service's database).
    PgKill,
    /// `CLIENT KILL` of every connection of the seed's Redis.
    RedisKill,
    /// The private redis-server restarted without persistence: all data
    /// lost (with `--redis-url`: every key of the seed's prefix deleted).
    RedisLoss,
    /// The database (split layout: one service's) read-only for a while
    /// (issue 17).
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
    /// Split layout only: one service's database refuses connections for
    /// a while (`ALLOW_CONNECTIONS false`, its backends terminated) while
    /// the others serve (issue 25).
    DbDown,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
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
        Kind::DbDown,
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
            Kind::DbDown => "db-down",
        }
    }

    /// Whether a seed of `layout` draws this kind (`db-down` needs a
    /// database per service: in the single layout it would take every
    /// service down, which the simulator's outages already cover).
    pub fn drawn_in(self, layout: Layout) -> bool {
        self != Kind::DbDown || layout == Layout::Split
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
    /// `service`: whose database (split layout; None in the single one).
    PgKill {
        service: Option<Service>,
    },
    RedisKill,
    RedisLoss,
    ReadOnly {
        service: Option<Service>,
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
    DbDown {
        service: Service,
        len_ms: u64,
    },
}

impl Fault {
    pub fn kind(&self) -> Kind {
        match self {
            Fault::PgKill { .. } => Kind::PgKill,
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
            Fault::DbDown { .. } => Kind::DbDown,
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
    /// The scenario and plans `seed` fixes for `profile` and `layout`,
    /// with `without` taken out. The single layout draws what it drew
    /// before the split layout existed.
    pub fn from_seed(
        seed: u64,
        profile: Profile,
        orders: usize,
        without: &[AnyKind],
        layout: Layout,
    ) -> TortureInput {
        let sim = input_from_seed(seed, profile, orders, &SimSettings::default());
        let mut plan = sim.plan;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7047_7e7e_7047_7e7e);
        let mut timed = generate(&mut rng, profile, plan.heal_at_ms, layout);
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
/// (read-only, wrong-type key, out of memory, db-down) ends before the
/// heal. In the split layout pg-kill and read-only name a service (whose
/// database they strike); in the single layout they draw nothing more, so
/// a seed draws what it drew before.
fn generate(rng: &mut ChaCha8Rng, profile: Profile, heal_at_ms: u64, layout: Layout) -> Vec<Timed> {
    let split = layout == Layout::Split;
    let (most, every_kind) = match profile {
        Profile::None => return Vec::new(),
        Profile::Light => (1, true),
        Profile::Heavy => (2, true),
        Profile::Swarm => (2, false),
    };
    let mut timed = Vec::new();
    for kind in Kind::ALL.into_iter().filter(|k| k.drawn_in(layout)) {
        if !every_kind && !rng.random_bool(0.5) {
            continue;
        }
        for _ in 0..rng.random_range(1..=most) {
            let at_ms = rng.random_range(0..heal_at_ms / 2);
            let window = heal_at_ms - at_ms;
            let fault = match kind {
                Kind::PgKill => Fault::PgKill {
                    service: split.then(|| service(rng)),
                },
                Kind::RedisKill => Fault::RedisKill,
                Kind::RedisLoss => Fault::RedisLoss,
                // Long enough for a delivery to exhaust its budget
                // (deliveries_max visibility timeouts).
                Kind::ReadOnly => {
                    let service = split.then(|| service(rng));
                    Fault::ReadOnly {
                        service,
                        len_ms: rng.random_range(window / 2..window),
                    }
                }
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
                // Short: a commit of unknown outcome on the database that
                // went down makes the witness read that database again,
                // which it tries for 5 s (`witness.rs`); 1-2 s once scaled
                // (the driver holds it up to 2 s more in a lull), and
                // within the window before the heal.
                Kind::DbDown => Fault::DbDown {
                    service: service(rng),
                    len_ms: rng.random_range(2_000..4_000).min(window - 1),
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
        let a = TortureInput::from_seed(7, Profile::Heavy, 20, &[], Layout::Single);
        let b = TortureInput::from_seed(7, Profile::Heavy, 20, &[], Layout::Single);
        assert_eq!(a, b);
    }

    #[test]
    fn every_fault_comes_before_the_heal_and_without_removes_its_kind() {
        for (seed, layout) in (0..50).flat_map(|s| Layout::ALL.map(|l| (s, l))) {
            let input = TortureInput::from_seed(seed, Profile::Heavy, 20, &[], layout);
            for t in &input.timed {
                let end = match t.fault {
                    Fault::ReadOnly { len_ms, .. }
                    | Fault::DbDown { len_ms, .. }
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
                assert_eq!(
                    input.timed.iter().any(|t| t.fault.kind() == kind),
                    kind.drawn_in(layout),
                    "heavy has every kind of its layout ({layout}, {kind})"
                );
            }
            let without = parse_kinds("issue-17,crash").expect("known kinds");
            let input = TortureInput::from_seed(seed, Profile::Heavy, 20, &without, layout);
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

    /// The split layout leaves the single layout's draws as they were: a
    /// seed draws the same faults (pg-kill and read-only without a target)
    /// whether or not the split layout exists.
    #[test]
    fn the_split_layout_names_targets_and_the_single_draws_none() {
        for seed in 0..20 {
            let single = TortureInput::from_seed(seed, Profile::Heavy, 20, &[], Layout::Single);
            let split = TortureInput::from_seed(seed, Profile::Heavy, 20, &[], Layout::Split);
            assert_eq!(
                single.plan, split.plan,
                "the simulator's plan does not depend on the layout"
            );
            for t in &single.timed {
                assert!(matches!(
                    t.fault,
                    Fault::PgKill { service: None }
                        | Fault::ReadOnly { service: None, .. }
                        | Fault::RedisKill
                        | Fault::RedisLoss
                        | Fault::Migration { .. }
                        | Fault::BadOutboxRow { .. }
                        | Fault::Xdel { .. }
                        | Fault::WrongTypeDeadKey { .. }
                        | Fault::DiskFull { .. }
                        | Fault::TypeChange { .. }
                        | Fault::FrozenReplica { .. }
                        | Fault::RedisOom { .. }
                ));
            }
            for t in &split.timed {
                assert!(!matches!(
                    t.fault,
                    Fault::PgKill { service: None } | Fault::ReadOnly { service: None, .. }
                ));
            }
        }
    }

    #[test]
    fn unknown_kinds_are_refused_with_the_known_ones() {
        let e = parse_kinds("xdel,nope").unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("wrong-type-dead-key"), "{e}");
    }
}
