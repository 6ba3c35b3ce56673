-- Schema version 4: what the alert engine and retraining keep (ops/alerts/store/pg.rs,
-- ops/retraining/store/pg.rs).

-- One row per alert, by the fingerprint of its labels. Written only by the replica holding the
-- `alerts` lease, each write checking its term (outpost_leases) in the same transaction.
CREATE TABLE outpost_alerts (
    fingerprint text COLLATE "C" PRIMARY KEY,
    record json NOT NULL
);

-- Every retraining run, by model and start time (a later write of the same run replaces it).
CREATE TABLE outpost_retraining_runs (
    model text COLLATE "C" NOT NULL,
    started_ms bigint NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (model, started_ms)
);
