-- Atlas live migrations: one row per followed migration, updated in place by every check (as
-- org_state), its status changes, and a compact lag series (a sample when the lag moves a
-- step from the last sample, not one per check).

CREATE TABLE migration_state (
    migration_id         text PRIMARY KEY,   -- Atlas's liveMigrationId
    name                 text NOT NULL,      -- [[migration]] name
    org_id               text NOT NULL,      -- the source org
    group_id             text NOT NULL,      -- the Atlas project
    status               text,               -- NULL until the first success
    status_since         timestamptz,
    ready_for_cutover    boolean NOT NULL DEFAULT false,
    ready_since          timestamptz,        -- readiness first seen: the estimated window's start
    deadline             timestamptz,        -- estimated end of the cutover window, while one runs
    lag_s                bigint,
    lag_high             boolean NOT NULL DEFAULT false,
    lag_high_since       timestamptz,
    lag_streak           integer NOT NULL DEFAULT 0,
    warned_s             bigint,             -- the smallest deadline warning sent (seconds left)
    link_break_reported  timestamptz,        -- the link break already reported
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    failing_alerted      boolean NOT NULL DEFAULT false,
    first_checked_at     timestamptz NOT NULL,
    last_checked_at      timestamptz NOT NULL,
    last_success_at      timestamptz,
    last_error           text,
    checks               bigint NOT NULL DEFAULT 0,
    event_count          bigint NOT NULL DEFAULT 0
);

CREATE TABLE migration_transitions (
    id                bigserial PRIMARY KEY,
    migration_id      text NOT NULL,
    from_status       text,
    to_status         text NOT NULL,
    changed_at        timestamptz NOT NULL,
    previous_lasted_s bigint
);
CREATE INDEX migration_transitions_by_id ON migration_transitions (migration_id, changed_at);

-- lag_s NULL: Atlas stopped reporting a lag (cutover, or the migration ended).
CREATE TABLE migration_lag (
    migration_id text NOT NULL,
    at           timestamptz NOT NULL,
    lag_s        bigint,
    PRIMARY KEY (migration_id, at)
);

CREATE VIEW migration_status AS
SELECT m.name AS migration, m.migration_id, m.org_id, o.org_name, m.group_id, m.status,
       m.status_since AS since, m.ready_for_cutover, m.ready_since, m.deadline AS estimated_deadline,
       m.lag_s, m.last_checked_at, m.consecutive_failures, m.last_error
FROM migration_state AS m LEFT JOIN org_state AS o USING (org_id);

CREATE VIEW migration_changes AS
SELECT m.name AS migration, t.migration_id, m.org_id, t.from_status, t.to_status, t.changed_at,
       t.previous_lasted_s
FROM migration_transitions AS t JOIN migration_state AS m USING (migration_id);
