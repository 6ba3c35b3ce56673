-- Schema version 10: what the fleet is told (fleet/roots/pg.rs, fleet/desired/pg.rs).

-- The trust root chain, one signed statement (file form) per version. A version is inserted
-- only if it is not there: two replicas accepting different statements as one version, the
-- second is refused.
CREATE TABLE outpost_roots (
    version bigint PRIMARY KEY,
    statement bytea NOT NULL
);

-- Each device's desired state. A deploy locks the rows of its devices in id order, so two
-- replicas deploying to overlapping devices take turns and every revision is used once.
CREATE TABLE outpost_desired (
    device text COLLATE "C" PRIMARY KEY,
    record json NOT NULL
);
