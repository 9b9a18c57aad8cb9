-- Silences: planned quiet for an org (with its live migrations) or for one live migration.
-- While one is active, events are recorded as always but go to no channel:
-- `silenced_deliveries` keeps where each would have gone, and `deliveries` shows those rows
-- with the state 'silenced'. When it ends, the daemon compares the status with the one it had
-- when the silence began, says so once if they differ, and sets `concluded_at`.
CREATE TABLE silences (
    id              INTEGER PRIMARY KEY,
    org_id          TEXT NOT NULL,
    migration       TEXT,              -- a [[migration]] name; NULL: the org and its migrations
    migration_id    TEXT,              -- its liveMigrationId (a name may be reused by a new one)
    starts_at       TEXT NOT NULL,
    ends_at         TEXT NOT NULL,
    ended_at        TEXT,              -- ended early by `linkwatch silence end`
    created_by      TEXT NOT NULL,
    reason          TEXT NOT NULL,
    status_at_start TEXT,              -- the link's (or the migration's) status when it began
    concluded_at    TEXT               -- its end was looked at (and said, if the status moved)
) STRICT;
CREATE INDEX silences_by_org ON silences (org_id, ends_at);

CREATE TABLE silenced_deliveries (
    event_seq  INTEGER NOT NULL REFERENCES events (seq),
    channel    TEXT NOT NULL,
    silence_id INTEGER NOT NULL REFERENCES silences (id),
    created_at TEXT NOT NULL,
    PRIMARY KEY (event_seq, channel)
) STRICT;

DROP VIEW deliveries;
CREATE VIEW deliveries AS
SELECT e.id AS event_id, e.kind, e.org_id, o.org_name, x.channel, x.state, x.attempts,
       x.last_error, x.created_at, x.sent_at, x.next_attempt_at
FROM outbox AS x
JOIN events AS e ON e.seq = x.event_seq
LEFT JOIN org_state AS o ON o.org_id = e.org_id
UNION ALL
SELECT e.id, e.kind, e.org_id, o.org_name, s.channel, 'silenced', 0,
       'silence ' || s.silence_id, s.created_at, NULL, NULL
FROM silenced_deliveries AS s
JOIN events AS e ON e.seq = s.event_seq
LEFT JOIN org_state AS o ON o.org_id = e.org_id;
