-- The relay's claim and the quarantine of undecodable rows (issue 17).
--
-- `claimed_until`: a relay claims the due rows it is about to publish
-- (`UPDATE ... SET claimed_until = now + lease WHERE seq IN (SELECT ...
-- FOR UPDATE SKIP LOCKED)`), so the relays of a service share the work
-- instead of each publishing every row, and a database that refuses writes
-- fails the claim before anything is published. The mark clears it; a
-- crashed relay's rows are due again when the lease ends.
--
-- `quarantined_at` / `quarantine_reason`: a row this build cannot decode
-- (e.g. written by a newer build with a higher `schemaVersion`) is set
-- aside instead of failing every relay pass of its service. It stays for an
-- operator; it is never due again and pruning leaves it.
--
-- The two partial indexes of the relay's query are rebuilt to match it:
-- never-published rows exclude the quarantined, and the re-drive index
-- orders by (next_publish_at, seq), the order the relay reads in, so the
-- query stays an index range scan whatever the statistics say about `now`.
DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['order_svc', 'user_svc', 'inventory_svc', 'item_svc', 'payment_svc',
                             'notification_svc']
    LOOP
        EXECUTE format('ALTER TABLE %I.outbox
            ADD COLUMN claimed_until     timestamptz,
            ADD COLUMN quarantined_at    timestamptz,
            ADD COLUMN quarantine_reason text,
            ADD CONSTRAINT outbox_quarantine_has_reason
                CHECK ((quarantined_at IS NULL) = (quarantine_reason IS NULL)),
            ADD CONSTRAINT outbox_quarantine_not_due
                CHECK (quarantined_at IS NULL OR next_publish_at IS NULL)', s);
        EXECUTE format('DROP INDEX %I.outbox_unpublished', s);
        EXECUTE format('CREATE INDEX outbox_unpublished ON %I.outbox (seq)
            WHERE last_published_at IS NULL AND quarantined_at IS NULL', s);
        EXECUTE format('DROP INDEX %I.outbox_next_publish_at', s);
        EXECUTE format('CREATE INDEX outbox_next_publish_at ON %I.outbox (next_publish_at, seq)
            WHERE next_publish_at IS NOT NULL', s);
    END LOOP;
END
$$;
