//! One torture seed from start to verdict: servers up, opening rows seeded,
//! replicas and client started, the plan applied on the (scaled) clock
//! until the heal, then quiescence within the bound, then the checks; the
//! database dropped and the private Redis stopped whatever happened.
//!
//! A fault counts only by its effect: a pg-kill that terminated a backend,
//! a CLIENT KILL that killed a connection, a database that new connections
//! find read-only, a redis-server with a new `run_id`. A planned fault
//! that does not take effect (within [`EFFECT_TRIES_MAX`] tries, for the
//! kills) is a finding ([`checks::FAULT_NOT_INJECTED`]), not a log line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use purchase_saga::adapters::postgres::PgConfig;
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::domain::Service;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;

use crate::client::RequestLog;
use crate::faults::{ClientCrashPoint, CrashPoint, FaultKind, Replica, Scheduled};
use crate::finding::Finding;
use crate::run::{replicas, SimSettings};

use super::checks::{self, Checker, Expected, TortureObserver};
use super::databases::{Layout, SeedDbs};
use super::pg_faults;
use super::plan::{Fault, Kind, TortureInput};
use super::redis_target::{RedisTarget, Xdel, XDEL_CONSUMER};
use super::replicas::{self as replica, Wiring};
use super::state::{Shared, Swallowed};
use super::streams::StreamWatch;
use super::witness::Witness;
use super::{runtime_config, TortureOutcome, TortureSettings, TIME_DIVISOR};

/// Tries of a kill that found nothing to kill, [`EFFECT_RETRY_PAUSE`]
/// apart, before it is a finding: 3 s, as long as the clients take to
/// come back after a Redis restart (the connection managers' backoff) or
/// the pools after a pg-kill.
pub const EFFECT_TRIES_MAX: u32 = 60;
const EFFECT_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a Redis loss holds every client's writes while torture reads
/// the streams (the restart ends it sooner).
const LOSS_PAUSE_MS: u64 = 5_000;
/// An xdel whose service had no delivery this long takes any service's.
const XDEL_WIDEN_AFTER_MS: u64 = 1_000;
/// How long past the plan's heal a waiting xdel may hold it back.
const XDEL_HEAL_GRACE_MS: u64 = 3_000;
/// How often the split layout's routing is checked in `pg_stat_activity`.
const ROUTING_CHECK_MS: u64 = 500;
/// How long a `db-down` window is held past its planned end while no
/// other database has committed since it opened (a lull: the others had
/// nothing to do for a moment). With the planned 1-2 s, an outage stays
/// under the witness's 5 s of read tries (`witness.rs`).
const DB_DOWN_HOLD_MAX_MS: u64 = 2_000;
/// How long a `db-down` waits when it comes inside a `redis-oom` window
/// (which stops every service at once, so the others could not serve) or
/// while an xdel is under way.
const DB_DOWN_RETRY_MS: u64 = 100;

/// An open `db-down` window (see [`Run::take_db_down`]).
struct DbDown {
    service: Service,
    /// The services of the other databases, and their commits and other
    /// writes when the window opened ([`Witness::commits_of`]).
    others: Vec<Service>,
    commits_before: (u64, u64),
    /// The server's answer to a new connection.
    refused: String,
    /// When the window ends.
    until_ms: u64,
}

/// Runs one seed on a runtime of its own (two worker threads).
pub fn run_seed(settings: &TortureSettings, seed: u64) -> TortureOutcome {
    let input = TortureInput::from_seed(
        seed,
        settings.profile,
        settings.orders,
        &settings.without,
        settings.layout,
    );
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // The seed's Redis is up before its clock starts: a cluster takes
    // about a second to form, which the plan's first moments must not
    // spend.
    static PREFIXES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = format!(
        "torture:{seed}:{}:{}",
        std::process::id(),
        PREFIXES.fetch_add(1, Ordering::SeqCst)
    );
    let redis = RedisTarget::start(settings.redis_url.as_deref(), settings.redis, &prefix);
    let shared = Arc::new(Shared::new(
        input.plan.clone(),
        ChaCha8Rng::seed_from_u64(seed ^ 0x7e57_7e57_7e57_7e57),
    ));
    let result =
        redis.and_then(|redis| rt.block_on(run_async(settings, &input, shared.clone(), redis, prefix)));
    if let Err(e) = result {
        shared.found(Finding::new(checks::SETUP, format!("seed {seed}"), e));
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    outcome(&input, &shared, started.elapsed())
}

/// The scaled plan's moments, in ms since the seed started.
fn scaled(plan_ms: u64) -> u64 {
    plan_ms / TIME_DIVISOR
}

/// The effect of a partition that proves the cut-off replica's heartbeat
/// stopped: another replica took over entries it held when cut off.
pub const PARTITION_TAKEOVER: &str = "partition-takeover";

/// Entries of one consumer a partition effect check looks at, at most.
const CUT_PENDING_MAX: usize = 100;

/// What a scheduled action does when its time comes.
enum Action {
    /// Notes the entries a replica just cut off holds unacknowledged.
    NoteCutPending(Replica),
    Torture(Fault),
    Restart(Replica),
    Reconnect(Replica),
    RestartClient,
    /// The plan's `broker-loss` (its downtime is the restart's own).
    BrokerLoss,
    /// The end of a read-only window on this service's database (None:
    /// the one database).
    ReadOnlyOff(Option<Service>),
    FreeDeadKey(Service),
    FreeDisk,
    ResumeFrozen,
    /// The end of a `redis-oom` window.
    RedisOomOff,
}

/// The running seed: servers, replicas, the schedule, what to check.
struct Run {
    shared: Arc<Shared>,
    dbs: SeedDbs,
    redis: RedisTarget,
    checker: Checker,
    wiring: Wiring,
    up: BTreeMap<Replica, JoinHandle<()>>,
    /// Actions by due time (ms since start), in insertion order per time.
    actions: BTreeMap<u64, Vec<Action>>,
    expected: Vec<Expected>,
    last_loss_ms: Option<u64>,
    migrations: u64,
    /// The disk-full fault's full tablespace, until its window ends;
    /// declared after `db` so that the database is dropped first.
    small_disk: Option<pg_faults::SmallDisk>,
    /// The frozen-replica fault's holder, until it resumes.
    frozen: Option<pg_faults::FrozenHolder>,
    /// The open `db-down` window, until [`Run::end_db_down`].
    down: Option<DbDown>,
    /// The databases read-only now (by name).
    read_only: std::collections::BTreeSet<String>,
    /// When the split layout's routing was last checked, and the replica
    /// connections seen in all by those checks.
    routing_checked_ms: u64,
    routing_connections: u64,
    /// Type changes and disk-full faults so far (names and directions).
    pg_faults: u64,
    /// Per replica cut off the bus: when, and the entries it held then.
    cut_pending: BTreeMap<Replica, (u64, Vec<String>)>,
    /// While `redis-oom` windows are open: the memory settings from before
    /// the first, restored when the last closes (windows overlap).
    oom_before: Option<(super::redis_faults::MemorySettings, u32)>,
    /// When the oldest swallow still waiting for a delivery was asked.
    swallow_since_ms: Option<u64>,
    witness: Arc<Witness>,
    watch: StreamWatch,
    client: Client,
}

/// The client process and what survives its crashes.
struct Client {
    orders: Vec<purchase_saga::workload::OrderSpec>,
    log: Arc<RequestLog>,
    start: tokio::time::Instant,
    give_up: Instant,
    done: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

async fn run_async(
    settings: &TortureSettings,
    input: &TortureInput,
    shared: Arc<Shared>,
    redis: RedisTarget,
    prefix: String,
) -> Result<(), String> {
    let dbs = SeedDbs::create(
        &settings.database_url,
        input.seed,
        settings.layout,
        settings.misroute,
    )
    .await?;
    let map = dbs.map();
    let seeding = map.routes(&PgConfig::default()).await?;
    let seeded = seeding
        .seed_rows(&input.scenario.opening_rows())
        .await
        .map_err(|e| format!("seeding the opening rows: {e}"));
    seeding.close().await;
    seeded?;

    let mut config = runtime_config(&input.plan);
    config.dispatch = crate::config::dispatch_for(input.seed);
    let redis_config = RedisConfig {
        prefix,
        visibility_timeout: Duration::from_millis(500),
        block: Duration::from_millis(50),
        command_timeout: Duration::from_secs(2),
        // Under the visibility timeout, as production's 2 s is under its
        // 30 s: a replica cut off or crashed loses its entries to the
        // heartbeat takeover, not to the timeout.
        heartbeat_ttl: Duration::from_millis(250),
        ..RedisConfig::default()
    };
    // Four connections in the one database; two in each of three.
    let witness_pool = PgConfig {
        connections_max: if settings.layout == Layout::Single { 4 } else { 2 },
        acquire_timeout: Duration::from_secs(5),
        ..PgConfig::default()
    };
    let witness = Arc::new(Witness::new(shared.clone(), map.routes(&witness_pool).await?).await?);
    let checker = Checker {
        dbs: map.clone(),
        bus: RedisBus::connect(&redis.url(), redis_config.clone())
            .await
            .map_err(|e| e.to_string())?,
        redis_url: redis.url(),
        redis: redis_config.clone(),
        injected_rows: Default::default(),
    };
    let observer = Arc::new(TortureObserver::new(
        shared.clone(),
        config.redrive,
        SimSettings::default().replicas,
    ));
    let wiring = Wiring {
        shared: shared.clone(),
        observer,
        dbs: map,
        redis_url: redis.url(),
        redis: redis_config,
        pg: PgConfig {
            connections_max: 2,
            acquire_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(2),
            lock_timeout: Duration::from_millis(300),
            // Far shorter than the run's delivery budget (deliveries_max x
            // visibility timeout, 5 s): a frozen replica's locks come free
            // (the frozen-replica fault freezes for longer than this).
            idle_in_transaction_timeout: Duration::from_secs(1),
        },
        config,
        witness: witness.clone(),
    };
    let heal_at = scaled(input.plan.heal_at_ms);
    let bound = settings.quiescence_bound;
    let give_up = Instant::now() + Duration::from_millis(heal_at) + bound;
    let mut run = Run {
        shared: shared.clone(),
        dbs,
        redis,
        checker,
        wiring,
        up: BTreeMap::new(),
        actions: BTreeMap::new(),
        expected: Vec::new(),
        last_loss_ms: None,
        migrations: 0,
        small_disk: None,
        frozen: None,
        down: None,
        read_only: Default::default(),
        routing_checked_ms: 0,
        routing_connections: 0,
        pg_faults: 0,
        cut_pending: BTreeMap::new(),
        oom_before: None,
        swallow_since_ms: None,
        witness,
        watch: StreamWatch::default(),
        client: Client {
            orders: input.scenario.orders.clone(),
            log: Arc::new(RequestLog::default()),
            start: tokio::time::Instant::now(),
            give_up,
            done: Arc::new(AtomicBool::new(false)),
            task: None,
        },
    };
    for r in replicas(&SimSettings::default()) {
        run.up.insert(r, replica::start(&run.wiring, r));
    }
    for t in &input.timed {
        run.schedule(scaled(t.at_ms), Action::Torture(t.fault.clone()));
    }
    run.start_client();
    let client_done = run.client.done.clone();

    let mut next_sim_fault = 0;
    let mut quiescent = false;
    let mut last_check = 0;
    let mut last_xdel_try = 0;
    let mut healed_at = heal_at;
    loop {
        let t = shared.now_ms();
        // An xdel still waiting for a delivery (another fault, e.g. a
        // read-only database, froze the consumers) holds the heal back a
        // little: the deliveries resume when that fault's window ends.
        // So does a Redis Cluster's downtime after each loss.
        let xdel_waits = !shared.swallows_pending().is_empty()
            && t < heal_at + XDEL_HEAL_GRACE_MS + run.redis.downtime_ms();
        if !shared.healed() && t >= heal_at && !xdel_waits {
            run.heal(t).await;
            healed_at = t;
        }
        while !shared.healed()
            && next_sim_fault < input.plan.timed.len()
            && scaled(input.plan.timed[next_sim_fault].at_ms) <= t
        {
            run.apply_sim_fault(&input.plan.timed[next_sim_fault].fault, t);
            next_sim_fault += 1;
        }
        for (r, down_ms) in shared.take_crash_requests() {
            run.crash(r, t, scaled(down_ms));
        }
        if let Some(down_ms) = run.client.log.take_crash_request() {
            run.crash_client(t, scaled(down_ms));
        }
        run.db_down_due(t).await;
        run.due_actions(t).await;
        if settings.layout == Layout::Split && t >= run.routing_checked_ms + ROUTING_CHECK_MS {
            run.routing_checked_ms = t;
            run.check_routing().await;
        }
        // An xdel reads the outboxes first: not while a database is down.
        if run.down.is_none() {
            run.xdel_swallowed(t).await;
        }
        if run.shared.swallows_pending().is_empty() {
            run.swallow_since_ms = None;
        } else {
            if t >= run.swallow_since_ms.unwrap_or(t) + XDEL_WIDEN_AFTER_MS {
                run.shared.widen_swallows();
            }
            if t >= last_xdel_try + 250 {
                last_xdel_try = t;
                run.take_for_waiting_xdels().await;
            }
        }
        if shared.healed() && client_done.load(Ordering::SeqCst) && t >= last_check + 250 {
            last_check = t;
            match run.checker.not_quiescent().await {
                Ok(None) => {
                    quiescent = true;
                    break;
                }
                Ok(Some(why)) if t >= healed_at + bound.as_millis() as u64 => {
                    shared.found(checks::liveness(bound, &why));
                    break;
                }
                Err(e) if t >= healed_at + bound.as_millis() as u64 => {
                    shared.found(checks::liveness(bound, &format!("cannot tell: {e}")));
                    break;
                }
                _ => {}
            }
        }
        if settings.stop_at_first_finding && shared.has_findings() {
            break;
        }
        if !client_done.load(Ordering::SeqCst) && Instant::now() >= give_up + Duration::from_secs(1) {
            shared.found(checks::liveness(bound, "client still placing orders"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if settings.layout == Layout::Split {
        run.check_routing().await;
        shared.set_checked("replica-connections", run.routing_connections);
    }
    if let Some(task) = run.client.task.take() {
        task.abort();
    }
    for (_, handle) in std::mem::take(&mut run.up) {
        handle.abort();
    }
    shared.log(format!(
        "== stopped ({}) ==",
        if quiescent { "quiescent" } else { "NOT quiescent" }
    ));
    if let Err(e) = run.scan_streams().await {
        shared.found(Finding::new(checks::SETUP, "the streams at the end", e));
    }
    shared.log(format!(
        "streams: {} entries read in {} scans",
        run.watch.entries_read, run.watch.scans
    ));
    shared.set_checked("stream-entries", run.watch.entries_read);
    let injected = run
        .checker
        .injected_rows
        .lock()
        .expect("injected rows mutex")
        .clone();
    match run.witness.final_snapshot(&injected).await {
        Ok(last) => {
            checks::check_snapshot(&shared, None, &last);
            checks::check_final(&shared, &last);
            for f in run.client.log.check(&last) {
                shared.found(f);
            }
            shared.set_final(last);
        }
        Err(e) => shared.found(Finding::new(checks::SETUP, "final snapshot", e)),
    }
    checks::check_dead_letters(&shared, &run.checker, &run.expected, run.last_loss_ms).await;
    let mut dead_letters = 0;
    if let Ok(bus) = run.checker.fresh_bus().await {
        for service in Service::ALL {
            dead_letters += bus.dead_letter_count(service).await.unwrap_or(0);
        }
    }
    shared.set_dead_letters(dead_letters);
    if let Some(disk) = run.small_disk.take() {
        if let Err(e) = disk.free().await {
            shared.found(Finding::new(checks::SETUP, "disk-full free at the end", e));
        }
    }
    if let Err(e) = run.redis.note_spread(&shared).await {
        shared.found(Finding::new(checks::SETUP, "the cluster's keys at the end", e));
    }
    run.redis.clean_up().await
}

impl Run {
    fn schedule(&mut self, at: u64, action: Action) {
        self.actions.entry(at).or_default().push(action);
    }

    fn start_client(&mut self) {
        let c = &self.client;
        self.client.task = Some(replica::client(
            &self.wiring,
            c.orders.clone(),
            c.log.clone(),
            c.start,
            c.give_up,
            c.done.clone(),
        ));
    }

    /// Aborts the client now and restarts it after `down_ms` (at the heal
    /// at the latest); counted only while it still had orders to place.
    fn crash_client(&mut self, t: u64, down_ms: u64) {
        let Some(task) = self.client.task.take() else {
            return;
        };
        task.abort();
        if self.client.done.load(Ordering::SeqCst) {
            self.shared.log("== client crashed, done placing ==");
        } else {
            self.shared.fault(FaultKind::ClientCrash, "client crashed");
        }
        self.schedule(t + down_ms.max(1), Action::RestartClient);
    }

    /// A planned fault that did not take effect.
    fn not_injected(&self, kind: impl std::fmt::Display, why: &str) {
        self.shared.found(Finding::new(
            checks::FAULT_NOT_INJECTED,
            format!("{kind} at {}ms", self.shared.now_ms()),
            why,
        ));
    }

    /// Reads what is new on the streams (see `streams.rs`).
    async fn scan_streams(&mut self) -> Result<(), String> {
        let mut conn = self.redis.connection().await?;
        self.watch
            .scan(
                &self.shared,
                self.witness.store(),
                &mut conn,
                &self.checker.bus,
                &self.expected,
            )
            .await
    }

    /// Redis loses every key (torture's `redis-loss`, the plan's
    /// `broker-loss`): writes held, the streams read, the server restarted,
    /// the restart seen in its new `run_id`.
    async fn lose_redis(&mut self, t: u64) -> Result<String, String> {
        let before = self.redis.run_ids().await?;
        if !self.redis.pause_writes(LOSS_PAUSE_MS).await? {
            self.watch.cap_marks(self.witness.store()).await?;
        }
        let lost = match self.scan_streams().await {
            Ok(()) => self.redis.lose_everything().await,
            Err(e) => Err(format!("the streams could not be read before the loss: {e}")),
        };
        if lost.is_err() {
            self.redis.unpause().await;
        }
        let detail = lost?;
        let after = self.redis.run_ids().await?;
        if let Some((node, id)) = before.iter().find(|b| after.contains(b)) {
            return Err(format!(
                "the redis-server at {node} still runs as {id}: not restarted"
            ));
        }
        self.watch.lost();
        self.last_loss_ms = Some(t);
        Ok(detail)
    }

    async fn heal(&mut self, t: u64) {
        for service in self.shared.swallows_pending() {
            self.not_injected(
                Kind::Xdel,
                &format!("no delivery of {service} came to be deleted before the heal"),
            );
        }
        self.client.log.disarm();
        self.shared.heal();
        self.end_db_down().await;
        // Everything down comes back; windows close now.
        let pending: Vec<Action> = std::mem::take(&mut self.actions)
            .into_values()
            .flatten()
            .collect();
        for action in pending {
            match action {
                Action::Torture(_) => {}
                other => self.act(other, t).await,
            }
        }
    }

    fn apply_sim_fault(&mut self, fault: &Scheduled, t: u64) {
        match fault {
            Scheduled::Crash {
                replica,
                point: CrashPoint::Anywhere,
                down_ms,
            } => self.crash(*replica, t, scaled(*down_ms)),
            Scheduled::Crash {
                replica,
                point,
                down_ms,
            } => self.shared.arm(*replica, *point, *down_ms),
            Scheduled::Partition { replica, len_ms } => {
                if !self.shared.is_cut(*replica) {
                    self.shared.set_cut(*replica, true);
                    self.shared.fault(
                        FaultKind::Partition,
                        format!("{replica} cut off the bus for {}ms", scaled(*len_ms)),
                    );
                    self.schedule(t, Action::NoteCutPending(*replica));
                    self.schedule(t + scaled(*len_ms), Action::Reconnect(*replica));
                }
            }
            Scheduled::BrokerLoss { .. } => {
                self.schedule(t, Action::BrokerLoss);
            }
            Scheduled::ClientCrash {
                point: ClientCrashPoint::Anywhere,
                down_ms,
            } => self.crash_client(t, scaled(*down_ms)),
            Scheduled::ClientCrash {
                point: ClientCrashPoint::AfterPlace,
                down_ms,
            } => self.client.log.arm_after_place(*down_ms),
        }
    }

    /// Aborts `replica`'s tasks now (if it is up) and restarts it after
    /// `down_ms` (at the heal at the latest).
    fn crash(&mut self, replica: Replica, t: u64, down_ms: u64) {
        let Some(handle) = self.up.remove(&replica) else {
            return;
        };
        handle.abort();
        let open = self.shared.take_open_tx(replica);
        self.shared.fault(FaultKind::Crash, format!("{replica} crashed"));
        if open > 0 {
            self.shared.fault(
                FaultKind::CrashMidTransaction,
                format!("{replica} lost {open} open transaction(s)"),
            );
        }
        self.schedule(t + down_ms.max(1), Action::Restart(replica));
    }

    async fn due_actions(&mut self, t: u64) {
        let later = self.actions.split_off(&(t + 1));
        let due = std::mem::replace(&mut self.actions, later);
        for action in due.into_values().flatten() {
            self.act(action, t).await;
        }
    }

    async fn act(&mut self, action: Action, t: u64) {
        if let Some(down) = &self.down {
            let down_db = self.dbs.of(down.service).name.clone();
            let disk_db = self
                .small_disk
                .as_ref()
                .map(|d| self.dbs.of(d.service()).name.clone());
            let needs_down_db = match &action {
                Action::ReadOnlyOff(service) => self.dbs.target(*service).name == down_db,
                Action::FreeDisk => disk_db.as_deref() == Some(down_db.as_str()),
                other => touches_databases(other),
            };
            if needs_down_db {
                // Torture's own reads and writes need every database (the
                // streams' check reads every outbox): what would touch
                // them waits for the window to end (past the heal, a
                // fault is not injected at all).
                let after = (down.until_ms + 1).max(t + 50);
                self.schedule(after, action);
                return;
            }
        }
        match action {
            Action::Restart(r) => {
                if !self.up.contains_key(&r) {
                    self.up.insert(r, replica::start(&self.wiring, r));
                    self.shared.log(format!("== {r} restarted =="));
                }
            }
            Action::NoteCutPending(r) => {
                let held = self
                    .checker
                    .bus
                    .pending_of(r.service, &r.host(), CUT_PENDING_MAX)
                    .await
                    .unwrap_or_default();
                self.shared.log(format!(
                    "== {r} cut off holding {} unacknowledged entries ==",
                    held.len()
                ));
                self.cut_pending.insert(r, (t, held));
            }
            Action::RestartClient => {
                if self.client.task.is_none() {
                    self.start_client();
                    self.shared.log("== client restarted ==");
                }
            }
            Action::BrokerLoss if !self.shared.healed() => match self.lose_redis(t).await {
                Ok(detail) => self.shared.fault(FaultKind::BrokerLoss, detail),
                Err(why) => self.not_injected(FaultKind::BrokerLoss, &why),
            },
            Action::BrokerLoss => {}
            Action::Reconnect(r) => {
                self.partition_effect(r).await;
                self.shared.set_cut(r, false);
                self.shared.log(format!("== {r} reconnected =="));
            }
            Action::ReadOnlyOff(service) => match self.dbs.target(service).set_read_only(false).await {
                Ok(n) => {
                    let name = self.dbs.target(service).name.clone();
                    self.read_only_db(service, false).log(format!(
                        "== database {name} writable again ({n} backends terminated) =="
                    ));
                }
                Err(e) => self.shared.found(Finding::new(checks::SETUP, "read-only off", e)),
            },
            Action::FreeDisk => {
                if let Some(disk) = self.small_disk.take() {
                    match disk.free().await {
                        Ok(done) => self.shared.log(format!("== disk space back: {done} ==")),
                        Err(e) => self
                            .shared
                            .found(Finding::new(checks::SETUP, "disk-full free", e)),
                    }
                }
            }
            Action::ResumeFrozen => {
                if let Some(holder) = self.frozen.take() {
                    match holder.resume().await {
                        Ok(done) => self.shared.fault_kind(Kind::FrozenReplica, done),
                        Err(e) => self
                            .shared
                            .found(Finding::new(checks::SETUP, "frozen-replica", e)),
                    }
                }
            }
            Action::FreeDeadKey(service) => {
                let key = self.checker.bus.dead_key(service);
                match self.redis.free_dead_key(&key).await {
                    Ok(()) => self.shared.log(format!("== {key} freed ==")),
                    Err(e) => self.shared.found(Finding::new(checks::SETUP, key, e)),
                }
            }
            Action::RedisOomOff => match self.oom_before.take() {
                Some((settings, open)) if open > 1 => self.oom_before = Some((settings, open - 1)),
                Some((settings, _)) => match super::redis_faults::restore(&settings).await {
                    Ok(()) => self.shared.log("== Redis memory limit restored =="),
                    Err(e) => self.shared.found(Finding::new(checks::SETUP, "redis-oom off", e)),
                },
                None => {}
            },
            Action::Torture(fault) if !self.shared.healed() => self.inject(fault, t).await,
            Action::Torture(_) => {}
        }
    }

    /// Restores the memory settings from before an open redis-oom window
    /// (for torture's own writes); whether there was one to lift.
    async fn lift_oom(&mut self) -> bool {
        let Some((before, _)) = &self.oom_before else {
            return false;
        };
        match super::redis_faults::restore(before).await {
            Ok(()) => true,
            Err(e) => {
                self.shared.log(format!("== redis-oom not lifted: {e} =="));
                false
            }
        }
    }

    /// Puts a lifted redis-oom window back (it ends early, logged, when the
    /// server no longer refuses a write at the new limit).
    async fn put_oom_back(&mut self) {
        let probe = format!("{}:oom-probe", self.checker.redis.prefix);
        match super::redis_faults::start_oom(&self.redis, &probe).await {
            Ok(_) => self.shared.log("== redis-oom back after torture's own writes =="),
            Err(e) => self.shared.log(format!("== redis-oom ended early: {e} ==")),
        }
    }

    /// Terminates the backends of the seed's database (split: of
    /// `service`'s) until one was (see the module docs).
    async fn kill_backends(&self, service: Option<Service>) -> Result<String, String> {
        let db = self.dbs.target(service);
        for _ in 0..EFFECT_TRIES_MAX {
            let n = db.terminate_backends().await?;
            if n > 0 {
                return Ok(format!("{n} backends of {} terminated", db.name));
            }
            tokio::time::sleep(EFFECT_RETRY_PAUSE).await;
        }
        Err(format!("no backend of {} to terminate", db.name))
    }

    /// Opens a `db-down` window on `service`'s database: connections
    /// refused and its backends terminated, seen refused by a new
    /// connection; counted when it ends ([`Run::end_db_down`]).
    async fn take_db_down(&mut self, service: Service, until_ms: u64) -> Result<(), String> {
        if self.dbs.layout != Layout::Split {
            return Err("db-down needs the split layout".into());
        }
        let db = self.dbs.of(service);
        let others: Vec<Service> = Service::ALL
            .into_iter()
            .filter(|s| {
                !db.parts
                    .contains(&purchase_saga::adapters::postgres::Part::Service(*s))
            })
            .collect();
        let commits_before = self.witness.commits_of(&others);
        let terminated = db.set_down(true).await?;
        match db.refuses_connections().await {
            Ok(refused) => {
                self.shared.log(format!(
                    "== db-down: {} ({service}'s database) refuses connections until {until_ms}ms \
                     ({terminated} backends terminated): {refused} ==",
                    db.name
                ));
                self.down = Some(DbDown {
                    service,
                    others,
                    commits_before,
                    refused,
                    until_ms,
                });
                Ok(())
            }
            Err(e) => {
                let _ = db.set_down(false).await;
                Err(e)
            }
        }
    }

    /// Ends the open `db-down` window when it is due: at its planned end
    /// once another database committed since it opened, else up to
    /// [`DB_DOWN_HOLD_MAX_MS`] later; at the heal in any case.
    async fn db_down_due(&mut self, t: u64) {
        let Some(down) = &self.down else {
            return;
        };
        let (commits, writes) = self.witness.commits_of(&down.others);
        let served = commits > down.commits_before.0 || writes > down.commits_before.1;
        if t >= down.until_ms && (served || t >= down.until_ms + DB_DOWN_HOLD_MAX_MS) {
            self.end_db_down().await;
        }
    }

    /// Ends the open `db-down` window: connections allowed again; the
    /// fault counts when some other database committed meanwhile (the
    /// others served), else it is a finding.
    async fn end_db_down(&mut self) {
        let Some(down) = self.down.take() else {
            return;
        };
        let db = self.dbs.of(down.service);
        if let Err(e) = db.set_down(false).await {
            return self.shared.found(Finding::new(checks::SETUP, "db-down end", e));
        }
        self.shared
            .log(format!("== {} accepts connections again ==", db.name));
        let (commits, writes) = self.witness.commits_of(&down.others);
        let (commits, writes) = (commits - down.commits_before.0, writes - down.commits_before.1);
        if commits + writes > 0 {
            self.shared.fault_kind(
                Kind::DbDown,
                format!(
                    "{} ({}'s database) refused new connections ({}); meanwhile the other databases \
                     committed {commits} saga transactions and {writes} other writes (claims, marks, pruning)",
                    db.name, down.service, down.refused
                ),
            );
        } else {
            self.not_injected(
                Kind::DbDown,
                &format!(
                    "no other database committed while {} ({}'s) was down",
                    db.name, down.service
                ),
            );
        }
    }

    /// Notes that the database `service` names (the one database: None)
    /// turned read-only, or writable again; returns the shared state.
    fn read_only_db(&mut self, service: Option<Service>, on: bool) -> &Shared {
        let name = self.dbs.target(service).name.clone();
        if on {
            self.read_only.insert(name);
        } else {
            self.read_only.remove(&name);
        }
        &self.shared
    }

    /// Whether every database but `service`'s is read-only now: a
    /// `db-down` of it then waits (the others could not serve).
    fn others_read_only(&self, service: Service) -> bool {
        let down = &self.dbs.of(service).name;
        self.dbs
            .all()
            .iter()
            .filter(|d| &d.name != down)
            .all(|d| self.read_only.contains(&d.name))
    }

    /// Split layout: no replica (nor the client) holds a connection to a
    /// database other than its service's (`pg_stat_activity`, by the
    /// application name each sets).
    async fn check_routing(&mut self) {
        match self.dbs.misrouted().await {
            Ok((wrong, seen)) => {
                self.routing_connections += seen;
                for (app, datname) in wrong {
                    self.shared.found(Finding::new(
                        checks::MISROUTED,
                        app.clone(),
                        format!("{app} holds a connection to {datname}, another service's database"),
                    ));
                }
            }
            Err(e) => self.shared.log(format!("== routing not checked: {e} ==")),
        }
    }

    /// Kills the private Redis's client connections (on every cluster node)
    /// until one was.
    async fn kill_redis_clients(&self) -> Result<String, String> {
        for _ in 0..EFFECT_TRIES_MAX {
            match self.redis.kill_clients().await? {
                Some(per_node) if per_node.iter().sum::<i64>() > 0 => {
                    let n: i64 = per_node.iter().sum();
                    return Ok(if self.redis.is_cluster() {
                        format!("{n} Redis connections killed, on each cluster node: {per_node:?}")
                    } else {
                        format!("{n} Redis connections killed")
                    });
                }
                Some(_) => tokio::time::sleep(EFFECT_RETRY_PAUSE).await,
                None => {
                    return Err("cannot kill connections on a shared Redis (--redis-url); \
                                run with --without redis-kill"
                        .into())
                }
            }
        }
        Err("no Redis connection to kill".into())
    }

    /// Injects one of torture's own faults; one that cannot take effect
    /// now (e.g. a migration while the database is read-only) is a
    /// finding ([`checks::FAULT_NOT_INJECTED`]).
    async fn inject(&mut self, fault: Fault, t: u64) {
        let kind = fault.kind();
        let done: Result<String, String> = match fault {
            Fault::PgKill { service } => self.kill_backends(service).await,
            Fault::RedisKill => self.kill_redis_clients().await,
            Fault::RedisLoss => self.lose_redis(t).await,
            Fault::ReadOnly { service, len_ms } => match self.dbs.target(service).set_read_only(true).await {
                Ok(n) => {
                    self.read_only_db(service, true);
                    self.schedule(t + scaled(len_ms), Action::ReadOnlyOff(service));
                    match self.dbs.target(service).starts_read_only().await {
                        Ok(true) => Ok(format!(
                            "database {} read-only for {}ms ({n} backends terminated)",
                            self.dbs.target(service).name,
                            scaled(len_ms)
                        )),
                        Ok(false) => Err("a new connection still starts writable".into()),
                        Err(e) => Err(format!("could not see the effect: {e}")),
                    }
                }
                Err(e) => Err(e),
            },
            Fault::Migration { service } => {
                self.migrations += 1;
                self.dbs
                    .of(service)
                    .add_columns(service, self.migrations)
                    .await
                    .map(|sql| sql.join("; "))
            }
            Fault::BadOutboxRow { service, garbage } => {
                match self.dbs.of(service).insert_bad_outbox_row(service, garbage).await {
                    Ok((seq, what)) => {
                        self.checker
                            .injected_rows
                            .lock()
                            .expect("injected rows mutex")
                            .entry(service)
                            .or_default()
                            .insert(seq);
                        Ok(format!("{service} outbox seq {seq}: {what}"))
                    }
                    Err(e) => Err(e),
                }
            }
            Fault::TypeChange { service } => {
                self.pg_faults += 1;
                pg_faults::change_type(self.dbs.of(service), service, self.pg_faults).await
            }
            Fault::DiskFull { service, len_ms } => {
                self.pg_faults += 1;
                if self.small_disk.is_some() {
                    // One full tablespace at a time (one tmpfs mount): a
                    // window drawn inside the open one folds into it,
                    // neither counted as an effect nor a finding.
                    self.shared.log(format!(
                        "== disk-full for {service} folded into the open window =="
                    ));
                    return;
                } else {
                    match pg_faults::SmallDisk::fill(self.dbs.of(service), service, self.pg_faults).await {
                        Ok((disk, detail)) => {
                            self.small_disk = Some(disk);
                            self.schedule(t + scaled(len_ms), Action::FreeDisk);
                            Ok(format!("{detail}; for {}ms", scaled(len_ms)))
                        }
                        Err(e) => Err(e),
                    }
                }
            }
            Fault::FrozenReplica { service, len_ms } => {
                // Counted when it resumes and finds its session ended (the
                // effect), not here.
                let frozen = if self.frozen.is_some() {
                    Err("a holder is frozen already".to_string())
                } else {
                    pg_faults::FrozenHolder::freeze(&self.dbs, &self.wiring.pg, service).await
                };
                match frozen {
                    Ok((holder, detail)) => {
                        self.frozen = Some(holder);
                        self.schedule(t + scaled(len_ms), Action::ResumeFrozen);
                        self.shared
                            .log(format!("== frozen-replica: {detail} for {}ms ==", scaled(len_ms)));
                    }
                    Err(why) => self.shared.log(format!("FAULT {kind} not injected: {why}")),
                }
                return;
            }
            Fault::Xdel { service } => {
                // An entry of the service's group is taken now (one not
                // handed out yet, or one left pending past the visibility
                // timeout), else its next delivery is swallowed; either
                // stays pending, and `xdel_swallowed` deletes it from the
                // stream.
                let stream = self.checker.bus.stream_key(service);
                let group = purchase_saga::adapters::redis::RedisBus::group(service);
                let idle_ms = self.checker.redis.visibility_timeout.as_millis() as u64;
                match self.redis.take_entry(&stream, group, idle_ms).await {
                    Ok(Some((id, deliveries))) => {
                        self.shared
                            .log(format!("== xdel: entry {id} of {service} taken =="));
                        self.shared.swallowed(taken_by_torture(service, id, deliveries));
                    }
                    Ok(None) | Err(_) => {
                        self.swallow_since_ms.get_or_insert(t);
                        self.shared.request_swallow(service);
                        self.shared
                            .log(format!("== xdel: next delivery of {service} swallowed =="));
                    }
                }
                return;
            }
            // Not inside a redis-oom window (which stops every service),
            // nor while an xdel is under way (its deletion reads every
            // outbox first, which waits for the window: its entry would
            // be handed on meanwhile).
            Fault::DbDown { service, .. }
                if self.oom_before.is_some()
                    || self.shared.xdel_waiting()
                    || self.others_read_only(service) =>
            {
                self.schedule(t + DB_DOWN_RETRY_MS, Action::Torture(fault));
                return;
            }
            Fault::DbDown { service, len_ms } => match self.take_db_down(service, t + scaled(len_ms)).await {
                // Counted when the window ends, by its effect.
                Ok(()) => return,
                Err(e) => Err(e),
            },
            Fault::RedisOom { len_ms } => {
                let probe = format!("{}:oom-probe", self.checker.redis.prefix);
                super::redis_faults::start_oom(&self.redis, &probe)
                    .await
                    .map(|(before, detail)| {
                        // An open window's limit is not what to go back to.
                        let (first, open) = self.oom_before.take().unwrap_or((before, 0));
                        self.oom_before = Some((first, open + 1));
                        self.schedule(t + scaled(len_ms), Action::RedisOomOff);
                        format!("out of memory for {}ms: {detail}", scaled(len_ms))
                    })
            }
            Fault::WrongTypeDeadKey { service, len_ms } => {
                let key = self.checker.bus.dead_key(service);
                // Torture's own writes (the string key, the poison entry)
                // are no part of the system under test: an open redis-oom
                // window is lifted for them and put back right after.
                let lifted = self.lift_oom().await;
                let occupied = self.redis.occupy_dead_key(&key).await;
                let poisoned = match occupied {
                    Ok(true) => Some(self.redis.add_poison(&self.checker.bus.stream_key(service)).await),
                    _ => None,
                };
                if lifted {
                    self.put_oom_back().await;
                }
                match occupied {
                    Ok(true) => {
                        self.schedule(t + scaled(len_ms), Action::FreeDeadKey(service));
                        let stream = self.checker.bus.stream_key(service);
                        match poisoned.expect("a poison entry is sent once the key is occupied") {
                            Ok(id) => {
                                self.expected.push(Expected {
                                    service,
                                    entry_id: id.clone(),
                                    check: checks::DEAD_LETTER_KEPT,
                                    what: "an undecodable entry sent while the dead-letter key had the wrong type"
                                        .into(),
                                    at_ms: t,
                                });
                                Ok(format!(
                                    "SET {key} (a string) for {}ms; undecodable entry {id} on {stream}",
                                    scaled(len_ms)
                                ))
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Ok(false) => Err(format!("{key} exists and is no dead-letter stream; left alone")),
                    Err(e) => Err(e),
                }
            }
        };
        match done {
            Ok(detail) => self.shared.fault_kind(kind, detail),
            Err(why) => self.not_injected(kind, &why),
        }
    }

    /// For each xdel still waiting for a delivery, an entry taken from its
    /// service's group (or, once widened, any service's) if one is there
    /// now: one left pending past the visibility timeout (a consumer that
    /// met a read-only store leaves its deliveries so) or not handed out.
    async fn take_for_waiting_xdels(&mut self) {
        let idle_ms = self.checker.redis.visibility_timeout.as_millis() as u64;
        for waiting in self.shared.swallows_pending() {
            let mut candidates = vec![waiting];
            if self.shared.swallows_widened() {
                candidates.extend(Service::ALL.into_iter().filter(|s| *s != waiting));
            }
            for service in candidates {
                let stream = self.checker.bus.stream_key(service);
                let group = purchase_saga::adapters::redis::RedisBus::group(service);
                if let Ok(Some((id, deliveries))) = self.redis.take_entry(&stream, group, idle_ms).await {
                    if self.shared.cancel_swallow(waiting) {
                        self.shared
                            .log(format!("== xdel: entry {id} of {service} taken =="));
                        self.shared.swallowed(taken_by_torture(service, id, deliveries));
                    }
                    break;
                }
            }
        }
    }

    /// Before `replica` is reconnected: counts a [`PARTITION_TAKEOVER`] if
    /// entries it held when cut off are no longer its own (it could not
    /// acknowledge them meanwhile: another replica took them over), unless
    /// Redis lost everything since.
    async fn partition_effect(&mut self, replica: Replica) {
        let Some((cut_at, held)) = self.cut_pending.remove(&replica) else {
            return;
        };
        if held.is_empty() || self.last_loss_ms.is_some_and(|lost| lost >= cut_at) {
            return;
        }
        let Ok(still) = self
            .checker
            .bus
            .pending_of(replica.service, &replica.host(), CUT_PENDING_MAX)
            .await
        else {
            return;
        };
        let taken = held.iter().filter(|id| !still.contains(id)).count();
        if taken > 0 {
            self.shared.effect(
                PARTITION_TAKEOVER,
                format!(
                    "{taken} of the {} entries {replica} held when cut off were taken over",
                    held.len()
                ),
            );
        }
    }

    /// Deletes each swallowed (pending, never to be acknowledged) entry
    /// from its stream, and expects it dead-lettered. Only an entry no
    /// consumer was handed since it was taken or swallowed is deleted (see
    /// [`RedisTarget::xdel_if_untouched`]); otherwise the xdel waits for
    /// another entry.
    async fn xdel_swallowed(&mut self, t: u64) {
        for taken in self.shared.take_swallowed() {
            let (service, id) = (taken.service, taken.entry_id.clone());
            let stream = self.checker.bus.stream_key(service);
            if self
                .expected
                .iter()
                .any(|e| e.service == service && e.entry_id == id)
            {
                // Torture's own poison entry: deleting it too would make
                // one entry two faults; it is left to be dead-lettered.
                self.shared.log(format!(
                    "== xdel: entry {id} of {service} is injected poison; another one =="
                ));
                self.swallow_since_ms.get_or_insert(t);
                self.shared.request_swallow(service);
                continue;
            }
            // What the stream holds is read first: the entry leaves it.
            if let Err(e) = self.scan_streams().await {
                self.not_injected(Kind::Xdel, &format!("the streams could not be read first: {e}"));
                continue;
            }
            let group = purchase_saga::adapters::redis::RedisBus::group(service);
            let why_not = match self.redis.xdel_if_untouched(&stream, group, &taken).await {
                Ok(Xdel::Deleted) => {
                    self.shared.fault_kind(
                        super::plan::Kind::Xdel,
                        format!(
                            "entry {id} of {stream} deleted while pending (held by {}, delivered {} times)",
                            taken.consumer, taken.deliveries
                        ),
                    );
                    self.expected.push(Expected {
                        service,
                        entry_id: id,
                        check: checks::DELETED_ENTRY_DEAD_LETTERED,
                        what: "an entry deleted from the stream while pending".into(),
                        at_ms: t,
                    });
                    continue;
                }
                Ok(Xdel::NotPending) => {
                    "no longer pending (acknowledged, or Redis lost its data)".to_string()
                }
                Ok(Xdel::NotInStream) => "gone from the stream already".to_string(),
                Ok(Xdel::HandedOn { holder, deliveries }) => {
                    format!("handed to {holder} since (delivered {deliveries} times)")
                }
                Err(e) => {
                    self.not_injected(Kind::Xdel, &e);
                    continue;
                }
            };
            self.shared.log(format!(
                "== xdel: entry {id} of {service} (left pending by {}, delivered {} times) {why_not}; \
                 another one ==",
                taken.consumer, taken.deliveries
            ));
            self.swallow_since_ms.get_or_insert(t);
            self.shared.request_swallow(service);
        }
    }
}

/// Whether `action` reads or writes the seed's databases (or the streams'
/// check, which reads every outbox): held back while one is down (the end
/// of a read-only or disk-full window only when it is that database's).
fn touches_databases(action: &Action) -> bool {
    match action {
        Action::Torture(_)
        | Action::BrokerLoss
        | Action::ReadOnlyOff(_)
        | Action::FreeDisk
        | Action::ResumeFrozen => true,
        Action::NoteCutPending(_)
        | Action::Restart(_)
        | Action::Reconnect(_)
        | Action::RestartClient
        | Action::FreeDeadKey(_)
        | Action::RedisOomOff => false,
    }
}

/// An entry taken by [`XDEL_CONSUMER`] for an xdel.
fn taken_by_torture(service: Service, entry_id: String, deliveries: u64) -> Swallowed {
    Swallowed {
        service,
        entry_id,
        consumer: XDEL_CONSUMER.to_string(),
        deliveries,
    }
}

/// The seed's outcome from what the shared state gathered.
fn outcome(input: &TortureInput, shared: &Shared, wall: Duration) -> TortureOutcome {
    let last = shared.final_snapshot().unwrap_or_default();
    let paths = crate::paths::paths(&last, input.scenario.orders.len());
    let mut sim_faults = shared.sim_counts();
    crate::paths::count_deadlines(&last, &mut sim_faults);
    TortureOutcome {
        input: input.clone(),
        lines: shared.lines(),
        findings: shared.findings(),
        paths,
        sim_faults,
        kinds: shared.kind_counts(),
        effects: shared.effects(),
        dead_letters: shared.dead_letters(),
        statements: shared.statements.table(),
        checked: shared.checked(),
        wall,
    }
}
