-- A scratch row that /healthz rewrites to prove the database still takes writes.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
