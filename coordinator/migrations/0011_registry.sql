-- Schema version 11: the model registry (models/registry/store/pg.rs).

-- One row per version; the artifact's sha256 beside the record, so a purge can ask whether
-- another version still names it. A change to a model's versions locks all its rows.
CREATE TABLE outpost_registry (
    name text COLLATE "C" NOT NULL,
    version text COLLATE "C" NOT NULL,
    bundle_sha256 text COLLATE "C" NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX outpost_registry_by_artifact ON outpost_registry (bundle_sha256);

-- Each model's validation thresholds.
CREATE TABLE outpost_registry_policies (
    name text COLLATE "C" PRIMARY KEY,
    policy json NOT NULL
);

-- The artifacts every replica serves: signed bundle files, gzip-compressed, by the sha256 of
-- the signed file, in 1 MiB chunks (each row says how many the artifact has, so a missing
-- chunk is found, not served short).
CREATE TABLE outpost_blobs (
    sha256 text COLLATE "C" NOT NULL,
    chunk integer NOT NULL,
    chunks integer NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (sha256, chunk)
);
