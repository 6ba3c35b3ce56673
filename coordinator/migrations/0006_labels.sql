-- Schema version 6: ground-truth labels (monitoring/quality/pg.rs) and their minute and hour
-- roll-ups by prediction time.

-- One label per (model, device, prediction): a later label for the same prediction replaces it.
-- `prediction_id` is the agent's u64 id − 2^63 (a bigint that sorts the same). `record` is the
-- JSON StoredLabel; `predicted_at_ms` its prediction time again, what retention goes by.
CREATE TABLE outpost_labels (
    model text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    prediction_id bigint NOT NULL,
    predicted_at_ms bigint NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (model, device, prediction_id)
);
CREATE INDEX outpost_labels_by_time ON outpost_labels (predicted_at_ms);

-- The labels counted per minute and hour (`width_ms`) holding their prediction time: per
-- version (`by_label` false, `label` and `value` empty) and per value of each label the device
-- carries (`by_label` true). `counts` is a postcard map of (truth, predicted) → count and the
-- count without a predicted label, *signed*: each replica adds into rows of its own `shard`,
-- and a replaced label is taken away in the shard of the replica that replaced it, so one
-- shard's row may hold a negative count; the sum over the shards is exact.
CREATE TABLE outpost_label_rollups (
    model text COLLATE "C" NOT NULL,
    by_label boolean NOT NULL,
    width_ms bigint NOT NULL,
    start_ms bigint NOT NULL,
    label text COLLATE "C" NOT NULL,
    value text COLLATE "C" NOT NULL,
    version text COLLATE "C" NOT NULL,
    shard smallint NOT NULL,
    counts bytea NOT NULL,
    PRIMARY KEY (model, by_label, width_ms, start_ms, label, value, version, shard)
);
-- What retention prunes by (a bucket goes once its last millisecond is older than the cutoff).
CREATE INDEX outpost_label_rollups_by_end ON outpost_label_rollups ((start_ms + width_ms));
