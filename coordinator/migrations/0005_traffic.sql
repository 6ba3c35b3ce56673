-- Schema version 5: monitoring's traffic (monitoring/slo/pg.rs): objectives, every report and
-- shadow window as first stored, and the windows' minute and hour roll-ups.
-- Times are ms since the epoch; histograms are postcard-encoded LogHistograms.

-- A model's objectives (JSON SloSpec).
CREATE TABLE outpost_slo_specs (
    model text COLLATE "C" PRIMARY KEY,
    spec json NOT NULL
);

-- One device's traffic of one model version in one report window ending at `end_ms`: the first
-- arrival (a resend changes nothing).
CREATE TABLE outpost_traffic (
    model text COLLATE "C" NOT NULL,
    end_ms bigint NOT NULL,
    device text COLLATE "C" NOT NULL,
    version text COLLATE "C" NOT NULL,
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    latency bytea NOT NULL,
    PRIMARY KEY (model, end_ms, device, version)
);

-- A shadow version's agreement with its primary in one device's window (the first arrival).
CREATE TABLE outpost_shadow (
    model text COLLATE "C" NOT NULL,
    end_ms bigint NOT NULL,
    device text COLLATE "C" NOT NULL,
    version text COLLATE "C" NOT NULL,
    primary_version text COLLATE "C" NOT NULL,
    compared bigint NOT NULL,
    agreed bigint NOT NULL,
    PRIMARY KEY (model, end_ms, device, version)
);

-- The windows of `outpost_traffic` summed per minute and hour (`width_ms`) holding their end:
-- per version (`by_label` false, `label` empty, `value` the version), and per value of each
-- label the sending device carries (`by_label` true). Each replica adds into rows of its own
-- `shard`, so replicas storing reports at once do not queue on a model's current minute; a sum
-- reads every shard. A window is added in the transaction that stores it, only when it is new.
CREATE TABLE outpost_traffic_rollups (
    model text COLLATE "C" NOT NULL,
    by_label boolean NOT NULL,
    width_ms bigint NOT NULL,
    start_ms bigint NOT NULL,
    label text COLLATE "C" NOT NULL,
    value text COLLATE "C" NOT NULL,
    shard smallint NOT NULL,
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    latency bytea NOT NULL,
    PRIMARY KEY (model, by_label, width_ms, start_ms, label, value, shard)
);
-- What retention prunes by (a bucket goes once its last millisecond is older than the cutoff).
CREATE INDEX outpost_traffic_rollups_by_end ON outpost_traffic_rollups ((start_ms + width_ms));
