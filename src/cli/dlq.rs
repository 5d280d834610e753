//! `purchase-saga dlq list [--service S] [--count N]` and
//! `dlq replay --service S --id ENTRY`: the dead-letter streams of the Redis
//! bus (`RedisBus::dead_letters`, `RedisBus::replay_dead_letter`).
//!
//! `list` prints one line per dead letter: service, dead-letter id, the
//! original entry id, the delivery count, the reason and the payload (lossy
//! UTF-8, cut at [`PAYLOAD_SHOWN_MAX`] bytes); on stderr, per service,
//! how many older dead letters the dead-letter stream's cap dropped. `replay` puts the entry back
//! on the service's stream as a new entry and removes it from the
//! dead-letter stream in one MULTI/EXEC; run it once the cause is fixed
//! (the order now exists, the code now reads that schema version), or the
//! consumer dead-letters it again.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::adapters::redis::{RedisBus, RedisConfig};
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
    },
    /// Re-inject one dead letter into its service's stream and remove it
    /// from the dead-letter stream.
    Replay {
        #[arg(long, value_parser = parse_service)]
        service: Service,
        /// The dead-letter id (first id column of `dlq list`).
        #[arg(long, value_name = "ENTRY")]
        id: String,
    },
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
    // A replayed event is applied by its services: their schemas first.
    super::backend::check_schema(global, &crate::adapters::postgres::Part::SERVICES).await?;
    let config = RedisConfig {
        prefix: global.redis_prefix.clone(),
        cluster: global.redis_cluster,
        ..RedisConfig::default()
    };
    let bus = RedisBus::connect(&global.redis_url, config)
        .await
        .map_err(|e| e.to_string())?;
    match &args.action {
        DlqAction::List { service, count } => {
            let services: Vec<Service> = match service {
                Some(s) => vec![*s],
                None => Service::ALL.to_vec(),
            };
            let mut listed = 0;
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
                    println!(
                        "{}\t{}\t{}\tattempt {}\t{}\t{}",
                        s.slug(),
                        d.dead_id,
                        d.letter.entry_id,
                        d.attempt,
                        d.letter.reason,
                        shown(&d.letter.payload)
                    );
                }
            }
            eprintln!("{listed} dead letter(s)");
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
}
