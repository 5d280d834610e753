//! `purchase-saga token issue --user ID | --admin [--ttl 30d]`,
//! `token revoke --id TOKEN_OR_ID | --user ID` and `token list [--user ID]`:
//! the API tokens (see `adapters::tokens`). `issue` prints the token once on
//! stdout; only its SHA-256 is kept. `list` shows ids, owners, creation,
//! expiry and state, never a secret; `list --json` the same as one JSON
//! array of [`TokenView`]. `revoke --id` of a token that does not exist
//! exits 1 saying so (one already revoked is said so, exit 0).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::adapters::tokens::{self, Principal};
use crate::domain::{DurationMs, UserId};
use crate::runtime::{Clock, SystemClock};

use super::backend::{Backend, Needs};
use super::GlobalArgs;

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenAction {
    /// Issue a token and print it (the only time it is shown).
    Issue {
        /// The user the token speaks for.
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "admin",
            conflicts_with = "admin"
        )]
        user: Option<String>,
        /// An admin token instead.
        #[arg(long)]
        admin: bool,
        /// How long the token works: a number with `s`, `m`, `h` or `d`
        /// (at most 365d), or `never`.
        #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_ttl)]
        ttl: Ttl,
    },
    /// List tokens (ids, owners, creation, expiry, state), oldest first.
    List {
        /// Only this user's tokens.
        #[arg(long, value_name = "ID")]
        user: Option<String>,
        /// One JSON array on stdout instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token (by the token or its id) or every token of a user.
    Revoke {
        /// The token, or its 16-hex-digit id.
        #[arg(
            long,
            value_name = "TOKEN_OR_ID",
            required_unless_present = "user",
            conflicts_with = "user"
        )]
        id: Option<String>,
        /// Revoke all of this user's tokens.
        #[arg(long, value_name = "ID")]
        user: Option<String>,
    },
}

/// A token's lifetime; None: it never expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Option<DurationMs>);

/// Longest `--ttl`.
const TTL_DAYS_MAX: i64 = 365;

/// Parses `90s`, `15m`, `12h`, `30d` or `never`.
pub fn parse_ttl(raw: &str) -> Result<Ttl, String> {
    if raw == "never" {
        return Ok(Ttl(None));
    }
    let bad = || format!("expected a number with s, m, h or d (e.g. 30d), or `never`; got {raw:?}");
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = raw.split_at(split);
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms <= 0 || ms > TTL_DAYS_MAX * 86_400_000 {
        return Err(format!("must be from 1s to {TTL_DAYS_MAX}d; got {raw:?}"));
    }
    Ok(Ttl(Some(DurationMs(ms))))
}

/// One token as `token list --json` shows it (stable field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// The 16-hex-digit id (what `token revoke --id` takes).
    pub id: String,
    /// `admin`, or `user`.
    pub kind: &'static str,
    /// The user a user token speaks for; null for an admin token.
    pub user_id: Option<String>,
    pub created_at: crate::domain::Timestamp,
    /// Null: never expires.
    pub expires_at: Option<crate::domain::Timestamp>,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
}

impl TokenView {
    fn of(r: &tokens::TokenRecord, now: crate::domain::Timestamp) -> TokenView {
        let (kind, user_id) = match &r.principal {
            Principal::Admin => ("admin", None),
            Principal::User(u) => ("user", Some(u.to_string())),
        };
        TokenView {
            id: r.token_id.clone(),
            kind,
            user_id,
            created_at: r.created_at,
            expires_at: r.expires_at,
            state: r.state(now),
        }
    }
}

fn user_id(raw: &str) -> Result<UserId, String> {
    UserId::parse(raw).map_err(|e| format!("invalid user id {raw:?}: {e}"))
}

/// `purchase-saga token ...`. In memory it works but is pointless (the
/// tokens die with the process), so it says so.
pub async fn run_token(global: &GlobalArgs, args: &TokenArgs) -> Result<ExitCode, String> {
    if global.in_memory {
        return Err("tokens issued in memory die with this process; run against PostgreSQL".into());
    }
    // The tokens' database only (DATABASE_URL_API).
    let backend = Backend::open_for(
        global,
        2,
        Needs::StoreOnly,
        &[crate::adapters::postgres::Part::Api],
    )
    .await?;
    let store = backend.tokens.as_ref();
    match &args.action {
        TokenAction::Issue { user, admin, ttl } => {
            let principal = match (user, admin) {
                (_, true) => Principal::Admin,
                (Some(u), false) => Principal::User(user_id(u)?),
                (None, false) => return Err("give --user ID or --admin".into()),
            };
            let now = SystemClock.now();
            let token = tokens::issue_at(store, principal.clone(), now, ttl.0)
                .await
                .map_err(|e| format!("issuing failed: {e}"))?;
            match ttl.0 {
                Some(t) => eprintln!("issued a token for {principal}, expiring at {}", now.plus(t)),
                None => eprintln!("issued a token for {principal} that never expires"),
            }
            println!("{token}");
        }
        TokenAction::List { user, json } => {
            let user = user.as_deref().map(user_id).transpose()?;
            let records = store.list(user.as_ref()).await.map_err(|e| e.to_string())?;
            let now = SystemClock.now();
            if *json {
                let views: Vec<TokenView> = records.iter().map(|r| TokenView::of(r, now)).collect();
                super::output::print_json(&views)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16}  {:<24}  {:<24}  {:<24}  state",
                "id", "for", "created", "expires"
            );
            for r in &records {
                let expires = r.expires_at.map_or("never".to_string(), |t| t.to_string());
                let owner = r.principal.to_string();
                let created = r.created_at.to_string();
                let state = r.state(now);
                println!(
                    "{:<16}  {owner:<24}  {created:<24}  {expires:<24}  {state}",
                    r.token_id
                );
            }
            eprintln!("{} token(s)", records.len());
        }
        TokenAction::Revoke { id, user } => {
            let revoked = match (id, user) {
                (Some(raw), _) => {
                    let id = tokens::token_id_of(raw).ok_or_else(|| {
                        format!("invalid --id {raw:?}: not a token (pst_...) or a 16-hex-digit token id")
                    })?;
                    if store.find(&id).await.map_err(|e| e.to_string())?.is_none() {
                        return Err(format!("no such token: {id} (see `purchase-saga token list`)"));
                    }
                    if !store.revoke(&id).await.map_err(|e| e.to_string())? {
                        println!("token {id} was already revoked");
                        return Ok(ExitCode::SUCCESS);
                    }
                    1
                }
                (None, Some(u)) => store.revoke_user(&user_id(u)?).await.map_err(|e| e.to_string())?,
                (None, None) => return Err("give --id TOKEN_OR_ID or --user ID".into()),
            };
            println!("revoked {revoked} token(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_have_a_unit_and_a_bound() {
        assert_eq!(parse_ttl("90s"), Ok(Ttl(Some(DurationMs(90_000)))));
        assert_eq!(parse_ttl("15m"), Ok(Ttl(Some(DurationMs(900_000)))));
        assert_eq!(parse_ttl("12h"), Ok(Ttl(Some(DurationMs(43_200_000)))));
        assert_eq!(parse_ttl("365d"), Ok(Ttl(Some(DurationMs(365 * 86_400_000)))));
        assert_eq!(parse_ttl("never"), Ok(Ttl(None)));
        for bad in [
            "",
            "30",
            "d",
            "0s",
            "366d",
            "-1d",
            "1w",
            "1.5h",
            "99999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }
}
