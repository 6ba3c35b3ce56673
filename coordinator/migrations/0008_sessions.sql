-- Schema version 8: the dashboard's sessions (http/dashboard/sessions/pg.rs), shared by every
-- replica so that a restart or another replica does not sign anyone out. A row is keyed by the
-- sha256 of the session id (the cookie's value is never stored) and holds the sha256 of the API
-- token it signed in with (never the token), its CSRF secret and when it expires.
CREATE TABLE outpost_dashboard_sessions (
    id_hash text COLLATE "C" PRIMARY KEY,
    token_hash text COLLATE "C" NOT NULL,
    csrf text NOT NULL,
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL
);
CREATE INDEX outpost_dashboard_sessions_expiry ON outpost_dashboard_sessions (expires_at_ms);
