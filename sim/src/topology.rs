//! Which processes a simulated deployment runs, and on which turmoil host
//! each service replica lives.
//!
//! Production may run every service in one process (`purchase-saga serve
//! --services all --replicas N`, `src/cli/serve.rs`) or one service per
//! process; a crash takes the whole process down, a partition cuts the
//! whole process off the bus. A [`Topology`] groups the six services into
//! processes; replica index `i` of every group is one process, one turmoil
//! host. One service per group is the simulator's original deployment
//! (14 hosts with 2 replicas); all six in one group is `--services all`
//! (4 hosts). Fewer hosts is less turmoil stepping per simulated tick.
//!
//! A seed draws its topology from its own random stream
//! ([`Topology::draw`], called by `run::input_from_seed`), so the
//! scenario's and the fault plan's draws keep their values whatever is
//! appended to either. The faults still name replicas (`order-r1`); the
//! driver maps each to its process ([`Topology::process_of`]).

use std::fmt;

use purchase_saga::domain::Service;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::faults::{Profile, Replica};

/// The services each process runs: every service in exactly one group.
/// Serialised (corpus entries keep their topology) as the list of groups;
/// a stored list that misses or repeats a service is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Vec<Vec<Service>>", try_from = "Vec<Vec<Service>>")]
pub struct Topology {
    groups: Vec<Vec<Service>>,
}

impl From<Topology> for Vec<Vec<Service>> {
    fn from(topology: Topology) -> Vec<Vec<Service>> {
        topology.groups
    }
}

impl TryFrom<Vec<Vec<Service>>> for Topology {
    type Error = String;

    fn try_from(groups: Vec<Vec<Service>>) -> Result<Topology, String> {
        let mut all: Vec<Service> = groups.iter().flatten().copied().collect();
        all.sort();
        let mut every = Service::ALL.to_vec();
        every.sort();
        if all != every {
            return Err(format!(
                "a topology runs every service in exactly one process, not {groups:?}"
            ));
        }
        Ok(Topology::from_groups(groups))
    }
}

/// One simulated process: the services of a group at one replica index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub services: Vec<Service>,
    pub index: u8,
}

impl Process {
    /// The replica that names the process in the driver's maps: its first
    /// service's. With one service per process it is the process itself,
    /// so the original deployment's maps and trace keep their order.
    pub fn lead(&self) -> Replica {
        Replica {
            service: self.services[0],
            index: self.index,
        }
    }

    /// The replicas the process runs, in service order.
    pub fn replicas(&self) -> impl Iterator<Item = Replica> + '_ {
        self.services.iter().map(|&service| Replica {
            service,
            index: self.index,
        })
    }

    /// The turmoil host name: the replica's own (`payment-r1`) for one
    /// service, `all-r1` for all six, else the services joined by `+`
    /// (`order+payment-r1`).
    pub fn host(&self) -> String {
        match self.services.len() {
            1 => self.lead().host(),
            n if n == Service::ALL.len() => format!("all-r{}", self.index),
            _ => {
                let slugs: Vec<&str> = self.services.iter().map(|s| s.slug()).collect();
                format!("{}-r{}", slugs.join("+"), self.index)
            }
        }
    }
}

impl Topology {
    /// One process per service replica: the original deployment.
    pub fn per_service() -> Topology {
        Topology::from_groups(Service::ALL.into_iter().map(|s| vec![s]).collect())
    }

    /// Every service in one process per replica (`serve --services all`).
    pub fn all_in_one() -> Topology {
        Topology::from_groups(vec![Service::ALL.to_vec()])
    }

    /// `groups` in a canonical order: services within a group and groups by
    /// their first service in `Service::ALL` order.
    pub fn from_groups(groups: Vec<Vec<Service>>) -> Topology {
        let rank = |s: &Service| Service::ALL.iter().position(|x| x == s).expect("a service");
        let mut groups: Vec<Vec<Service>> = groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(|mut g| {
                g.sort_by_key(rank);
                g
            })
            .collect();
        groups.sort_by_key(|g| rank(&g[0]));
        let mut all: Vec<Service> = groups.iter().flatten().copied().collect();
        all.sort_by_key(rank);
        assert_eq!(all, Service::ALL.to_vec(), "every service in exactly one process");
        Topology { groups }
    }

    /// The topology of a seed of `profile`: one in four the original one
    /// process per service; otherwise the services spread over one to
    /// three processes at random (one is `serve --services all`). `none`
    /// keeps the original (no crash or partition to tell them apart).
    pub fn draw(rng: &mut impl Rng, profile: Profile) -> Topology {
        if profile == Profile::None || rng.random_range(0..4) == 0 {
            return Topology::per_service();
        }
        let processes = rng.random_range(1..=3usize);
        let mut groups = vec![Vec::new(); processes];
        for service in Service::ALL {
            groups[rng.random_range(0..processes)].push(service);
        }
        Topology::from_groups(groups)
    }

    /// The topology `SAGA_SIM_TOPOLOGY` forces on every seed of a sweep
    /// (`per-service` or `all`), if set: for comparing a sweep's bug
    /// finding and speed with the drawn topologies against one layout.
    pub fn forced() -> Option<Topology> {
        let name = std::env::var("SAGA_SIM_TOPOLOGY").ok()?;
        match name.as_str() {
            "per-service" => Some(Topology::per_service()),
            "all" => Some(Topology::all_in_one()),
            other => panic!("SAGA_SIM_TOPOLOGY={other}: expected per-service or all"),
        }
    }

    /// True for the original deployment.
    pub fn is_per_service(&self) -> bool {
        self.groups.len() == Service::ALL.len()
    }

    /// Every process with `replicas` replicas of each group, in host order
    /// (group by group, each group's replicas by index).
    pub fn processes(&self, replicas: u8) -> Vec<Process> {
        self.groups
            .iter()
            .flat_map(|g| {
                (0..replicas).map(move |index| Process {
                    services: g.clone(),
                    index,
                })
            })
            .collect()
    }

    /// The process `replica` runs in.
    pub fn process_of(&self, replica: Replica) -> Process {
        let group = self
            .groups
            .iter()
            .find(|g| g.contains(&replica.service))
            .expect("every service is in a group");
        Process {
            services: group.clone(),
            index: replica.index,
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::per_service()
    }
}

impl fmt::Display for Topology {
    /// The groups, e.g. `order+payment | user | inventory+item+notification`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| g.iter().map(|s| s.slug()).collect::<Vec<_>>().join("+"))
            .collect();
        f.write_str(&groups.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn per_service_hosts_are_the_replicas_own() {
        let t = Topology::per_service();
        let hosts: Vec<String> = t.processes(2).iter().map(Process::host).collect();
        let replicas: Vec<String> = Service::ALL
            .into_iter()
            .flat_map(|service| (0..2).map(move |index| Replica { service, index }.host()))
            .collect();
        assert_eq!(hosts, replicas);
        assert!(t.is_per_service());
    }

    #[test]
    fn all_in_one_is_one_host_per_replica_index() {
        let t = Topology::all_in_one();
        let hosts: Vec<String> = t.processes(2).iter().map(Process::host).collect();
        assert_eq!(hosts, ["all-r0", "all-r1"]);
        let payment = Replica {
            service: Service::Payment,
            index: 1,
        };
        assert_eq!(t.process_of(payment).host(), "all-r1");
        assert_eq!(t.process_of(payment).replicas().count(), 6);
    }

    #[test]
    fn every_drawn_topology_places_every_service_once_and_the_draw_varies() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let t = Topology::draw(&mut rng, Profile::Heavy);
            for p in t.processes(2) {
                for r in p.replicas() {
                    assert_eq!(t.process_of(r), p);
                }
            }
            seen.insert(t.to_string());
        }
        assert!(seen.contains(&Topology::per_service().to_string()));
        assert!(seen.contains(&Topology::all_in_one().to_string()));
        assert!(seen.len() > 10, "the draw spreads services: {seen:?}");
    }

    #[test]
    fn none_keeps_one_process_per_service() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        assert!((0..20).all(|_| Topology::draw(&mut rng, Profile::None).is_per_service()));
    }
}
