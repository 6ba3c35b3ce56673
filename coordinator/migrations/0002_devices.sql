-- Schema version 2: the fleet's records (fleet/devices/pg.rs): enrolment tokens, devices, the
-- envelopes they sent, the seqs of acks sent to them, and every revocation.
-- Text keys sort by bytes (COLLATE "C"), as the sled store's keys do. Records are `json`, the
-- text exactly as encoded: `jsonb` refuses the escape \u0000, which a device may send in any
-- string it reports, and one such record must not stop its batch from being stored.

-- sha256(token) hex → the token's record (JSON): the token itself is never stored.
CREATE TABLE outpost_tokens (
    hash text COLLATE "C" PRIMARY KEY,
    record json NOT NULL
);

-- One row per enrolled device: its record (JSON, what the API shows), and the id of its key,
-- unique while the device exists (find the device of an envelope read from a file).
CREATE TABLE outpost_devices (
    id text COLLATE "C" PRIMARY KEY,
    key_id text COLLATE "C" NOT NULL UNIQUE,
    record json NOT NULL
);

-- Devices enrolled when one key signed releases and control messages (a store migrated from
-- an older single-node coordinator): their control messages stay signed with the release key.
CREATE TABLE outpost_legacy_control (
    device text COLLATE "C" PRIMARY KEY
);

-- Every envelope a device sent, stored once per (device, seq), exactly as received and
-- verified. `seq` is the device's u64 seq − 2^63 (a bigint that sorts the same; add
-- 9223372036854775808::numeric to read it). `received_ms`: when this coordinator stored it, by
-- its clock (what retention goes by); NULL for envelopes from before that was kept.
CREATE TABLE outpost_envelopes (
    device text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    wire bytea NOT NULL,
    received_ms bigint,
    PRIMARY KEY (device, seq)
);

-- The seq of the last ack (or other envelope) the coordinator sent each device.
CREATE TABLE outpost_ack_seqs (
    device text COLLATE "C" PRIMARY KEY,
    seq bigint NOT NULL
);

-- Every device ever revoked, deleted ones included (never removed): the revocation list's
-- source, and what refuses a revoked id at enrolment.
CREATE TABLE outpost_revocations (
    device text COLLATE "C" PRIMARY KEY,
    record json NOT NULL
);
