-- Atlas live migrations: one row per followed migration, updated in place by every check (as
-- org_state), its status changes, and a compact lag series (a sample when the lag moves a
-- step from the last sample, not one per check).

CREATE TABLE migration_state (
    migration_id         TEXT PRIMARY KEY,   -- Atlas's liveMigrationId
    name                 TEXT NOT NULL,      -- [[migration]] name
    org_id               TEXT NOT NULL,      -- the source org
    group_id             TEXT NOT NULL,      -- the Atlas project
    status               TEXT,               -- NULL until the first success
    status_since         TEXT,
    ready_for_cutover    INTEGER NOT NULL DEFAULT 0,
    ready_since          TEXT,               -- readiness first seen: the estimated window's start
    deadline             TEXT,               -- estimated end of the cutover window, while one runs
    lag_s                INTEGER,
    lag_high             INTEGER NOT NULL DEFAULT 0,
    lag_high_since       TEXT,
    lag_streak           INTEGER NOT NULL DEFAULT 0,
    warned_s             INTEGER,            -- the smallest deadline warning sent (seconds left)
    link_break_reported  TEXT,               -- the link break already reported
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    failing_since        TEXT,
    failing_alerted      INTEGER NOT NULL DEFAULT 0,
    first_checked_at     TEXT NOT NULL,
    last_checked_at      TEXT NOT NULL,
    last_success_at      TEXT,
    last_error           TEXT,
    checks               INTEGER NOT NULL DEFAULT 0,
    event_count          INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE migration_transitions (
    id                INTEGER PRIMARY KEY,
    migration_id      TEXT NOT NULL,
    from_status       TEXT,
    to_status         TEXT NOT NULL,
    changed_at        TEXT NOT NULL,
    previous_lasted_s INTEGER
) STRICT;
CREATE INDEX migration_transitions_by_id ON migration_transitions (migration_id, changed_at);

-- lag_s NULL: Atlas stopped reporting a lag (cutover, or the migration ended).
CREATE TABLE migration_lag (
    migration_id TEXT NOT NULL,
    at           TEXT NOT NULL,
    lag_s        INTEGER,
    PRIMARY KEY (migration_id, at)
) STRICT;

CREATE VIEW migration_status AS
SELECT m.name AS migration, m.migration_id, m.org_id, o.org_name, m.group_id, m.status,
       m.status_since AS since, m.ready_for_cutover, m.ready_since, m.deadline AS estimated_deadline,
       m.lag_s, m.last_checked_at, m.consecutive_failures, m.last_error
FROM migration_state AS m LEFT JOIN org_state AS o USING (org_id);

CREATE VIEW migration_changes AS
SELECT m.name AS migration, t.migration_id, m.org_id, t.from_status, t.to_status, t.changed_at,
       t.previous_lasted_s
FROM migration_transitions AS t JOIN migration_state AS m USING (migration_id);
