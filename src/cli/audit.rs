//! `purchase-saga audit [--safety-only | --wait S] [--json]`: loads every
//! service's state and runs the domain's invariants, the same functions
//! the simulator and the property tests use, and says whether the system
//! was quiescent (see [`inflight`](super::inflight)) when it did.
//!
//! Three kinds of finding, each with one meaning in every mode:
//!
//! - **safety invariants** (`check_safety`): hold at every moment; always
//!   checked, `--safety-only` checks nothing else (and needs no Redis).
//! - **quiescent invariants** (every order terminal, conservation, one
//!   notification per order, and the compensations counted from the
//!   retained outbox rows, [`check_retained_compensations`]): hold only
//!   once nothing is in flight, so they are checked when the system is
//!   quiescent, or once it becomes so within `--wait SECONDS`. Otherwise
//!   the audit says what is in flight and that it checked safety only, so
//!   "not finished yet" never reads as "broken". Outbox rows are pruned
//!   past the re-drive horizon, so the audit says for how many orders it
//!   could check the compensations.
//! - **dead letters** (`no-dead-letter`): an event given up is a saga step
//!   never applied: a loss of liveness, not a safety violation (the rows
//!   can still satisfy every safety invariant). Counted whenever the bus
//!   can be read (not with `--safety-only`), reported apart from the
//!   invariants, and they fail the audit (exit 1) until replayed or
//!   dropped (`purchase-saga dlq`).
//!
//! Before judging, the audit checks that the bus under `--redis-prefix` is
//! the one the database worked with ([`bus_check`](super::bus_check)).
//!
//! The in-flight header and the per-service lines under it come from one
//! reading, so their counts add up.
//!
//! While `--wait` waits, it says so on stderr (unless `--quiet`): a spinner
//! on a terminal, else a line whenever what is in flight changes and at
//! least every [`PROGRESS_EVERY`], e.g. `purchase-saga: audit --wait: 3
//! bus entries undelivered, 3 orders not terminal; waited 2s of 30s`
//! ([`progress`](super::progress)). Stdout holds only the report.
//!
//! Exit codes: 0 clean, 1 a violation or a dead letter (or an error), 2 not
//! quiescent (the safety invariants held and no dead letter; the others
//! were not checked), 3 the bus holds nothing the database says should
//! exist (wrong prefix, or Redis lost its data).
//!
//! `--json` prints one [`AuditReport`] object instead (same exit code).

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::adapters::postgres::{Activity, PgRoutes};
use crate::adapters::redis::RedisBus;
use crate::domain::invariants::{
    self, check_dead_letters, check_retained_compensations, Snapshot, Violation,
};
use crate::domain::Service;

use super::backend::Backend;
use super::bus_check::{self, EXIT_BUS_MISMATCH};
use super::inflight::{busy_reasons, InFlight};
use super::progress::{self, Lines};
use super::{AuditArgs, GlobalArgs};

/// The exit code of an audit that found the system not quiescent.
pub const EXIT_NOT_QUIESCENT: u8 = 2;

/// How often `--wait` looks again.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// The longest silence between two progress lines of `--wait` off a
/// terminal.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What `--wait` shows on stderr while it waits: nothing with `--quiet`.
struct WaitProgress {
    spinner: Option<indicatif::ProgressBar>,
    lines: Option<Lines>,
    shown: Vec<String>,
    started: std::time::Instant,
    wait: u32,
}

impl WaitProgress {
    fn new(args: &AuditArgs) -> WaitProgress {
        let on = !args.quiet && args.wait > 0;
        let terminal = progress::on_terminal();
        WaitProgress {
            spinner: (on && terminal).then(progress::spinner),
            lines: (on && !terminal).then(|| Lines::new(PROGRESS_EVERY)),
            shown: Vec::new(),
            started: std::time::Instant::now(),
            wait: args.wait,
        }
    }

    /// Still waiting, for `busy` (the look's reasons).
    fn show(&mut self, busy: &[String]) {
        let text = format!(
            "audit --wait: {}; waited {}s of {}s",
            busy.join(", "),
            self.started.elapsed().as_secs(),
            self.wait
        );
        if let Some(bar) = &self.spinner {
            bar.set_message(text.clone());
        }
        if let Some(lines) = &mut self.lines {
            if lines.due(busy != self.shown.as_slice()) {
                progress::line("purchase-saga", &text);
            }
        }
        self.shown = busy.to_vec();
    }

    fn finish(self) {
        if let Some(bar) = self.spinner {
            bar.finish_and_clear();
        }
    }
}

/// The violations of `snapshot`: all of them, or only the safety ones.
pub fn violations(snapshot: &Snapshot, safety_only: bool) -> Vec<Violation> {
    let mut found = if safety_only {
        invariants::check_safety(snapshot)
    } else {
        invariants::check_quiescent(snapshot)
    };
    found.sort();
    found
}

/// One violation in `--json` (stable field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViolationView {
    /// The invariant's name, e.g. `balance-matches-holds`.
    pub invariant: &'static str,
    /// The entity, e.g. `user demo-user-3`.
    pub subject: String,
    pub detail: String,
}

impl From<&Violation> for ViolationView {
    fn from(v: &Violation) -> ViolationView {
        ViolationView {
            invariant: v.invariant.name(),
            subject: v.subject.clone(),
            detail: v.detail.clone(),
        }
    }
}

/// One service's work in flight in `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlightView {
    pub service: &'static str,
    pub pending: u64,
    pub undelivered: u64,
    pub unpublished: i64,
}

/// Sizes of the state audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub orders: usize,
    pub users: usize,
    pub items: usize,
}

/// Everything one audit found: what `--json` prints and what the human
/// report is rendered from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    /// `clean`, `violations`, `notQuiescent` or `busMismatch`.
    pub verdict: &'static str,
    /// The process's exit code (see the module docs).
    pub exit_code: u8,
    /// `all`, or `safetyOnly` (`--safety-only`).
    pub mode: &'static str,
    /// Null with `--safety-only` (not asked).
    pub quiescent: Option<bool>,
    /// Why the system was not quiescent (empty when it was).
    pub busy: Vec<String>,
    /// Per service with anything in flight, from the reading the `busy`
    /// counts come from.
    pub in_flight: Vec<InFlightView>,
    pub counts: Counts,
    /// Always checked.
    pub safety_violations: Vec<ViolationView>,
    /// Whether the quiescent invariants were checked.
    pub quiescent_checked: bool,
    /// The quiescent invariants' violations beyond safety (compensations
    /// included); empty when not checked.
    pub quiescent_violations: Vec<ViolationView>,
    /// Orders whose compensations were checked from retained outbox rows;
    /// null when not checked.
    pub compensations_checked_orders: Option<usize>,
    /// Quarantined outbox rows the compensation check could not read.
    pub quarantined_rows_unread: Option<u64>,
    /// Whether every service's dead letters were counted.
    pub dead_letters_checked: bool,
    /// Services with dead letters (events given up), one entry each.
    pub dead_letters: Vec<ViolationView>,
    /// What could not be checked and why; the bus mismatch message.
    pub notes: Vec<String>,
}

/// What one look at the system found.
struct Look {
    snapshot: Snapshot,
    /// Empty when quiescent; else what was in flight (or why it could not
    /// be told).
    busy: Vec<String>,
    /// The in-flight reading taken after the snapshot, for the report.
    in_flight: Option<InFlight>,
}

/// Reads the work in flight, a snapshot, and the work in flight again.
/// `read` holds the services' tables when the caller read them already.
async fn look(
    backend: &Backend,
    pg: &PgRoutes,
    bus: &Result<RedisBus, String>,
    read: Option<Vec<Activity>>,
) -> Result<Look, String> {
    let load = || async {
        backend
            .store
            .snapshot()
            .await
            .map_err(|e| format!("cannot load the services' state: {e}"))
    };
    let bus = match bus {
        Ok(bus) => bus,
        Err(e) => {
            return Ok(Look {
                snapshot: load().await?,
                busy: vec![format!("the bus cannot be read ({e})")],
                in_flight: None,
            })
        }
    };
    let before = match read {
        Some(activities) => InFlight::read_bus(activities, bus).await?,
        None => InFlight::read(pg, bus).await?,
    };
    let snapshot = load().await?;
    let after = InFlight::read(pg, bus).await?;
    Ok(Look {
        busy: busy_reasons(&before, &snapshot, &after),
        snapshot,
        in_flight: Some(after),
    })
}

/// Dead letters of every service (violations), whether all were counted,
/// and why not.
async fn dead_letters(bus: &Result<RedisBus, String>, notes: &mut Vec<String>) -> (Vec<Violation>, bool) {
    let bus = match bus {
        Ok(bus) => bus,
        Err(e) => {
            notes.push(format!("dead letters not checked: the bus cannot be read ({e})"));
            return (Vec::new(), false);
        }
    };
    let mut counts = Vec::new();
    let mut all = true;
    for service in Service::ALL {
        match bus.dead_letter_count(service).await {
            Ok(n) => counts.push((service, n)),
            Err(e) => {
                all = false;
                notes.push(format!("dead letters of {service} not checked: {e}"));
            }
        }
    }
    (check_dead_letters(&counts), all)
}

impl AuditReport {
    fn new(snapshot: &Snapshot, mode: &'static str) -> AuditReport {
        AuditReport {
            verdict: "clean",
            exit_code: 0,
            mode,
            quiescent: None,
            busy: Vec::new(),
            in_flight: Vec::new(),
            counts: Counts {
                orders: snapshot.orders.len(),
                users: snapshot.accounts.len(),
                items: snapshot.item_stocks.len(),
            },
            safety_violations: violations(snapshot, true)
                .iter()
                .map(ViolationView::from)
                .collect(),
            quiescent_checked: false,
            quiescent_violations: Vec::new(),
            compensations_checked_orders: None,
            quarantined_rows_unread: None,
            dead_letters_checked: false,
            dead_letters: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Sets the verdict and exit code from the findings.
    fn judge(mut self) -> AuditReport {
        let broken = !self.safety_violations.is_empty()
            || !self.quiescent_violations.is_empty()
            || !self.dead_letters.is_empty();
        (self.verdict, self.exit_code) = if broken {
            ("violations", 1)
        } else if self.quiescent == Some(false) {
            ("notQuiescent", EXIT_NOT_QUIESCENT)
        } else {
            ("clean", 0)
        };
        self
    }

    /// The human report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if self.verdict == "busMismatch" {
            for n in &self.notes {
                let _ = writeln!(s, "audit: {n}");
            }
            return s;
        }
        match self.quiescent {
            Some(true) => s.push_str("audit: quiescent: nothing in flight, every order terminal\n"),
            Some(false) => {
                let _ = writeln!(s, "audit: not quiescent: {}", self.busy.join(", "));
                for f in &self.in_flight {
                    let _ = writeln!(
                        s,
                        "  {}: {} pending, {} undelivered, {} unpublished",
                        f.service, f.pending, f.undelivered, f.unpublished
                    );
                }
            }
            None => {}
        }
        if let Some(checked) = self.compensations_checked_orders {
            let _ = writeln!(
                s,
                "audit: compensations checked from the outboxes for {checked} of {} orders \
                 (the others' rows are past the re-drive horizon and pruned){}",
                self.counts.orders,
                match self.quarantined_rows_unread {
                    Some(n) if n > 0 => format!("; {n} quarantined outbox row(s) not read"),
                    _ => String::new(),
                }
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "audit: {n}");
        }
        let scope = match (self.mode, self.quiescent_checked) {
            ("safetyOnly", _) => "safety invariants (--safety-only)",
            (_, true) => "all invariants",
            (_, false) => "safety invariants; the quiescent ones need a quiescent system, see --wait",
        };
        let counts = format!(
            "{} orders, {} users, {} items",
            self.counts.orders, self.counts.users, self.counts.items
        );
        let mut found: Vec<&ViolationView> = self
            .safety_violations
            .iter()
            .chain(&self.quiescent_violations)
            .collect();
        found.sort_by(|a, b| (a.invariant, &a.subject, &a.detail).cmp(&(b.invariant, &b.subject, &b.detail)));
        if found.is_empty() {
            let _ = writeln!(s, "audit: clean ({scope}; {counts})");
        } else {
            let _ = writeln!(s, "audit: {} violation(s) of {scope} ({counts}):", found.len());
            for v in found {
                let _ = writeln!(s, "  [{}] {}: {}", v.invariant, v.subject, v.detail);
            }
        }
        if !self.dead_letters.is_empty() {
            let _ = writeln!(
                s,
                "audit: dead letters in {} service(s): events given up, saga steps never applied \
                 (a loss of liveness, not a safety violation; replay or drop them with \
                 `purchase-saga dlq`):",
                self.dead_letters.len()
            );
            for v in &self.dead_letters {
                let _ = writeln!(s, "  [{}] {}: {}", v.invariant, v.subject, v.detail);
            }
        }
        s
    }
}

/// Runs the audit and returns its report (exit code inside).
pub async fn audit(global: &GlobalArgs, args: &AuditArgs) -> Result<AuditReport, String> {
    let backend = Backend::open(global, 4, super::backend::Needs::StoreOnly).await?;
    let pg = backend.postgres().ok_or("audit needs PostgreSQL")?.clone();
    if args.safety_only {
        let snapshot = backend
            .store
            .snapshot()
            .await
            .map_err(|e| format!("cannot load the services' state: {e}"))?;
        return Ok(AuditReport::new(&snapshot, "safetyOnly").judge());
    }
    // Redis down is no reason not to check safety: it only means quiescence
    // cannot be told.
    let bus = super::backend::connect_redis(global).await;
    // The services' tables are read once for the bus check and the first
    // look's reading of what is in flight.
    let mut first = None;
    if let Ok(bus) = &bus {
        let activities = super::inflight::activities(&pg).await?;
        if let Some(message) = bus_check::check(&activities, bus).await? {
            let snapshot = backend
                .store
                .snapshot()
                .await
                .map_err(|e| format!("cannot load the services' state: {e}"))?;
            let mut report = AuditReport::new(&snapshot, "all");
            report.verdict = "busMismatch";
            report.exit_code = EXIT_BUS_MISMATCH;
            report.notes.push(message);
            return Ok(report);
        }
        first = Some(activities);
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(u64::from(args.wait));
    let mut progress = WaitProgress::new(args);
    let look = loop {
        let look = look(&backend, &pg, &bus, first.take()).await?;
        if look.busy.is_empty() || tokio::time::Instant::now() + WAIT_POLL > until {
            break look;
        }
        progress.show(&look.busy);
        tokio::time::sleep(WAIT_POLL).await;
    };
    progress.finish();
    let mut report = AuditReport::new(&look.snapshot, "all");
    let (dead, all_counted) = dead_letters(&bus, &mut report.notes).await;
    report.dead_letters = dead.iter().map(ViolationView::from).collect();
    report.dead_letters_checked = all_counted;
    report.quiescent = Some(look.busy.is_empty());
    report.busy = look.busy;
    if let Some(in_flight) = &look.in_flight {
        report.in_flight = in_flight
            .0
            .iter()
            .filter(|s| s.pending > 0 || s.undelivered > 0 || s.activity.unpublished > 0)
            .map(|s| InFlightView {
                service: s.service.slug(),
                pending: s.pending,
                undelivered: s.undelivered,
                unpublished: s.activity.unpublished,
            })
            .collect();
    }
    if report.quiescent == Some(true) {
        let (events, undecodable) = pg
            .outbox_events()
            .await
            .map_err(|e| format!("cannot read the outboxes: {e}"))?;
        let (compensations, checked) = check_retained_compensations(&events, &look.snapshot);
        let safety = violations(&look.snapshot, true);
        let mut beyond: Vec<Violation> = violations(&look.snapshot, false)
            .into_iter()
            .filter(|v| !safety.contains(v))
            .chain(compensations)
            .collect();
        beyond.sort();
        report.quiescent_checked = true;
        report.quiescent_violations = beyond.iter().map(ViolationView::from).collect();
        report.compensations_checked_orders = Some(checked);
        report.quarantined_rows_unread = Some(undecodable as u64);
    }
    Ok(report.judge())
}

/// `purchase-saga audit`.
pub async fn run_audit(global: &GlobalArgs, args: &AuditArgs) -> Result<ExitCode, String> {
    if global.in_memory {
        // A fresh in-memory store is always clean: auditing it would say
        // nothing about any running system.
        return Err(
            "audit needs PostgreSQL: the in-memory store lives only inside one process \
                    (`demo --in-memory` audits its own)"
                .into(),
        );
    }
    let report = audit(global, args).await?;
    if args.json {
        super::output::print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::from(report.exit_code))
}
