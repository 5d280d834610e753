-- The relay's re-drive query, made index-bound.
--
-- Until now `outbox_due` found republish candidates by evaluating the
-- re-drive rounds (created_at + after * (2^k - 1)) for every published row
-- of the outbox: a sequential scan of the whole outbox, which keeps a day of
-- events, on every relay pass, and a relay passes once per commit. The bench
-- measured 11 ms per pass with 800 rows.
--
-- Now the relay computes, when it publishes an entry, the start of the next
-- re-drive round (`RedrivePolicy::next_republish`, in Rust, the one place
-- that formula lives) and stores it here; NULL means never again. The relay
-- reads `next_publish_at <= now` through a partial index holding only the
-- entries that still have a round to come.
DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['order_svc', 'user_svc', 'inventory_svc', 'item_svc', 'payment_svc',
                             'notification_svc']
    LOOP
        EXECUTE format('ALTER TABLE %I.outbox ADD COLUMN next_publish_at timestamptz', s);
        EXECUTE format('ALTER TABLE %I.outbox ADD CONSTRAINT outbox_next_after_publish
            CHECK (next_publish_at IS NULL OR last_published_at IS NOT NULL)', s);
        -- Entries published before this migration: due for one more publish
        -- at once if they are young enough to have a round left under the
        -- production policy (a 1-hour horizon). One needless republish is
        -- absorbed by the consumers' inboxes; a stranded saga would not be.
        EXECUTE format('UPDATE %I.outbox SET next_publish_at = now()
            WHERE last_published_at IS NOT NULL AND created_at > now() - interval ''1 hour''', s);
        EXECUTE format('CREATE INDEX outbox_next_publish_at ON %I.outbox (next_publish_at)
            WHERE next_publish_at IS NOT NULL', s);
        -- The old re-drive index served only the scan that is gone.
        EXECUTE format('DROP INDEX %I.outbox_last_published_at', s);
    END LOOP;
END
$$;
