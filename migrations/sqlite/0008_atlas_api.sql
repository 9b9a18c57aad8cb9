-- What Atlas's answers add to a live migration's row: its migration hosts (a JSON array of
-- strings; NULL when the answer had none), shown on the page.
ALTER TABLE migration_state ADD COLUMN migration_hosts TEXT;

DROP VIEW migration_status;
CREATE VIEW migration_status AS
SELECT m.name AS migration, m.migration_id, m.org_id, o.org_name, m.group_id, m.status,
       m.status_since AS since, m.ready_for_cutover, m.ready_since, m.deadline AS estimated_deadline,
       m.lag_s, m.last_checked_at, m.consecutive_failures, m.last_error, m.migration_hosts
FROM migration_state AS m LEFT JOIN org_state AS o USING (org_id);

-- An API version announced for retirement (`Deprecation` / `Sunset` response headers): one row
-- per API instance (its base URL) and version, written with its `api_deprecated` event, so the
-- event is sent once, also across restarts and leaders.
CREATE TABLE api_deprecations (
    api           TEXT NOT NULL,      -- 'atlas'
    base_url      TEXT NOT NULL,      -- the API instance
    version       TEXT NOT NULL,      -- the resource version asked for, e.g. 2023-01-01
    deprecation   TEXT,               -- the Deprecation header as sent
    sunset        TEXT,               -- the Sunset header as sent
    sunset_at     TEXT,               -- the Sunset header read as a time, when it is one
    first_seen_at TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    PRIMARY KEY (api, base_url, version)
) STRICT;
