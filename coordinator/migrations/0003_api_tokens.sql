-- Schema version 3: the API tokens an admin issued (http/auth/pg.rs), one row per token by its
-- sha256 (the token itself is never stored); the name is unique, so two replicas issuing one
-- name at once cannot both succeed. The admin bootstrap token is not here: each replica reads
-- it from its Secret.
CREATE TABLE outpost_api_tokens (
    hash text COLLATE "C" PRIMARY KEY,
    name text COLLATE "C" NOT NULL UNIQUE,
    record json NOT NULL
);
