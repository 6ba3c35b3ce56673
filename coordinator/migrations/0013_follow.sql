-- Schema version 13: what lets a rollout's engine follow a model's records as any replica
-- stores them (monitoring/follow/pg.rs), by the id of the transaction that stored each.
--
-- A follower reads the rows whose transaction id lies between its last look's horizon and the
-- current one: `pg_snapshot_xmin(pg_current_snapshot())`, below which every transaction has
-- ended. A row's id is fixed when its transaction stores it, and a transaction that is still
-- running holds the horizon below its own id, so a slow writer's rows are read at a later look,
-- never skipped; each row is read once.

-- Report and shadow windows are stored once and never replaced: their transaction's id.
ALTER TABLE outpost_traffic ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX outpost_traffic_by_xid ON outpost_traffic (model, xid);
ALTER TABLE outpost_shadow ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX outpost_shadow_by_xid ON outpost_shadow (model, xid);

-- A label may be replaced, and a running sum must take the old one away: every label stored
-- or replaced is also a row here, with the label it replaced (none for a new one). Pruned with
-- the labels, by the prediction's time.
CREATE TABLE outpost_label_changes (
    model text COLLATE "C" NOT NULL,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    device text COLLATE "C" NOT NULL,
    prediction_id bigint NOT NULL,
    predicted_at_ms bigint NOT NULL,
    label json NOT NULL,
    replaced json,
    PRIMARY KEY (model, xid, device, prediction_id)
);
CREATE INDEX outpost_label_changes_by_time ON outpost_label_changes (predicted_at_ms);
