//! The closed set of PgStore's statements, for statement coverage
//! (`adapters::coverage`): [`PgStore::statement_counts`](super::PgStore)
//! reads how often each ran.

use crate::adapters::coverage::Statement;

/// One statement (or statement family: a row write covers every table) of
/// the store port on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PgStatement {
    /// `BEGIN` of a store transaction.
    Begin,
    /// `record_processed`: one inbox INSERT.
    InboxInsert,
    /// `load_for_update`: one `SELECT ... FOR UPDATE`.
    SelectForUpdate,
    /// `load`: one unlocked SELECT.
    Select,
    /// `save` of a key read absent: INSERT.
    RowInsert,
    /// `save` of a key read present: UPDATE.
    RowUpdate,
    /// `save` of a key not read: INSERT ... ON CONFLICT DO UPDATE.
    RowUpsert,
    /// `enqueue`: one outbox INSERT.
    OutboxInsert,
    /// `COMMIT` of a store transaction.
    Commit,
    /// `record_processed_many`: one inbox INSERT ... unnest.
    InboxInsertMany,
    /// `load_for_update_many`: one `SELECT ... FOR UPDATE` per table.
    SelectForUpdateMany,
    /// `save_many`: INSERT ... unnest of keys read absent, per table.
    RowInsertMany,
    /// `save_many`: UPDATE ... FROM unnest of keys read present, per table.
    RowUpdateMany,
    /// `save_many`: INSERT ... unnest ON CONFLICT DO UPDATE, per table.
    RowUpsertMany,
    /// `enqueue_many`: one outbox INSERT ... unnest.
    OutboxInsertMany,
    /// The relay's claim (`outbox::claim_sql`).
    OutboxClaim,
    /// The claim's quarantine of undecodable rows.
    OutboxQuarantine,
    /// `mark_published`.
    OutboxMark,
    /// `release`.
    OutboxRelease,
    /// `processed`: the consumer's inbox lookup at the deliveries limit.
    InboxProcessed,
    /// `writable`: `current_setting('transaction_read_only')`.
    Writable,
    /// `overdue_sagas`.
    OverdueSagas,
    /// `orders_past_deadline`: the sweeper's query.
    OrdersPastDeadline,
    /// `prune`: the outbox DELETE.
    PruneOutbox,
    /// `prune`: the inbox DELETE.
    PruneInbox,
    /// `snapshot`: the REPEATABLE READ read of every table.
    Snapshot,
}

impl Statement for PgStatement {
    const ALL: &'static [PgStatement] = &[
        PgStatement::Begin,
        PgStatement::InboxInsert,
        PgStatement::SelectForUpdate,
        PgStatement::Select,
        PgStatement::RowInsert,
        PgStatement::RowUpdate,
        PgStatement::RowUpsert,
        PgStatement::OutboxInsert,
        PgStatement::Commit,
        PgStatement::InboxInsertMany,
        PgStatement::SelectForUpdateMany,
        PgStatement::RowInsertMany,
        PgStatement::RowUpdateMany,
        PgStatement::RowUpsertMany,
        PgStatement::OutboxInsertMany,
        PgStatement::OutboxClaim,
        PgStatement::OutboxQuarantine,
        PgStatement::OutboxMark,
        PgStatement::OutboxRelease,
        PgStatement::InboxProcessed,
        PgStatement::Writable,
        PgStatement::OverdueSagas,
        PgStatement::OrdersPastDeadline,
        PgStatement::PruneOutbox,
        PgStatement::PruneInbox,
        PgStatement::Snapshot,
    ];

    fn name(self) -> &'static str {
        match self {
            PgStatement::Begin => "begin",
            PgStatement::InboxInsert => "inbox_insert",
            PgStatement::SelectForUpdate => "select_for_update",
            PgStatement::Select => "select",
            PgStatement::RowInsert => "row_insert",
            PgStatement::RowUpdate => "row_update",
            PgStatement::RowUpsert => "row_upsert",
            PgStatement::OutboxInsert => "outbox_insert",
            PgStatement::Commit => "commit",
            PgStatement::InboxInsertMany => "inbox_insert_many",
            PgStatement::SelectForUpdateMany => "select_for_update_many",
            PgStatement::RowInsertMany => "row_insert_many",
            PgStatement::RowUpdateMany => "row_update_many",
            PgStatement::RowUpsertMany => "row_upsert_many",
            PgStatement::OutboxInsertMany => "outbox_insert_many",
            PgStatement::OutboxClaim => "outbox_claim",
            PgStatement::OutboxQuarantine => "outbox_quarantine",
            PgStatement::OutboxMark => "outbox_mark",
            PgStatement::OutboxRelease => "outbox_release",
            PgStatement::InboxProcessed => "inbox_processed",
            PgStatement::Writable => "writable",
            PgStatement::OverdueSagas => "overdue_sagas",
            PgStatement::OrdersPastDeadline => "orders_past_deadline",
            PgStatement::PruneOutbox => "prune_outbox",
            PgStatement::PruneInbox => "prune_inbox",
            PgStatement::Snapshot => "snapshot",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}
