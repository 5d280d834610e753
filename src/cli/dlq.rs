//! `purchase-saga dlq list [--service S] [--count N] [--json]`,
//! `dlq replay --service S --id ENTRY`, `dlq drop --service S --id ENTRY
//! --yes` and `dlq purge --service S --yes`: the dead-letter streams of the
//! Redis bus (`RedisBus::dead_letters`, `RedisBus::replay_dead_letter`,
//! `RedisBus::drop_dead_letter`, `RedisBus::purge_dead_letters`).
//!
//! `list` prints a table, oldest first (as `GET /admin/dead-letters`):
//! service, dead-letter id, the original entry id, the delivery count, the
//! reason and the payload (lossy UTF-8, cut at [`PAYLOAD_SHOWN_MAX`]
//! bytes); on stderr, per service, how many older dead letters the
//! dead-letter stream's cap dropped. `--json` prints one array of
//! [`DeadLetterView`] (the whole payload) instead.
//!
//! `drop` discards one dead letter (a poison entry that no fix will make
//! applicable), `purge` every dead letter of a service; both refuse to run
//! without `--yes` (exit 1, nothing changed). An id is a Redis stream id
//! (`MILLISECONDS-SEQUENCE`): anything else is refused by the parser (exit
//! 2) before Redis is asked. `replay` puts the entry back
//! on the service's stream as a new entry and removes it from the
//! dead-letter stream in one MULTI/EXEC; run it once the cause is fixed
//! (the order now exists, the code now reads that schema version), or the
//! consumer dead-letters it again.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::adapters::redis::{DeadLetterEntry, RedisBus, RedisConfig};
use crate::domain::Service;

use super::GlobalArgs;

/// Bytes of a payload `list` shows.
pub const PAYLOAD_SHOWN_MAX: usize = 200;

#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub action: DlqAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DlqAction {
    /// List dead letters, oldest first.
    List {
        /// Only this service (default: every service).
        #[arg(long, value_parser = parse_service)]
        service: Option<Service>,
        /// Most entries listed per service.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        /// One JSON array on stdout instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Re-inject one dead letter into its service's stream and remove it
    /// from the dead-letter stream.
    Replay {
        #[arg(long, value_parser = parse_service)]
        service: Service,
        /// The dead-letter id (the `dead-id` column of `dlq list`).
        #[arg(long, value_name = "ENTRY", value_parser = parse_entry_id)]
        id: String,
    },
    /// Discard one dead letter for good (it is not applied). Needs --yes.
    Drop {
        #[arg(long, value_parser = parse_service)]
        service: Service,
        /// The dead-letter id (the `dead-id` column of `dlq list`).
        #[arg(long, value_name = "ENTRY", value_parser = parse_entry_id)]
        id: String,
        /// Confirm: the dead letter is deleted and cannot be replayed.
        #[arg(long)]
        yes: bool,
    },
    /// Discard every dead letter of a service for good. Needs --yes.
    Purge {
        #[arg(long, value_parser = parse_service)]
        service: Service,
        /// Confirm: every dead letter of the service is deleted.
        #[arg(long)]
        yes: bool,
    },
}

/// One dead letter as `dlq list --json` shows it (stable field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    /// The consuming service whose dead-letter stream holds it.
    pub service: &'static str,
    /// Its id in the dead-letter stream (what `replay` and `drop` take).
    pub dead_id: String,
    /// The id it had in the service's stream.
    pub entry_id: String,
    /// Deliveries when it was given up.
    pub attempt: u32,
    pub reason: String,
    /// The entry's bytes as lossy UTF-8, whole.
    pub payload: String,
}

impl DeadLetterView {
    pub fn of(service: Service, d: &DeadLetterEntry) -> DeadLetterView {
        DeadLetterView {
            service: service.slug(),
            dead_id: d.dead_id.clone(),
            entry_id: d.letter.entry_id.clone(),
            attempt: d.attempt,
            reason: d.letter.reason.clone(),
            payload: String::from_utf8_lossy(&d.letter.payload).into_owned(),
        }
    }
}

/// A Redis stream id, `MILLISECONDS-SEQUENCE` (both decimal).
pub fn parse_entry_id(raw: &str) -> Result<String, String> {
    let valid = raw.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    if valid {
        Ok(raw.to_string())
    } else {
        Err(
            "expected a dead-letter id as `dlq list` shows it, MILLISECONDS-SEQUENCE (e.g. 1767225600000-0)"
                .into(),
        )
    }
}

/// Why a destructive action without `--yes` did nothing.
fn refuse(what: &str) -> String {
    format!("{what}: refused without --yes (nothing was changed); add --yes to confirm")
}

pub(super) fn parse_service(raw: &str) -> Result<Service, String> {
    Service::from_slug(raw).ok_or_else(|| {
        let names: Vec<&str> = Service::ALL.iter().map(|s| s.slug()).collect();
        format!("unknown service {raw:?}; expected one of {}", names.join(", "))
    })
}

fn shown(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(PAYLOAD_SHOWN_MAX)];
    let mut text = String::from_utf8_lossy(cut).replace(['\n', '\r'], " ");
    if payload.len() > PAYLOAD_SHOWN_MAX {
        text.push_str("...");
    }
    text
}

/// `purchase-saga dlq ...`.
pub async fn run_dlq(global: &GlobalArgs, args: &DlqArgs) -> Result<ExitCode, String> {
    if global.in_memory {
        return Err("dlq works on the Redis bus; an in-memory bus lives only inside its process".into());
    }
    // A destructive action is refused before anything is read or changed.
    match &args.action {
        DlqAction::Drop {
            service,
            id,
            yes: false,
        } => return Err(refuse(&format!("dlq drop {id} of {}", service.slug()))),
        DlqAction::Purge { service, yes: false } => {
            return Err(refuse(&format!("dlq purge of {}", service.slug())))
        }
        _ => {}
    }
    // A replayed event is applied by its services: their schemas first
    // (listing, dropping and purging read and change Redis only).
    if matches!(args.action, DlqAction::Replay { .. }) {
        super::backend::check_schema(global, &crate::adapters::postgres::Part::SERVICES).await?;
    }
    let config = RedisConfig {
        prefix: global.redis_prefix.clone(),
        cluster: global.redis_cluster,
        ..RedisConfig::default()
    };
    let bus = RedisBus::connect(&global.redis_url, config)
        .await
        .map_err(|e| e.to_string())?;
    match &args.action {
        DlqAction::List { service, count, json } => {
            let services: Vec<Service> = match service {
                Some(s) => vec![*s],
                None => Service::ALL.to_vec(),
            };
            let mut listed = 0;
            let mut views = Vec::new();
            if !*json {
                println!("service\tdead-id\tentry-id\tattempts\treason\tpayload");
            }
            for s in services {
                let letters = bus
                    .dead_letters(s, *count as usize)
                    .await
                    .map_err(|e| e.to_string())?;
                let trimmed = bus.dead_letters_trimmed(s).await.map_err(|e| e.to_string())?;
                if trimmed > 0 {
                    eprintln!(
                        "{}: {trimmed} older dead letter(s) were dropped by the dead-letter stream's cap",
                        s.slug()
                    );
                }
                for d in letters {
                    listed += 1;
                    if *json {
                        views.push(DeadLetterView::of(s, &d));
                        continue;
                    }
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        s.slug(),
                        d.dead_id,
                        d.letter.entry_id,
                        d.attempt,
                        d.letter.reason,
                        shown(&d.letter.payload)
                    );
                }
            }
            if *json {
                super::output::print_json(&views)?;
            }
            eprintln!("{listed} dead letter(s)");
        }
        DlqAction::Drop { service, id, .. } => {
            if !bus
                .drop_dead_letter(*service, id)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "no dead letter {id} for {} (see `dlq list --service {}`)",
                    service.slug(),
                    service.slug()
                ));
            }
            println!("dropped dead letter {id} of {}", service.slug());
        }
        DlqAction::Purge { service, .. } => {
            let purged = bus
                .purge_dead_letters(*service)
                .await
                .map_err(|e| e.to_string())?;
            println!("purged {purged} dead letter(s) of {}", service.slug());
        }
        DlqAction::Replay { service, id } => {
            match bus
                .replay_dead_letter(*service, id)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(new_id) => println!("replayed {id} as {new_id} on {}", service.slug()),
                None => return Err(format!("no dead letter {id} for {}", service.slug())),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_shown_on_one_bounded_line() {
        assert_eq!(shown(b"{\n}"), "{ }");
        let long = vec![b'x'; PAYLOAD_SHOWN_MAX + 1];
        assert_eq!(shown(&long).len(), PAYLOAD_SHOWN_MAX + 3);
        assert_eq!(shown(&[0xff]), "\u{fffd}");
    }

    #[test]
    fn entry_ids_are_stream_ids() {
        for good in ["1767225600000-0", "0-1"] {
            assert_eq!(parse_entry_id(good).as_deref(), Ok(good));
        }
        for bad in ["garbage", "", "1-", "-1", "1", "1-2-3", "a-1", "+", "-", "1 -2"] {
            assert!(parse_entry_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
