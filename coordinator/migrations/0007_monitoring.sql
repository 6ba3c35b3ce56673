-- Schema version 7: the rest of monitoring. The drift history (monitoring/report/history/pg.rs):
-- every verdict set as it came, what each device reported per model, and the verdicts' minute
-- and hour roll-ups; the predictions devices uploaded (monitoring/dataset.rs), for datasets.

-- One device's verdicts of one model version in one drift evaluation at `at_ms` (JSON
-- ModelDrift): the first arrival (a resend changes nothing).
CREATE TABLE outpost_drift_verdicts (
    model text COLLATE "C" NOT NULL,
    at_ms bigint NOT NULL,
    device text COLLATE "C" NOT NULL,
    version text COLLATE "C" NOT NULL,
    verdicts json NOT NULL,
    PRIMARY KEY (model, at_ms, device, version)
);

-- What a device reported of a model (postcard DeviceDrift: the versions in its newest report
-- and the one before, when it last reported each), locked while a verdict of it is counted.
CREATE TABLE outpost_drift_devices (
    model text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (model, device)
);

-- The verdicts counted per minute and hour (`width_ms`) holding their time, per version
-- (postcard DriftBucket), each replica adding into rows of its own `shard`; a read merges them.
CREATE TABLE outpost_drift_rollups (
    model text COLLATE "C" NOT NULL,
    width_ms bigint NOT NULL,
    start_ms bigint NOT NULL,
    version text COLLATE "C" NOT NULL,
    shard smallint NOT NULL,
    bucket bytea NOT NULL,
    PRIMARY KEY (model, width_ms, start_ms, version, shard)
);
-- What retention prunes by (a bucket goes once its last millisecond is older than the cutoff).
CREATE INDEX outpost_drift_rollups_by_end ON outpost_drift_rollups ((start_ms + width_ms));

-- What is kept of one uploaded prediction (JSON LoggedPrediction), by (model, device, prediction
-- id − 2^63): a later upload of the same prediction replaces it. `at_ms`: when it was made,
-- what retention goes by.
CREATE TABLE outpost_predictions (
    model text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    prediction_id bigint NOT NULL,
    at_ms bigint NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (model, device, prediction_id)
);
CREATE INDEX outpost_predictions_by_time ON outpost_predictions (at_ms);
