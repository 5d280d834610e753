//! The statements of batched apply (DESIGN.md "Batched apply"): one
//! statement per table for a whole batch, the rows passed as one array per
//! column and spread by `unnest`.
//!
//! - Reads lock with `... WHERE (pk) IN (SELECT * FROM unnest($1::text[]))
//!   ORDER BY pk COLLATE "C" FOR UPDATE`: the rows are locked in byte order
//!   of their keys, the order of `RowKey`'s strings, so batches lock one
//!   table's rows in one global order.
//! - Writes are `INSERT ... SELECT * FROM unnest(...)` (with `ON CONFLICT
//!   DO UPDATE` for an upsert) or `UPDATE ... FROM unnest(...) AS v WHERE
//!   t.pk = v.pk`, one per table and write mode.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::Postgres;

use crate::domain::Row;

use super::rows::{columns, Kind, Value};

/// One column of many rows, bound as one array parameter.
#[derive(Debug, Clone)]
pub enum Column {
    Text(Vec<String>),
    OptText(Vec<Option<String>>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
    Time(Vec<DateTime<Utc>>),
}

impl Column {
    fn for_value(value: &Value) -> Column {
        match value {
            Value::Text(_) => Column::Text(Vec::new()),
            Value::OptText(_) => Column::OptText(Vec::new()),
            Value::Int(_) => Column::Int(Vec::new()),
            Value::Bool(_) => Column::Bool(Vec::new()),
            Value::Time(_) => Column::Time(Vec::new()),
        }
    }

    fn push(&mut self, value: Value) {
        match (self, value) {
            (Column::Text(c), Value::Text(v)) => c.push(v),
            (Column::OptText(c), Value::OptText(v)) => c.push(v),
            (Column::Int(c), Value::Int(v)) => c.push(v),
            (Column::Bool(c), Value::Bool(v)) => c.push(v),
            (Column::Time(c), Value::Time(v)) => c.push(v),
            (column, value) => panic!("one column holds one type: {value:?} into {column:?}"),
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::Text(c) => c.len(),
            Column::OptText(c) => c.len(),
            Column::Int(c) => c.len(),
            Column::Bool(c) => c.len(),
            Column::Time(c) => c.len(),
        }
    }

    /// The array type the parameter is cast to.
    fn sql_type(&self) -> &'static str {
        match self {
            Column::Text(_) | Column::OptText(_) => "text[]",
            Column::Int(_) => "int8[]",
            Column::Bool(_) => "bool[]",
            Column::Time(_) => "timestamptz[]",
        }
    }
}

/// The columns of `rows` (all of one kind), in [`Kind::column_names`] order.
pub fn columns_of(kind: Kind, rows: &[&Row]) -> Vec<Column> {
    assert!(!rows.is_empty(), "a batched write writes some rows");
    let mut out: Vec<Column> = Vec::new();
    for row in rows {
        assert_eq!(Kind::of_key(&row.key()), kind, "one statement writes one table");
        let values = columns(row);
        debug_assert_eq!(values.len(), kind.column_names().len());
        if out.is_empty() {
            out = values.iter().map(|(_, v)| Column::for_value(v)).collect();
        }
        for (column, (_, value)) in out.iter_mut().zip(values) {
            column.push(value);
        }
    }
    debug_assert!(
        out.iter().all(|c| c.len() == rows.len()),
        "every column has every row"
    );
    out
}

/// Binds each column as one array parameter, in order.
pub fn bind_columns(
    mut query: Query<'_, Postgres, PgArguments>,
    columns: Vec<Column>,
) -> Query<'_, Postgres, PgArguments> {
    for column in columns {
        query = match column {
            Column::Text(c) => query.bind(c),
            Column::OptText(c) => query.bind(c),
            Column::Int(c) => query.bind(c),
            Column::Bool(c) => query.bind(c),
            Column::Time(c) => query.bind(c),
        };
    }
    query
}

/// `unnest($1::text[], $2::int8[], ...)` over `columns`.
fn unnest(columns: &[Column]) -> String {
    let params: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.sql_type()))
        .collect();
    format!("unnest({})", params.join(", "))
}

/// The rows of `kind` whose keys are in the arrays `$1..$k` (one per key
/// column, all text), in key byte order, locked with `lock`.
pub fn select_many_sql(kind: Kind, lock: bool) -> String {
    let pk = kind.primary_key();
    let params: Vec<String> = (1..=pk.len()).map(|i| format!("${i}::text[]")).collect();
    let order: Vec<String> = pk.iter().map(|c| format!("{c} COLLATE \"C\"")).collect();
    format!(
        "{} WHERE ({}) IN (SELECT * FROM unnest({})) ORDER BY {}{}",
        kind.select_from(),
        pk.join(", "),
        params.join(", "),
        order.join(", "),
        if lock { " FOR UPDATE" } else { "" }
    )
}

/// INSERT of every row in `columns`; with `upsert`, an existing key is
/// overwritten instead of violating the primary key.
pub fn insert_many_sql(kind: Kind, columns: &[Column], upsert: bool) -> String {
    let names = kind.column_names();
    assert_eq!(names.len(), columns.len(), "a value array per column");
    let mut sql = format!(
        "INSERT INTO {} ({}) SELECT * FROM {}",
        kind.table(),
        names.join(", "),
        unnest(columns)
    );
    if upsert {
        let pk = kind.primary_key();
        let updates: Vec<String> = names
            .iter()
            .filter(|c| !pk.contains(c))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        sql.push_str(&format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            pk.join(", "),
            updates.join(", ")
        ));
    }
    sql
}

/// UPDATE of every row in `columns` by key.
pub fn update_many_sql(kind: Kind, columns: &[Column]) -> String {
    let names = kind.column_names();
    assert_eq!(names.len(), columns.len(), "a value array per column");
    let pk = kind.primary_key();
    let sets: Vec<String> = names
        .iter()
        .filter(|c| !pk.contains(c))
        .map(|c| format!("{c} = v.{c}"))
        .collect();
    let keys: Vec<String> = pk.iter().map(|c| format!("t.{c} = v.{c}")).collect();
    format!(
        "UPDATE {} AS t SET {} FROM {} AS v({}) WHERE {}",
        kind.table(),
        sets.join(", "),
        unnest(columns),
        names.join(", "),
        keys.join(" AND ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_one_array_per_column_and_lock_in_key_byte_order() {
        assert_eq!(
            select_many_sql(Kind::NotificationLog, true),
            "SELECT order_id, user_id, kind, message, sent_count, last_sent_at FROM \
             notification_svc.notification_logs WHERE (order_id, kind) IN (SELECT * FROM \
             unnest($1::text[], $2::text[])) ORDER BY order_id COLLATE \"C\", kind COLLATE \"C\" FOR UPDATE"
        );
        let columns = vec![Column::Text(vec![]), Column::Int(vec![]), Column::Int(vec![])];
        assert_eq!(
            update_many_sql(Kind::ItemStock, &columns),
            "UPDATE item_svc.item_stocks AS t SET stock = v.stock, opening_stock = v.opening_stock FROM \
             unnest($1::text[], $2::int8[], $3::int8[]) AS v(item_id, stock, opening_stock) WHERE \
             t.item_id = v.item_id"
        );
        assert_eq!(
            insert_many_sql(Kind::ItemStock, &columns, true),
            "INSERT INTO item_svc.item_stocks (item_id, stock, opening_stock) SELECT * FROM \
             unnest($1::text[], $2::int8[], $3::int8[]) ON CONFLICT (item_id) DO UPDATE SET \
             stock = EXCLUDED.stock, opening_stock = EXCLUDED.opening_stock"
        );
    }
}
