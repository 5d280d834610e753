-- purchase-saga: one schema per service (DESIGN.md "Each service owns its
-- tables"). Schema names carry a `_svc` suffix so that none needs quoting:
-- `order` and `user` are reserved words in SQL.
--
--   order_svc         orders, catalog
--   user_svc          accounts, balance_holds
--   inventory_svc     inventory_accounts, slot_reservations
--   item_svc          item_stocks, stock_reservations
--   payment_svc       payments
--   notification_svc  notification_logs
--
-- Every schema also has its own `inbox` (ids of the events the service has
-- processed: the idempotent consumer) and `outbox` (events committed with the
-- state change that emitted them: the transactional outbox), so no service
-- ever touches another's tables.
--
-- Columns map the row types of src/domain/rows.rs one to one; enum values
-- are the `as_str()` spellings; money and counts are bigint minor units;
-- timestamps are timestamptz at millisecond precision (`Timestamp` is
-- milliseconds since the epoch).

-- ---------------------------------------------------------------- order_svc
CREATE SCHEMA IF NOT EXISTS order_svc;

CREATE TABLE order_svc.orders (
    order_id           text        PRIMARY KEY,
    user_id            text        NOT NULL,
    item_id            text        NOT NULL,
    item_name          text        NOT NULL,
    quantity           bigint      NOT NULL CHECK (quantity > 0),
    total_amount       bigint      NOT NULL CHECK (total_amount >= 0),
    payment_method     text        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED')),
    failed_step        text        CHECK (failed_step IN ('USER_VALIDATION', 'INVENTORY_RESERVATION',
                                                          'ITEM_RESERVATION', 'PAYMENT')),
    failure_reason     text,
    created_at         timestamptz NOT NULL,
    deadline_at        timestamptz NOT NULL,
    deadline_signalled boolean     NOT NULL,
    updated_at         timestamptz NOT NULL,
    -- Only a FAILED order names the step it failed at.
    CHECK ((status = 'FAILED') = (failed_step IS NOT NULL))
);

-- The deadline sweeper's query: PENDING, not yet signalled, deadline passed.
CREATE INDEX orders_deadline_due ON order_svc.orders (deadline_at)
    WHERE status = 'PENDING' AND NOT deadline_signalled;

CREATE TABLE order_svc.catalog (
    item_id    text   PRIMARY KEY,
    name       text   NOT NULL,
    unit_price bigint NOT NULL CHECK (unit_price >= 0)
);

-- ----------------------------------------------------------------- user_svc
CREATE SCHEMA IF NOT EXISTS user_svc;

CREATE TABLE user_svc.accounts (
    user_id         text   PRIMARY KEY,
    balance         bigint NOT NULL CHECK (balance >= 0),
    opening_balance bigint NOT NULL CHECK (opening_balance >= 0)
);

CREATE TABLE user_svc.balance_holds (
    order_id   text        PRIMARY KEY,
    user_id    text        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount >= 0),
    state      text        NOT NULL CHECK (state IN ('HELD', 'RELEASED', 'REJECTED', 'TOMBSTONE')),
    updated_at timestamptz NOT NULL
);

-- ------------------------------------------------------------ inventory_svc
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

-- ----------------------------------------------------------------- item_svc
CREATE SCHEMA IF NOT EXISTS item_svc;

CREATE TABLE item_svc.item_stocks (
    item_id       text   PRIMARY KEY,
    stock         bigint NOT NULL CHECK (stock >= 0),
    opening_stock bigint NOT NULL CHECK (opening_stock >= 0)
);

CREATE TABLE item_svc.stock_reservations (
    order_id   text        PRIMARY KEY,
    item_id    text        NOT NULL,
    quantity   bigint      NOT NULL CHECK (quantity >= 0),
    state      text        NOT NULL CHECK (state IN ('HELD', 'RELEASED', 'REJECTED', 'TOMBSTONE')),
    updated_at timestamptz NOT NULL
);

-- -------------------------------------------------------------- payment_svc
CREATE SCHEMA IF NOT EXISTS payment_svc;

CREATE TABLE payment_svc.payments (
    order_id   text        PRIMARY KEY,
    user_id    text        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount >= 0),
    method     text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('PROCESSED', 'DECLINED', 'CANCELLED')),
    reason     text,
    updated_at timestamptz NOT NULL
);

-- --------------------------------------------------------- notification_svc
CREATE SCHEMA IF NOT EXISTS notification_svc;

CREATE TABLE notification_svc.notification_logs (
    order_id     text        NOT NULL,
    user_id      text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('PURCHASE_COMPLETED', 'PURCHASE_FAILED',
                                                      'PAYMENT_COMPLETED', 'PAYMENT_FAILED')),
    message      text        NOT NULL,
    sent_count   bigint      NOT NULL CHECK (sent_count >= 0),
    last_sent_at timestamptz NOT NULL,
    PRIMARY KEY (order_id, kind)
);

-- ------------------------------------------- inbox and outbox, per service
-- The same two tables in each schema. A DO block keeps the six copies
-- identical.
DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['order_svc', 'user_svc', 'inventory_svc', 'item_svc', 'payment_svc',
                             'notification_svc']
    LOOP
        -- Processed event ids. The primary key is what serializes two
        -- replicas handling the same event: the second INSERT waits for the
        -- first transaction and then finds the id.
        EXECUTE format('CREATE TABLE %I.inbox (
            event_id     uuid        PRIMARY KEY,
            processed_at timestamptz NOT NULL
        )', s);
        -- Pruning deletes ids older than the retention.
        EXECUTE format('CREATE INDEX inbox_processed_at ON %I.inbox (processed_at)', s);

        -- Events to publish, in commit order. `payload` is the exact
        -- encoded event (`Event::encode`), published byte for byte.
        EXECUTE format('CREATE TABLE %I.outbox (
            seq               bigserial   PRIMARY KEY,
            event_id          uuid        NOT NULL,
            event_type        text        NOT NULL,
            order_id          text        NOT NULL,
            payload           text        NOT NULL,
            created_at        timestamptz NOT NULL,
            published_count   integer     NOT NULL DEFAULT 0 CHECK (published_count >= 0),
            last_published_at timestamptz,
            CHECK ((published_count = 0) = (last_published_at IS NULL))
        )', s);
        -- The relay's hot path: entries never published, in seq order.
        EXECUTE format('CREATE INDEX outbox_unpublished ON %I.outbox (seq)
            WHERE last_published_at IS NULL', s);
        -- Re-drive candidates (published, maybe due again) and pruning.
        EXECUTE format('CREATE INDEX outbox_last_published_at ON %I.outbox (last_published_at)
            WHERE last_published_at IS NOT NULL', s);
        EXECUTE format('CREATE INDEX outbox_created_at ON %I.outbox (created_at)', s);
        -- An order's timeline (GET /orders/{id}).
        EXECUTE format('CREATE INDEX outbox_order_id ON %I.outbox (order_id)', s);
    END LOOP;
END
$$;
