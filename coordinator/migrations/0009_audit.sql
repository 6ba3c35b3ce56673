-- Schema version 9: the audit log (base/audit/pg.rs). Every replica appends to one hash chain:
-- a group of entries is chained from the head row, which the appending transaction locks, so
-- replicas append one after another and the sequence has no gaps. Each entry is kept as the
-- JSON it was hashed from; `audit verify` recomputes every hash and compares the last with the
-- head, so an edited, removed or added row is found.
CREATE TABLE outpost_audit (
    seq bigint PRIMARY KEY,
    entry json NOT NULL
);

CREATE TABLE outpost_audit_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint NOT NULL,
    hash text NOT NULL
);
INSERT INTO outpost_audit_head (seq, hash)
VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000');
