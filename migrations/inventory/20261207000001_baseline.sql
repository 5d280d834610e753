-- Inventory's schema, `inventory_svc`, as the one-database migrations of
-- `migrations/*.sql` (20261127000001 to 20261206000001) left it: the
-- baseline of the per-service migrations (issue 25). Each service's
-- database holds its own schema and no other, and the schema holds its own
-- migration history (`inventory_svc._sqlx_migrations`: the migrator runs with
-- `search_path` set to the schema), so `pg_dump -n inventory_svc` moves the
-- schema with its history. An install made by the one-database migrations
-- is adopted (this baseline recorded as applied, not run; see
-- `src/adapters/postgres/migrations.rs`). Comments on the tables and
-- columns are in `migrations/20261127000001_init.sql` and its successors.

CREATE SCHEMA IF NOT EXISTS inventory_svc;

CREATE TABLE inventory_svc.inventory_accounts (
    user_id        text   PRIMARY KEY,
    capacity       bigint NOT NULL CHECK (capacity >= 0),
    used_slots     bigint NOT NULL CHECK (used_slots >= 0),
    reserved_slots bigint NOT NULL CHECK (reserved_slots >= 0),
    CHECK (used_slots + reserved_slots <= capacity)
);

CREATE TABLE inventory_svc.slot_reservations (
    order_id   text        PRIMARY KEY,
    user_id    text        NOT NULL,
    item_id    text        NOT NULL,
    slots      bigint      NOT NULL CHECK (slots >= 0),
    state      text        NOT NULL CHECK (state IN ('HELD', 'GRANTED', 'RELEASED', 'REJECTED', 'TOMBSTONE')),
    updated_at timestamptz NOT NULL
);

-- The HTTP API lists a player's granted items.
CREATE INDEX slot_reservations_user ON inventory_svc.slot_reservations (user_id);

-- Processed event ids (the idempotent consumer).
CREATE TABLE inventory_svc.inbox (
    event_id     uuid        PRIMARY KEY,
    processed_at timestamptz NOT NULL
);
CREATE INDEX inbox_processed_at ON inventory_svc.inbox (processed_at);

-- Events committed with the state change that emitted them (the
-- transactional outbox), with the relay's claim, re-drive and quarantine.
CREATE TABLE inventory_svc.outbox (
    seq                  bigserial   PRIMARY KEY,
    event_id             uuid        NOT NULL,
    event_type           text        NOT NULL,
    order_id             text        NOT NULL,
    payload              text        NOT NULL,
    created_at           timestamptz NOT NULL,
    published_count      integer     NOT NULL DEFAULT 0 CHECK (published_count >= 0),
    last_published_at    timestamptz,
    next_publish_at      timestamptz,
    claimed_until        timestamptz,
    quarantined_at       timestamptz,
    quarantine_reason    text,
    needs_schema_version integer,
    CHECK ((published_count = 0) = (last_published_at IS NULL)),
    CONSTRAINT outbox_next_after_publish
        CHECK (next_publish_at IS NULL OR last_published_at IS NOT NULL),
    CONSTRAINT outbox_quarantine_has_reason
        CHECK ((quarantined_at IS NULL) = (quarantine_reason IS NULL)),
    CONSTRAINT outbox_quarantine_not_due
        CHECK (quarantined_at IS NULL OR next_publish_at IS NULL),
    CONSTRAINT outbox_needs_a_version
        CHECK (needs_schema_version IS NULL OR needs_schema_version > 0)
);
CREATE INDEX outbox_unpublished ON inventory_svc.outbox (seq)
    WHERE last_published_at IS NULL AND quarantined_at IS NULL;
CREATE INDEX outbox_next_publish_at ON inventory_svc.outbox (next_publish_at, seq)
    WHERE next_publish_at IS NOT NULL;
CREATE INDEX outbox_created_at ON inventory_svc.outbox (created_at);
CREATE INDEX outbox_order_id ON inventory_svc.outbox (order_id);
