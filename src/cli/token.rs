//! `purchase-saga token issue --user ID | --admin` and
//! `token revoke --id TOKEN_OR_ID | --user ID`: the API tokens (see
//! `adapters::tokens`). `issue` prints the token once on stdout; only its
//! SHA-256 is kept.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::adapters::tokens::{self, Principal};
use crate::domain::UserId;

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

fn user_id(raw: &str) -> Result<UserId, String> {
    UserId::parse(raw).map_err(|e| format!("invalid user id {raw:?}: {e}"))
}

/// `purchase-saga token ...`. In memory it works but is pointless (the
/// tokens die with the process), so it says so.
pub async fn run_token(global: &GlobalArgs, args: &TokenArgs) -> Result<ExitCode, String> {
    if global.in_memory {
        return Err("tokens issued in memory die with this process; run against PostgreSQL".into());
    }
    let backend = Backend::open(global, 2, Needs::StoreOnly).await?;
    backend.migrate().await?;
    let store = backend.tokens.as_ref();
    match &args.action {
        TokenAction::Issue { user, admin } => {
            let principal = match (user, admin) {
                (_, true) => Principal::Admin,
                (Some(u), false) => Principal::User(user_id(u)?),
                (None, false) => return Err("give --user ID or --admin".into()),
            };
            let token = tokens::issue(store, principal.clone())
                .await
                .map_err(|e| format!("issuing failed: {e}"))?;
            eprintln!("issued a token for {principal}");
            println!("{token}");
        }
        TokenAction::Revoke { id, user } => {
            let revoked = match (id, user) {
                (Some(raw), _) => {
                    let id = tokens::token_id_of(raw).ok_or("not a token or a token id")?;
                    u64::from(store.revoke(&id).await.map_err(|e| e.to_string())?)
                }
                (None, Some(u)) => store.revoke_user(&user_id(u)?).await.map_err(|e| e.to_string())?,
                (None, None) => return Err("give --id TOKEN_OR_ID or --user ID".into()),
            };
            println!("revoked {revoked} token(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
