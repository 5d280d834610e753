//! `purchase-saga audit`: loads every service's state and runs the
//! domain's invariants, the same functions the simulator and the property
//! tests use, and says whether the system was quiescent (see
//! [`inflight`](super::inflight)) when it did.
//!
//! The safety invariants hold at every moment and are always checked. The
//! quiescent ones (every order terminal, conservation, one notification per
//! order) hold only once nothing is in flight: they are checked when the
//! system is quiescent, or once it becomes so within `--wait SECONDS`.
//! Otherwise the audit says what is in flight and that it checked safety
//! only, so "not finished yet" never reads as "broken".
//!
//! Beyond the rows, where the data still exists: no dead letter in any
//! service (whenever the bus can be read: an event given up is a loss
//! whether or not the system is quiescent), and at quiescence the
//! compensations counted from the outbox rows
//! ([`check_retained_compensations`]: each exactly once, only after its
//! step, each refund the order's total). Outbox rows are pruned past the
//! re-drive horizon, so the audit says for how many orders it could check
//! them.
//!
//! Exit codes: 0 clean, 1 a violation (or an error), 2 not quiescent (the
//! safety invariants held; the others were not checked).

use std::process::ExitCode;
use std::time::Duration;

use crate::adapters::postgres::PgRoutes;
use crate::adapters::redis::RedisBus;
use crate::domain::invariants::{
    self, check_dead_letters, check_retained_compensations, Snapshot, Violation,
};
use crate::domain::Service;

use super::backend::Backend;
use super::inflight::{busy_reasons, InFlight};
use super::{AuditArgs, GlobalArgs};

/// The exit code of an audit that found the system not quiescent.
pub const EXIT_NOT_QUIESCENT: u8 = 2;

/// How often `--wait` looks again.
const WAIT_POLL: Duration = Duration::from_millis(500);

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
async fn look(backend: &Backend, pg: &PgRoutes, bus: &Result<RedisBus, String>) -> Result<Look, String> {
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
    let before = InFlight::read(pg, bus).await?;
    let snapshot = load().await?;
    let after = InFlight::read(pg, bus).await?;
    Ok(Look {
        busy: busy_reasons(&before, &snapshot, &after),
        snapshot,
        in_flight: Some(after),
    })
}

/// Dead letters of every service: violations, or why they could not be
/// counted (printed; the audit goes on with what it can check).
async fn dead_letters(bus: &Result<RedisBus, String>) -> Vec<Violation> {
    let bus = match bus {
        Ok(bus) => bus,
        Err(e) => {
            println!("audit: dead letters not checked: the bus cannot be read ({e})");
            return Vec::new();
        }
    };
    let mut counts = Vec::new();
    for service in Service::ALL {
        match bus.dead_letter_count(service).await {
            Ok(n) => counts.push((service, n)),
            Err(e) => println!("audit: dead letters of {service} not checked: {e}"),
        }
    }
    check_dead_letters(&counts)
}

/// The compensation invariants over the retained outbox rows; prints for
/// how many orders they could be checked.
async fn compensations(pg: &PgRoutes, snapshot: &Snapshot) -> Result<Vec<Violation>, String> {
    let (events, undecodable) = pg
        .outbox_events()
        .await
        .map_err(|e| format!("cannot read the outboxes: {e}"))?;
    let (found, checked) = check_retained_compensations(&events, snapshot);
    println!(
        "audit: compensations checked from the outboxes for {checked} of {} orders \
         (the others' rows are past the re-drive horizon and pruned){}",
        snapshot.orders.len(),
        if undecodable > 0 {
            format!("; {undecodable} quarantined outbox row(s) not read")
        } else {
            String::new()
        }
    );
    Ok(found)
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
    let backend = Backend::open(global, 4, super::backend::Needs::StoreOnly).await?;
    let pg = backend.postgres().ok_or("audit needs PostgreSQL")?.clone();
    if args.safety_only {
        let snapshot = backend
            .store
            .snapshot()
            .await
            .map_err(|e| format!("cannot load the services' state: {e}"))?;
        return Ok(report(
            &snapshot,
            true,
            "safety invariants (--safety-only)",
            Vec::new(),
        ));
    }
    // Redis down is no reason not to check safety: it only means quiescence
    // cannot be told.
    let bus = super::backend::connect_redis(global).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(u64::from(args.wait));
    let look = loop {
        let look = look(&backend, &pg, &bus).await?;
        if look.busy.is_empty() || tokio::time::Instant::now() + WAIT_POLL > until {
            break look;
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    let mut beyond_rows = dead_letters(&bus).await;
    if look.busy.is_empty() {
        println!("audit: quiescent: nothing in flight, every order terminal");
        beyond_rows.extend(compensations(&pg, &look.snapshot).await?);
        return Ok(report(&look.snapshot, false, "all invariants", beyond_rows));
    }
    println!("audit: not quiescent: {}", look.busy.join(", "));
    if let Some(in_flight) = &look.in_flight {
        print!("{in_flight}");
    }
    let code = report(
        &look.snapshot,
        true,
        "safety invariants; the quiescent ones need a quiescent system, see --wait",
        beyond_rows,
    );
    Ok(if code == ExitCode::SUCCESS {
        ExitCode::from(EXIT_NOT_QUIESCENT)
    } else {
        code
    })
}

/// Prints the violations of `snapshot` (safety only, or all) and `beyond_rows`
/// (found outside the rows: dead letters, outbox) under `scope`; success
/// when there are none.
fn report(snapshot: &Snapshot, safety_only: bool, scope: &str, beyond_rows: Vec<Violation>) -> ExitCode {
    let mut found = violations(snapshot, safety_only);
    found.extend(beyond_rows);
    found.sort();
    let counts = format!(
        "{} orders, {} users, {} items",
        snapshot.orders.len(),
        snapshot.accounts.len(),
        snapshot.item_stocks.len()
    );
    if found.is_empty() {
        println!("audit: clean ({scope}; {counts})");
        return ExitCode::SUCCESS;
    }
    println!("audit: {} violation(s) of {scope} ({counts}):", found.len());
    for v in &found {
        println!("  {v}");
    }
    ExitCode::FAILURE
}
