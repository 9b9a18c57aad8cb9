-- linkwatch schema, version 1.
-- Migrations are append-only: never edit this file once released; add a new one.
-- Timestamps are ISO-8601 UTC text ('2026-11-29T08:00:00.000Z'): they sort as text and SQLite's
-- date functions read them. The views at the end are the stable interface for people and scripts;
-- the tables behind them may change between versions.

-- One row per org, updated in place by every check: storage grows with changes, not with checks.
CREATE TABLE org_state (
    org_id               TEXT PRIMARY KEY,
    org_name             TEXT NOT NULL,
    status               TEXT,              -- the confirmed status; NULL until the first success
    status_since         TEXT,
    candidate_status     TEXT,              -- seen, awaiting confirm_checks
    candidate_count      INTEGER NOT NULL DEFAULT 0,
    candidate_since      TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    failing_since        TEXT,
    failing_alerted      INTEGER NOT NULL DEFAULT 0,
    first_checked_at     TEXT NOT NULL,
    last_checked_at      TEXT NOT NULL,
    last_success_at      TEXT,
    last_error           TEXT,              -- the last failure in plain words; NULL after a success
    checks               INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Every confirmed status, including the first one seen (from_status NULL).
CREATE TABLE transitions (
    id                INTEGER PRIMARY KEY,
    org_id            TEXT NOT NULL,
    from_status       TEXT,
    to_status         TEXT NOT NULL,
    changed_at        TEXT NOT NULL,
    previous_lasted_s INTEGER
) STRICT;
CREATE INDEX transitions_by_org ON transitions (org_id, changed_at);

-- Failed checks, one row each (pruned by retention).
CREATE TABLE check_failures (
    id          INTEGER PRIMARY KEY,
    org_id      TEXT NOT NULL,
    checked_at  TEXT NOT NULL,
    class       TEXT NOT NULL,
    http_status INTEGER,
    error_code  TEXT,
    detail      TEXT NOT NULL
) STRICT;
CREATE INDEX check_failures_by_org ON check_failures (org_id, checked_at);

-- Events, written in the same transaction as the state that caused them.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,            -- stable id for receivers to deduplicate
    org_id     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    payload    TEXT NOT NULL CHECK (json_valid(payload))
) STRICT;
CREATE INDEX events_by_org ON events (org_id, created_at);

-- The transactional outbox: one row per (event, channel), written with the event.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    event_seq       INTEGER NOT NULL REFERENCES events (seq),
    channel         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    sent_at         TEXT,
    UNIQUE (event_seq, channel)
) STRICT;
CREATE INDEX outbox_due ON outbox (channel, next_attempt_at) WHERE state = 'pending';

CREATE VIEW current_status AS
SELECT org_id, org_name, status, status_since AS since, last_checked_at,
       consecutive_failures, last_error
FROM org_state;

CREATE VIEW status_changes AS
SELECT t.org_id, o.org_name, t.from_status, t.to_status, t.changed_at, t.previous_lasted_s
FROM transitions AS t JOIN org_state AS o USING (org_id);

CREATE VIEW deliveries AS
SELECT e.id AS event_id, e.kind, e.org_id, o.org_name, x.channel, x.state, x.attempts,
       x.last_error, x.created_at, x.sent_at, x.next_attempt_at
FROM outbox AS x
JOIN events AS e ON e.seq = x.event_seq
LEFT JOIN org_state AS o ON o.org_id = e.org_id;

CREATE VIEW failed_checks AS
SELECT f.org_id, o.org_name, f.checked_at, f.class, f.http_status, f.error_code, f.detail
FROM check_failures AS f LEFT JOIN org_state AS o USING (org_id);
