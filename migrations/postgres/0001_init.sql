-- linkwatch schema for PostgreSQL, version 1: the same tables and views as the SQLite schema
-- (migrations/sqlite/, 0001 to 0004), with timestamptz, boolean, jsonb and bigserial, plus the
-- leader lease and the outbox claims that several instances on one database need.
-- Migrations are append-only: never edit this file once released; add a new one.
-- The views at the end are the stable interface for people and scripts.

-- One row per org, updated in place by every check: storage grows with changes, not with checks.
CREATE TABLE org_state (
    org_id               text PRIMARY KEY,
    org_name             text NOT NULL,
    status               text,                     -- the confirmed status; NULL until the first success
    status_since         timestamptz,
    candidate_status     text,                     -- seen, awaiting confirm_checks
    candidate_count      integer NOT NULL DEFAULT 0,
    candidate_since      timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    failing_alerted      boolean NOT NULL DEFAULT false,
    first_checked_at     timestamptz NOT NULL,
    last_checked_at      timestamptz NOT NULL,
    last_success_at      timestamptz,
    last_error           text,                     -- the last failure in plain words; NULL after a success
    checks               bigint NOT NULL DEFAULT 0,
    previous_status      text,                     -- the status before the current one
    broken_since         timestamptz,              -- when the link left SYNCED; NULL while SYNCED
    event_count          bigint NOT NULL DEFAULT 0 -- how many events this org has had
);

-- Every confirmed status, including the first one seen (from_status NULL).
CREATE TABLE transitions (
    id                bigserial PRIMARY KEY,
    org_id            text NOT NULL,
    from_status       text,
    to_status         text NOT NULL,
    changed_at        timestamptz NOT NULL,
    previous_lasted_s bigint
);
CREATE INDEX transitions_by_org ON transitions (org_id, changed_at);

-- Failed checks, one row each (pruned by retention).
CREATE TABLE check_failures (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL,
    checked_at  timestamptz NOT NULL,
    class       text NOT NULL,
    http_status integer,
    error_code  text,
    detail      text NOT NULL
);
CREATE INDEX check_failures_by_org ON check_failures (org_id, checked_at);

-- Events, written in the same transaction as the state that caused them.
CREATE TABLE events (
    seq        bigserial PRIMARY KEY,
    id         text NOT NULL UNIQUE,               -- stable id for receivers to deduplicate
    org_id     text NOT NULL,
    kind       text NOT NULL,
    created_at timestamptz NOT NULL,
    payload    jsonb NOT NULL
);
CREATE INDEX events_by_org ON events (org_id, created_at);

-- The transactional outbox: one row per (event, channel), written with the event. A row is
-- claimed by one instance for one send (claim_token until claim_expires_at).
CREATE TABLE outbox (
    id               bigserial PRIMARY KEY,
    event_seq        bigint NOT NULL REFERENCES events (seq),
    channel          text NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    created_at       timestamptz NOT NULL,
    sent_at          timestamptz,
    claim_token      text,
    claimed_by       text,
    claim_expires_at timestamptz,
    UNIQUE (event_seq, channel)
);
CREATE INDEX outbox_due ON outbox (channel, event_seq) WHERE state = 'pending';

-- When each route last reminded about each org, keyed by what the route says.
CREATE TABLE reminders (
    org_id       text NOT NULL,
    route        text NOT NULL,
    last_sent_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, route)
);

-- This database's identity (part of every event id) and the health probe's scratch row.
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO meta (key, value) VALUES ('instance', md5(random()::text || clock_timestamp()::text));

-- Who leads: one row, renewed by its holder on the database's clock. `epoch` changes whenever
-- the holder does and fences every write of the leader.
CREATE TABLE leader_lease (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    epoch      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Timestamps as linkwatch shows them everywhere: ISO-8601 UTC with milliseconds.
CREATE FUNCTION linkwatch_ts(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

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
