//! `purchase-saga outbox quarantined [--service S] [--json]` and
//! `outbox release --service S (--seq N ... | --all)`: the outbox rows no
//! relay publishes as things stand (`PgStore::set_aside`,
//! `PgStore::release_set_aside`).
//!
//! A row is set aside when its payload does not decode (quarantined, with
//! the reason) or when a newer build wrote it (left for a build that reads
//! its `schemaVersion`, which publishes it by itself once deployed).
//! `quarantined` prints one line per row: service, seq, event type, order,
//! and `quarantined <time>: <reason>` or `needs schema version N`, under a
//! header; with `--json`, one JSON array of [`SetAsideView`] (camelCase,
//! as every `--json` of this binary). `release` makes rows due again at once: run it
//! once the cause is gone (the build that reads them is deployed, the row
//! repaired, or rows an older build quarantined for a newer schema version
//! before rows were left instead); a row that still does not decode is set
//! aside again by the next claim.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::adapters::postgres::SetAsideRow;
use crate::domain::Service;
use crate::runtime::{Clock, SystemClock};

use super::dlq::parse_service;
use super::GlobalArgs;

/// Rows `quarantined` lists per service.
pub const LISTED_MAX: usize = 10_000;

#[derive(Debug, Clone, Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    pub action: OutboxAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum OutboxAction {
    /// List the outbox rows set aside: quarantined (undecodable) or left
    /// for a newer build, by service and seq.
    Quarantined {
        /// Only this service (default: every service).
        #[arg(long, value_parser = parse_service)]
        service: Option<Service>,
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Make set-aside rows of a service due again now.
    Release {
        #[arg(long, value_parser = parse_service)]
        service: Service,
        /// The seq of a row to release (repeatable).
        #[arg(
            long = "seq",
            value_name = "N",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        seqs: Vec<i64>,
        /// Every set-aside row of the service.
        #[arg(long)]
        all: bool,
    },
}

/// One row of `quarantined --json` (stable field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetAsideView {
    /// The emitting service whose outbox holds the row.
    pub service: &'static str,
    pub seq: i64,
    pub event_type: String,
    pub order_id: String,
    /// When it was quarantined; null when left for a newer build.
    pub quarantined_at: Option<crate::domain::Timestamp>,
    /// Why it was quarantined.
    pub reason: Option<String>,
    /// The schema version a build must read to publish it.
    pub needs_schema_version: Option<u32>,
}

impl From<&SetAsideRow> for SetAsideView {
    fn from(r: &SetAsideRow) -> SetAsideView {
        SetAsideView {
            service: r.service.slug(),
            seq: r.seq,
            event_type: r.event_type.clone(),
            order_id: r.order_id.clone(),
            quarantined_at: r.quarantined_at,
            reason: r.reason.clone(),
            needs_schema_version: r.needs_schema_version,
        }
    }
}

/// One line of `quarantined`.
fn line(row: &SetAsideRow) -> String {
    let state = match (&row.quarantined_at, &row.reason, row.needs_schema_version) {
        (Some(at), Some(reason), _) => format!("quarantined {}: {reason}", at.to_datetime().to_rfc3339()),
        (_, _, Some(version)) => format!("needs schema version {version}"),
        _ => "set aside".to_string(),
    };
    format!(
        "{}\t{}\t{}\t{}\t{state}",
        row.service.slug(),
        row.seq,
        row.event_type,
        row.order_id
    )
}

/// `purchase-saga outbox ...`.
pub async fn run_outbox(global: &GlobalArgs, args: &OutboxArgs) -> Result<ExitCode, String> {
    if global.in_memory {
        return Err("outbox works on PostgreSQL; an in-memory store lives only inside its process".into());
    }
    let backend = super::backend::Backend::open_for(
        global,
        2,
        super::backend::Needs::StoreOnly,
        &crate::adapters::postgres::Part::SERVICES,
    )
    .await?;
    let store = backend.postgres().ok_or("outbox needs PostgreSQL")?.clone();
    match &args.action {
        OutboxAction::Quarantined { service, json } => {
            let services: Vec<Service> = match service {
                Some(s) => vec![*s],
                None => Service::ALL.to_vec(),
            };
            let mut rows = Vec::new();
            for s in services {
                rows.extend(
                    store
                        .of(s)
                        .map_err(|e| e.to_string())?
                        .set_aside(s, LISTED_MAX)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            if *json {
                let views: Vec<SetAsideView> = rows.iter().map(SetAsideView::from).collect();
                super::output::print_json(&views)?;
            } else {
                println!("service\tseq\tevent-type\torder\tstate");
                for row in &rows {
                    println!("{}", line(row));
                }
                eprintln!("{} row(s) set aside", rows.len());
            }
        }
        OutboxAction::Release { service, seqs, all } => {
            let chosen = (!*all).then_some(seqs.as_slice());
            let released = store
                .of(*service)
                .map_err(|e| e.to_string())?
                .release_set_aside(*service, chosen, SystemClock.now())
                .await
                .map_err(|e| e.to_string())?;
            println!("released {released} row(s) of {}", service.slug());
            if let Some(asked) = chosen {
                if released < asked.len() as u64 {
                    return Err(format!(
                        "{} of the {} seq(s) given are not set aside in {}",
                        asked.len() as u64 - released,
                        asked.len(),
                        service.slug()
                    ));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
