//! The demo's reference data (users with balances and inventory capacity,
//! items with price and stock) and idempotent seeding through the
//! [`Store`] port: a row is inserted only where its key is absent, so a
//! second seed changes nothing, whatever the orders did meanwhile.

use std::process::ExitCode;

use crate::adapters::tokens::{self, Principal, TokenStore};
use crate::domain::{ItemId, Row, UserId};
use crate::runtime::{Store, StoreError};
use crate::workload::{ItemSpec, Scenario, UserSpec};

use super::backend::Backend;
use super::GlobalArgs;

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

/// Issues a fresh token for each user of `scenario` and one admin token;
/// returns `(name, token)` pairs, `admin` first. Earlier tokens stay valid
/// until revoked (`token revoke`).
pub async fn issue_demo_tokens(
    store: &dyn TokenStore,
    scenario: &Scenario,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut issued = vec![("admin".to_string(), tokens::issue(store, Principal::Admin).await?)];
    for user in &scenario.users {
        let token = tokens::issue(store, Principal::User(user.id.clone())).await?;
        issued.push((user.id.to_string(), token));
    }
    Ok(issued)
}

/// Prints tokens as `token <name> <token>` lines on stdout, for scripts.
pub fn print_tokens(issued: &[(String, String)]) {
    for (name, token) in issued {
        println!("token {name} {token}");
    }
}

/// `purchase-saga seed-demo`.
pub async fn run_seed_demo(global: &GlobalArgs) -> Result<ExitCode, String> {
    let backend = Backend::open(global, 4, super::backend::Needs::StoreOnly).await?;
    backend.migrate().await?;
    let scenario = demo_scenario("demo-");
    let rows = scenario.opening_rows();
    let inserted = seed_rows(backend.store.as_ref(), &rows)
        .await
        .map_err(|e| format!("seeding failed: {e}"))?;
    let issued = issue_demo_tokens(backend.tokens.as_ref(), &scenario)
        .await
        .map_err(|e| format!("issuing tokens failed: {e}"))?;
    print_tokens(&issued);
    println!(
        "seed-demo: {inserted} rows inserted, {} already present ({})",
        rows.len() - inserted,
        backend.describe
    );
    Ok(ExitCode::SUCCESS)
}
