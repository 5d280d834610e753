//! Running many seeds: the options a sweep's seeds share, the replay
//! command of one seed, and the thread pool with its progress bar that
//! `saga-sim run`, `bench`, `mutants`, `torture` and `hunt` share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use crate::progress::Progress;
use crate::run::{input_from_seed, run, SimInput, SimOutcome, SimSettings};
use crate::{mutants, FaultKind, Profile};

/// The commit the binary was built from, for `--version`, replay commands
/// and the corpus (`-dirty` when the work tree had uncommitted changes;
/// see `build.rs`).
pub fn commit() -> String {
    COMMIT.to_string()
}

/// [`commit`] as a constant.
pub const COMMIT: &str = env!("SAGA_SIM_COMMIT");

/// What every seed of a command shares.
#[derive(Clone)]
pub struct Options {
    pub faults: Profile,
    pub orders: usize,
    pub mutant: Option<String>,
    pub without: Option<FaultKind>,
}

impl Options {
    /// The command that replays `seed`.
    pub fn replay_command(&self, seed: u64) -> String {
        let features = if self.mutant.is_some() {
            " --features mutants"
        } else {
            ""
        };
        let mut flags = String::new();
        if let Some(m) = &self.mutant {
            flags += &format!(" --mutant {m}");
        }
        if let Some(k) = self.without {
            flags += &format!(" --without {k}");
        }
        format!(
            "cargo run -p purchase-saga-sim --release{features} -- replay --seed {seed} --faults {} --orders {}{flags} --trace",
            self.faults.name(),
            self.orders
        )
    }

    pub fn input(&self, seed: u64) -> SimInput {
        let mut input = input_from_seed(seed, self.faults, self.orders, &SimSettings::default());
        if let Some(kind) = self.without {
            input.plan = input.plan.without(kind);
        }
        if let Some(topology) = crate::topology::Topology::forced() {
            input.topology = topology;
        }
        input
    }

    /// Runs one seed with the (validated) mutant.
    pub fn run_seed(&self, seed: u64) -> SimOutcome {
        self.run_input(&self.input(seed))
    }

    /// Runs `input` (drawn or stored) with the (validated) mutant.
    pub fn run_input(&self, input: &SimInput) -> SimOutcome {
        mutants::with(self.mutant.as_deref(), || run(input, &SimSettings::default()))
            .expect("the mutant name was validated")
    }
}

/// Runs `f` on seeds `a..b` on `jobs` threads with progress
/// (`progress.rs`); results
/// in seed order. `failed` marks a result in the bar's message.
pub fn par_seeds<T: Send + 'static>(
    a: u64,
    b: u64,
    jobs: usize,
    f: Arc<dyn Fn(u64) -> T + Send + Sync>,
    failed: impl Fn(&T) -> bool,
) -> Vec<(u64, T)> {
    let mut progress = Progress::seeds(b - a);
    let next = Arc::new(AtomicU64::new(a));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (next, tx, f) = (next.clone(), tx.clone(), f.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= b || tx.send((seed, f(seed))).is_err() {
                    return;
                }
            })
        })
        .collect();
    drop(tx);
    let mut results = Vec::new();
    for (seed, r) in rx {
        progress.inc(seed, failed(&r));
        results.push((seed, r));
    }
    for w in workers {
        w.join().expect("a worker thread panicked");
    }
    progress.finish();
    results.sort_by_key(|(seed, _)| *seed);
    results
}

/// Runs seeds `a..b` on `jobs` threads; outcomes in seed order.
pub fn sweep(a: u64, b: u64, jobs: usize, options: &Options) -> Vec<SimOutcome> {
    let options = options.clone();
    par_seeds(
        a,
        b,
        jobs,
        Arc::new(move |seed| options.run_seed(seed)),
        |o: &SimOutcome| !o.violations.is_empty(),
    )
    .into_iter()
    .map(|(_, o)| o)
    .collect()
}
