-- Schema version 1: the replicas of a coordinator cluster and the leases of its engines.
-- Applied by `outpost-coordinator serve` under an advisory lock (base/pg.rs); never edit a
-- migration that has shipped: add the next number instead.

-- Every coordinator process on this database, by a replica id unique to the process.
CREATE TABLE outpost_replicas (
    id text PRIMARY KEY,
    -- The coordinator's version, and the newest schema version it knows.
    version text NOT NULL,
    schema integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- One row per engine (rollouts, alerts, retention…): who holds it, until when, and the term —
-- the fencing token, raised at every change of holder. Every write an engine makes checks its
-- term in the same transaction, so a deposed holder's late write fails. Times are the
-- database's clock (now()), never a replica's.
CREATE TABLE outpost_leases (
    engine text PRIMARY KEY,
    holder text NOT NULL,
    term bigint NOT NULL CHECK (term > 0),
    expires_at timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
