-- Rows left for a newer build (issue 24): a relay that claims an outbox row
-- whose `schemaVersion` is newer than the newest it reads does not
-- quarantine it (that set it aside for good, so the new build never
-- published it either); it records the version it needs in
-- `needs_schema_version` and gives the row back. The claim of a build
-- skips rows that need a version it does not read, and takes (and clears)
-- those it does, so during a rolling upgrade the new build's relays publish
-- what the old ones left. Quarantine stays for rows that no build decodes;
-- `purchase-saga outbox quarantined` lists both kinds and `outbox release`
-- makes them due again.
DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['order_svc', 'user_svc', 'inventory_svc', 'item_svc', 'payment_svc',
                             'notification_svc']
    LOOP
        EXECUTE format('ALTER TABLE %I.outbox
            ADD COLUMN needs_schema_version integer,
            ADD CONSTRAINT outbox_needs_a_version CHECK (needs_schema_version IS NULL OR needs_schema_version > 0)', s);
    END LOOP;
END
$$;
