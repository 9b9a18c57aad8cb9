-- Silences: planned quiet for an org (with its live migrations) or for one live migration.
-- While one is active, events are recorded as always but go to no channel:
-- `silenced_deliveries` keeps where each would have gone, and `deliveries` shows those rows
-- with the state 'silenced'. When it ends, the leader compares the status with the one it had
-- when the silence began, says so once if they differ, and sets `concluded_at`.
CREATE TABLE silences (
    id              bigserial PRIMARY KEY,
    org_id          text NOT NULL,
    migration       text,
    migration_id    text,
    starts_at       timestamptz NOT NULL,
    ends_at         timestamptz NOT NULL,
    ended_at        timestamptz,
    created_by      text NOT NULL,
    reason          text NOT NULL,
    status_at_start text,
    concluded_at    timestamptz
);
CREATE INDEX silences_by_org ON silences (org_id, ends_at);

CREATE TABLE silenced_deliveries (
    event_seq  bigint NOT NULL REFERENCES events (seq),
    channel    text NOT NULL,
    silence_id bigint NOT NULL REFERENCES silences (id),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (event_seq, channel)
);

CREATE OR REPLACE VIEW deliveries AS
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
