//! `purchase-saga audit`: loads every service's state and runs the
//! domain's invariants, the same functions the simulator and the property
//! tests use. Exit 0 when clean; 1 with each violation listed.

use std::process::ExitCode;

use crate::domain::invariants::{self, Snapshot, Violation};

use super::backend::Backend;
use super::{AuditArgs, GlobalArgs};

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
    let snapshot = backend
        .store
        .snapshot()
        .await
        .map_err(|e| format!("cannot load the services' state: {e}"))?;
    let found = violations(&snapshot, args.safety_only);
    let scope = if args.safety_only {
        "safety invariants"
    } else {
        "all invariants"
    };
    let counts = format!(
        "{} orders, {} users, {} items",
        snapshot.orders.len(),
        snapshot.accounts.len(),
        snapshot.item_stocks.len()
    );
    if found.is_empty() {
        println!("audit: clean ({scope}; {counts})");
        return Ok(ExitCode::SUCCESS);
    }
    println!("audit: {} violation(s) of {scope} ({counts}):", found.len());
    for v in &found {
        println!("  {v}");
    }
    Ok(ExitCode::FAILURE)
}
