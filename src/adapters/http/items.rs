//! `GET /items`: the catalog, every item with its name and price (Order's
//! catalog) and its stock (Item), sorted by id, bounded by [`ITEMS_MAX`].
//! An item one service knows and the other does not is listed with the
//! other's fields null, as `GET /items/{id}` shows it.
//!
//! The reads are [`ReadModel::items`](super::ReadModel::items); the two
//! stores' versions are here.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use crate::adapters::postgres::PgStore;
use crate::runtime::memory::MemoryStore;
use crate::runtime::store::StoreResult;
use crate::runtime::Store;

use super::error::ApiError;
use super::views::ItemView;
use super::AppState;

/// Most items `GET /items` lists.
pub const ITEMS_MAX: usize = 10_000;

/// Merges catalog entries `(id, name, price)` and stocks `(id, stock)`
/// into views sorted by id, at most [`ITEMS_MAX`].
pub fn merge(catalog: Vec<(String, String, i64)>, stocks: Vec<(String, i64)>) -> Vec<ItemView> {
    let mut items: BTreeMap<String, ItemView> = BTreeMap::new();
    let blank = |id: &str| ItemView {
        item_id: id.to_string(),
        name: None,
        price: None,
        stock: None,
    };
    for (id, name, price) in catalog {
        let v = items.entry(id.clone()).or_insert_with(|| blank(&id));
        (v.name, v.price) = (Some(name), Some(price));
    }
    for (id, stock) in stocks {
        items.entry(id.clone()).or_insert_with(|| blank(&id)).stock = Some(stock);
    }
    items.into_values().take(ITEMS_MAX).collect()
}

/// The in-memory store's items (from its snapshot: the demo's few rows).
pub async fn memory_items(store: &MemoryStore) -> StoreResult<Vec<ItemView>> {
    let s = store.snapshot().await?;
    Ok(merge(
        s.catalog
            .values()
            .map(|c| (c.item_id.to_string(), c.name.clone(), c.unit_price))
            .collect(),
        s.item_stocks
            .values()
            .map(|i| (i.item_id.to_string(), i.stock))
            .collect(),
    ))
}

/// PostgreSQL's items: Order's catalog (on Order's database) and Item's
/// stocks (on Item's; the same store when one database holds both).
pub async fn pg_items(order: &PgStore, item: &PgStore) -> StoreResult<Vec<ItemView>> {
    let limit = ITEMS_MAX as i64;
    let catalog: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT item_id, name, unit_price FROM order_svc.catalog ORDER BY item_id LIMIT $1")
            .bind(limit)
            .fetch_all(order.pool())
            .await
            .map_err(|e| crate::adapters::postgres::classify(e, order.target()))?;
    let stocks: Vec<(String, i64)> =
        sqlx::query_as("SELECT item_id, stock FROM item_svc.item_stocks ORDER BY item_id LIMIT $1")
            .bind(limit)
            .fetch_all(item.pool())
            .await
            .map_err(|e| crate::adapters::postgres::classify(e, item.target()))?;
    Ok(merge(catalog, stocks))
}

/// List every item: id, name and price (Order's catalog), stock (Item).
///
/// Sorted by id; an item only one service knows has the other's fields
/// null.
#[utoipa::path(
    get,
    path = "/items",
    operation_id = "listItems",
    tag = "reads",
    responses(
        (status = 200, description = "Every item, sorted by id", body = [ItemView]),
        (status = 500, description = "The store failed", body = super::openapi::ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = super::openapi::ErrorBody),
    )
)]
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<Vec<ItemView>>, ApiError> {
    Ok(Json(state.read.items().await?))
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn items_merge_by_id_with_what_each_service_knows() {
        let items = merge(
            vec![("b".into(), "Bow".into(), 30), ("a".into(), "Axe".into(), 10)],
            vec![("a".into(), 5), ("c".into(), 1)],
        );
        let shown: Vec<_> = items
            .iter()
            .map(|i| (i.item_id.as_str(), i.name.as_deref(), i.price, i.stock))
            .collect();
        assert_eq!(
            shown,
            [
                ("a", Some("Axe"), Some(10), Some(5)),
                ("b", Some("Bow"), Some(30), None),
                ("c", None, None, Some(1))
            ]
        );
    }
}
