//! The demo's reference data (users with balances and inventory capacity,
//! items with price and stock) and idempotent seeding through the
//! [`Store`] port: a row is inserted only where its key is absent, so a
//! second seed changes nothing, whatever the orders did meanwhile.
//!
//! Tokens: `seed-demo` keeps the demo's tokens in a file of its own
//! (`--tokens-file`, mode 0600; the database has only their digests) and
//! on the next run reuses every one that is still valid for a while
//! ([`REUSE_MARGIN_MAX`]), issuing new ones only for the others. So
//! re-running it neither piles up tokens nor invalidates the ones a client
//! already holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use crate::adapters::tokens::{self, Principal, TokenStore, Verdict};
use crate::domain::{DurationMs, ItemId, Row, Timestamp, UserId};
use crate::runtime::{Clock, Store, StoreError, SystemClock};
use crate::workload::{ItemSpec, Scenario, UserSpec};

use super::backend::Backend;
use super::token::{parse_ttl, Ttl};
use super::GlobalArgs;

/// How long the demo's tokens work unless `--token-ttl` says otherwise.
pub const DEMO_TOKEN_TTL: DurationMs = DurationMs(7 * 86_400_000);

/// A kept token is reused only if it still works this much later (or half
/// its lifetime, if shorter), so a client does not get one about to expire.
pub const REUSE_MARGIN_MAX: DurationMs = DurationMs(3_600_000);

#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// Where the demo's tokens are kept between runs (default: a file per
    /// database under `$XDG_STATE_HOME` or `~/.local/state`).
    #[arg(long, value_name = "PATH", env = "PURCHASE_SAGA_DEMO_TOKENS")]
    pub tokens_file: Option<PathBuf>,
    /// How long newly issued demo tokens work: a number with `s`, `m`, `h`
    /// or `d`, or `never`.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_ttl)]
    pub token_ttl: Ttl,
}

/// Users and items of the demo, with ids under `prefix`. Chosen so that
/// every saga path happens: a few poor users (insufficient balance), a few
/// with one or two inventory slots (inventory full), two scarce items that
/// many orders contend for (out of stock), and plenty of everything else.
pub fn demo_scenario(prefix: &str) -> Scenario {
    let user = |i: usize| UserId::parse(format!("{prefix}user-{i}")).expect("valid id");
    let users = (0..40)
        .map(|i| UserSpec {
            id: user(i),
            balance: match i % 10 {
                0 => 60,
                _ => 20_000,
            },
            capacity: match i % 10 {
                1 => 1,
                2 => 2,
                _ => 50,
            },
        })
        .collect();
    let items = [
        ("dragon-shield", "Dragon Shield", 120, 8),
        ("phoenix-feather", "Phoenix Feather", 300, 3),
        ("iron-sword", "Iron Sword", 80, 1_000),
        ("healing-potion", "Healing Potion", 15, 1_000),
        ("mana-crystal", "Mana Crystal", 45, 1_000),
    ]
    .into_iter()
    .map(|(id, name, price, stock)| ItemSpec {
        id: ItemId::parse(format!("{prefix}{id}")).expect("valid id"),
        name: name.to_string(),
        price,
        stock,
    })
    .collect();
    Scenario {
        users,
        items,
        orders: Vec::new(),
    }
}

/// Inserts each row whose key is absent, one transaction per row; returns
/// how many were inserted.
pub async fn seed_rows(store: &dyn Store, rows: &[Row]) -> Result<usize, StoreError> {
    let mut inserted = 0;
    for row in rows {
        let key = row.key();
        let mut tx = store.begin(key.owner()).await?;
        if tx.load_for_update(&key).await?.is_none() {
            tx.save(row).await?;
            tx.commit().await?;
            inserted += 1;
        }
    }
    Ok(inserted)
}

/// The demo's principals by name: `admin` first, then each user.
fn demo_principals(scenario: &Scenario) -> Vec<(String, Principal)> {
    let users = scenario
        .users
        .iter()
        .map(|u| (u.id.to_string(), Principal::User(u.id.clone())));
    std::iter::once(("admin".to_string(), Principal::Admin))
        .chain(users)
        .collect()
}

/// Issues a fresh token (valid for [`DEMO_TOKEN_TTL`]) for each user of
/// `scenario` and one admin token; returns `(name, token)` pairs, `admin`
/// first. Earlier tokens stay valid until they expire or are revoked.
pub async fn issue_demo_tokens(
    store: &dyn TokenStore,
    scenario: &Scenario,
) -> Result<Vec<(String, String)>, StoreError> {
    let (tokens, reused) = demo_tokens(
        store,
        scenario,
        &BTreeMap::new(),
        SystemClock.now(),
        Some(DEMO_TOKEN_TTL),
    )
    .await?;
    debug_assert_eq!(reused, 0, "nothing kept, nothing reused");
    Ok(tokens)
}

/// A token for each of the demo's principals: the one in `kept` (by name)
/// when it is valid for that principal until `now` plus the reuse margin,
/// else a new one valid for `ttl`. Returns the `(name, token)` pairs,
/// `admin` first, and how many were reused.
pub async fn demo_tokens(
    store: &dyn TokenStore,
    scenario: &Scenario,
    kept: &BTreeMap<String, String>,
    now: Timestamp,
    ttl: Option<DurationMs>,
) -> Result<(Vec<(String, String)>, usize), StoreError> {
    let margin = ttl.map_or(REUSE_MARGIN_MAX, |t| DurationMs(t.0 / 2).min(REUSE_MARGIN_MAX));
    let mut tokens = Vec::new();
    let mut reused = 0;
    for (name, principal) in demo_principals(scenario) {
        if let Some(token) = kept.get(&name) {
            let later = tokens::check(store, token, now.plus(margin)).await?;
            if later == Verdict::Valid(principal.clone()) {
                tokens.push((name, token.clone()));
                reused += 1;
                continue;
            }
        }
        let token = tokens::issue_at(store, principal, now, ttl).await?;
        tokens.push((name, token));
    }
    Ok((tokens, reused))
}

/// The kept tokens of `path` by name (`token <name> <token>` lines, as
/// printed); none when the file does not exist.
pub fn read_tokens_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("token ")?.split(' ');
            let (name, token) = (words.next()?, words.next()?);
            Some((name.to_string(), token.to_string()))
        })
        .collect())
}

/// Writes `tokens` to `path` readable by its owner only.
pub fn write_tokens_file(path: &Path, tokens: &[(String, String)]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    for (name, token) in tokens {
        writeln!(file, "token {name} {token}").map_err(failed)?;
    }
    Ok(())
}

/// The default tokens file of the tokens' database at `database_url`
/// (DATABASE_URL_API, else DATABASE_URL): one file per
/// database (named by a hash of its URL), in the user's state directory.
fn default_tokens_file(database_url: &str) -> Result<PathBuf, String> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or("neither XDG_STATE_HOME nor HOME is set: give --tokens-file")?;
    let hash = crate::runtime::trace::trace_hash(&[database_url.to_string()]);
    Ok(state.join(format!("purchase-saga/demo-tokens-{hash:016x}.txt")))
}

/// Prints tokens as `token <name> <token>` lines on stdout, for scripts.
pub fn print_tokens(issued: &[(String, String)]) {
    for (name, token) in issued {
        println!("token {name} {token}");
    }
}

/// `purchase-saga seed-demo`.
pub async fn run_seed_demo(global: &GlobalArgs, args: &SeedArgs) -> Result<ExitCode, String> {
    let backend = Backend::open(global, 4, super::backend::Needs::StoreOnly).await?;
    let scenario = demo_scenario("demo-");
    let rows = scenario.opening_rows();
    let inserted = seed_rows(backend.store.as_ref(), &rows)
        .await
        .map_err(|e| format!("seeding failed: {e}"))?;
    let issued = if global.in_memory {
        // Nothing outlives the process: keeping tokens would be a lie.
        issue_demo_tokens(backend.tokens.as_ref(), &scenario)
            .await
            .map_err(|e| format!("issuing tokens failed: {e}"))?
    } else {
        let path = match &args.tokens_file {
            Some(p) => p.clone(),
            None => default_tokens_file(global.database_url_of(crate::adapters::postgres::Part::Api))?,
        };
        let kept = read_tokens_file(&path)?;
        let (tokens, reused) = demo_tokens(
            backend.tokens.as_ref(),
            &scenario,
            &kept,
            SystemClock.now(),
            args.token_ttl.0,
        )
        .await
        .map_err(|e| format!("issuing tokens failed: {e}"))?;
        write_tokens_file(&path, &tokens)?;
        println!(
            "seed-demo: {reused} tokens reused, {} issued (kept in {})",
            tokens.len() - reused,
            path.display()
        );
        tokens
    };
    print_tokens(&issued);
    println!(
        "seed-demo: {inserted} rows inserted, {} already present ({})",
        rows.len() - inserted,
        backend.describe
    );
    Ok(ExitCode::SUCCESS)
}
