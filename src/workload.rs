//! Workloads: the users, items and orders of a run, generated from a seed
//! so that every saga path occurs. Shared by the in-memory scheduler, the
//! simulator, the demo and the benchmarks. It decides who buys what, never
//! how the saga answers.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::domain::gateway::{DECLINING_METHOD, DEFAULT_METHOD};
use crate::domain::rows::{Account, CatalogEntry, InventoryAccount, ItemStock};
use crate::domain::{DurationMs, ItemId, OrderId, Row, UserId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    pub id: UserId,
    pub balance: i64,
    pub capacity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSpec {
    pub id: ItemId,
    pub name: String,
    pub price: i64,
    pub stock: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSpec {
    pub id: OrderId,
    pub user: UserId,
    pub item: ItemId,
    pub quantity: i64,
    pub method: String,
    /// Arrival time, from the start of the run.
    pub at: DurationMs,
}

/// Everything a run starts from and everything its clients ask for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Scenario {
    pub users: Vec<UserSpec>,
    pub items: Vec<ItemSpec>,
    pub orders: Vec<OrderSpec>,
}

/// How big a generated scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScenarioSize {
    pub users: usize,
    pub items: usize,
    pub orders: usize,
    /// Orders arrive spread over this span.
    pub arrival_span: DurationMs,
}

impl Default for ScenarioSize {
    fn default() -> Self {
        ScenarioSize {
            users: 4,
            items: 3,
            orders: 20,
            arrival_span: DurationMs::from_secs(5),
        }
    }
}

/// One order as plain numbers, for generators (proptest strategies,
/// fuzzers): a user index (one past the users is a buyer without an account),
/// an item index (taken modulo the items), quantity, whether the payment
/// method declines, arrival in ms.
pub type OrderParts = (usize, usize, i64, bool, i64);

impl Scenario {
    /// A scenario from plain numbers: users as (balance, capacity), items as
    /// (price, stock), orders as [`OrderParts`]. Ids are `user-N`, `item-N`,
    /// `order-N`, `ghost-N`; orders are sorted by arrival.
    pub fn from_parts(users: &[(i64, i64)], items: &[(i64, i64)], orders: &[OrderParts]) -> Scenario {
        assert!(!items.is_empty(), "a scenario needs an item to order");
        let users: Vec<UserSpec> = users
            .iter()
            .enumerate()
            .map(|(n, &(balance, capacity))| UserSpec {
                id: UserId::parse(format!("user-{n}")).expect("valid id"),
                balance,
                capacity,
            })
            .collect();
        let items: Vec<ItemSpec> = items
            .iter()
            .enumerate()
            .map(|(n, &(price, stock))| ItemSpec {
                id: ItemId::parse(format!("item-{n}")).expect("valid id"),
                name: ITEM_NAMES[n % ITEM_NAMES.len()].to_string(),
                price,
                stock,
            })
            .collect();
        let mut orders: Vec<OrderSpec> = orders
            .iter()
            .enumerate()
            .map(|(n, &(u, i, quantity, declines, at))| OrderSpec {
                id: OrderId::parse(format!("order-{n}")).expect("valid id"),
                user: users.get(u).map_or_else(
                    || UserId::parse(format!("ghost-{n}")).expect("valid id"),
                    |x| x.id.clone(),
                ),
                item: items[i % items.len()].id.clone(),
                quantity,
                method: if declines {
                    DECLINING_METHOD
                } else {
                    DEFAULT_METHOD
                }
                .to_string(),
                at: DurationMs(at),
            })
            .collect();
        orders.sort_by_key(|o| o.at);
        Scenario { users, items, orders }
    }

    /// The opening rows of every service: Order's catalog, User's accounts,
    /// Inventory's capacities, Item's stock.
    pub fn opening_rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for u in &self.users {
            rows.push(Row::Account(Account {
                user_id: u.id.clone(),
                balance: u.balance,
                opening_balance: u.balance,
            }));
            rows.push(Row::InventoryAccount(InventoryAccount {
                user_id: u.id.clone(),
                capacity: u.capacity,
                used_slots: 0,
                reserved_slots: 0,
            }));
        }
        for i in &self.items {
            rows.push(Row::Catalog(CatalogEntry {
                item_id: i.id.clone(),
                name: i.name.clone(),
                unit_price: i.price,
            }));
            rows.push(Row::ItemStock(ItemStock {
                item_id: i.id.clone(),
                stock: i.stock,
                opening_stock: i.stock,
            }));
        }
        rows
    }

    /// A scenario in which every saga path is likely: balances near prices,
    /// small inventories, scarce stock, a few unknown buyers and declining
    /// payment methods. Orders are sorted by arrival.
    pub fn generate(rng: &mut impl Rng, size: ScenarioSize) -> Scenario {
        assert!(
            size.users > 0 && size.items > 0,
            "a scenario needs users and items"
        );
        let items: Vec<ItemSpec> = (0..size.items)
            .map(|i| ItemSpec {
                id: ItemId::parse(format!("item-{i}")).expect("valid id"),
                name: ITEM_NAMES[i % ITEM_NAMES.len()].to_string(),
                price: rng.random_range(10..=100),
                stock: rng.random_range(0..=6),
            })
            .collect();
        let users: Vec<UserSpec> = (0..size.users)
            .map(|u| UserSpec {
                id: UserId::parse(format!("user-{u}")).expect("valid id"),
                balance: rng.random_range(0..=900),
                capacity: rng.random_range(0..=8),
            })
            .collect();
        let mut orders: Vec<OrderSpec> = (0..size.orders)
            .map(|n| {
                // One buyer in twelve has no account: the unknown-user path.
                let user = if rng.random_ratio(1, 12) {
                    UserId::parse(format!("ghost-{n}")).expect("valid id")
                } else {
                    users[rng.random_range(0..users.len())].id.clone()
                };
                let method = if rng.random_ratio(1, 10) {
                    DECLINING_METHOD
                } else {
                    DEFAULT_METHOD
                };
                OrderSpec {
                    id: OrderId::parse(format!("order-{n}")).expect("valid id"),
                    user,
                    item: items[rng.random_range(0..items.len())].id.clone(),
                    quantity: rng.random_range(1..=3),
                    method: method.to_string(),
                    at: DurationMs(rng.random_range(0..=size.arrival_span.0.max(0))),
                }
            })
            .collect();
        orders.sort_by_key(|o| o.at);
        Scenario { users, items, orders }
    }
}

const ITEM_NAMES: [&str; 8] = [
    "Iron Sword",
    "Healing Potion",
    "Dragon Shield",
    "Mana Crystal",
    "Elven Bow",
    "Phoenix Feather",
    "Rune Stone",
    "Shadow Cloak",
];

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn same_seed_same_scenario() {
        let a = Scenario::generate(
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(9),
            ScenarioSize::default(),
        );
        let b = Scenario::generate(
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(9),
            ScenarioSize::default(),
        );
        let c = Scenario::generate(
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(10),
            ScenarioSize::default(),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.orders.windows(2).all(|w| w[0].at <= w[1].at));
    }
}

/// Reads bounded numbers from arbitrary bytes (a fuzzer's input); past the
/// end it reads zeros, so every input decodes.
struct ByteReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl ByteReader<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    /// A number in `lo..=hi` (hi - lo < 65536).
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi && hi - lo < 65_536);
        let raw = i64::from(u16::from_le_bytes([self.byte(), self.byte()]));
        lo + raw % (hi - lo + 1)
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.byte()))
    }
}

/// A scenario and scheduling choices decoded from arbitrary bytes: the input
/// of the `scenario_runtime` fuzz target, and of the test that replays its
/// committed corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzCase {
    pub scenario: Scenario,
    pub seed: u64,
    pub duplicate_per_mille: u32,
}

impl FuzzCase {
    /// Limits keep one case fast: at most 4 users, 3 items, 16 orders.
    pub fn from_bytes(bytes: &[u8]) -> FuzzCase {
        let mut r = ByteReader { bytes, at: 0 };
        let seed = r.u64();
        let duplicate_per_mille = r.range(0, 500) as u32;
        let users: Vec<(i64, i64)> = (0..r.range(1, 4))
            .map(|_| (r.range(0, 600), r.range(0, 8)))
            .collect();
        let items: Vec<(i64, i64)> = (0..r.range(1, 3))
            .map(|_| (r.range(1, 200), r.range(0, 8)))
            .collect();
        let orders: Vec<OrderParts> = (0..r.range(0, 16))
            .map(|_| {
                (
                    r.range(0, users.len() as i64) as usize,
                    r.range(0, items.len() as i64 - 1) as usize,
                    r.range(1, 4),
                    r.range(0, 9) == 0,
                    r.range(0, 5_000),
                )
            })
            .collect();
        FuzzCase {
            scenario: Scenario::from_parts(&users, &items, &orders),
            seed,
            duplicate_per_mille,
        }
    }
}
