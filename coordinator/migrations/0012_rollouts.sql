-- Schema version 12: rollouts and incidents (ops/rollout/persistence/pg.rs).

-- One row per rollout: the record, whether it is still active (what each engine tick reads)
-- and how many times it was written. A write names the revision it read and changes nothing if
-- another was written meanwhile (one replica's API and another's engine write the same rollout);
-- the engine's writes also check its lease's term in the same transaction.
CREATE TABLE outpost_rollouts (
    id text COLLATE "C" PRIMARY KEY,
    model text COLLATE "C" NOT NULL,
    active boolean NOT NULL,
    revision bigint NOT NULL,
    record json NOT NULL
);
CREATE INDEX outpost_rollouts_active ON outpost_rollouts (id) WHERE active;

-- Automatic rollbacks, kept for people (opened by the engine, closed by an operator).
CREATE TABLE outpost_incidents (
    id text COLLATE "C" PRIMARY KEY,
    record json NOT NULL
);

-- Ids handed out by prefix (`r`, `inc`), shared by every replica.
CREATE TABLE outpost_counters (
    prefix text COLLATE "C" PRIMARY KEY,
    n bigint NOT NULL
);
