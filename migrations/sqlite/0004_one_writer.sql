-- Same event, same id; reminders that follow a broken link through any status.

-- This database's identity: with each org's event number it makes event ids that a re-detected
-- event (after a power cut took back its commit) gets again, and that a new database never reuses.
INSERT INTO meta (key, value) VALUES ('instance', lower(hex(randomblob(16))))
ON CONFLICT (key) DO NOTHING;

-- How many events this org has had: the number of the next one.
ALTER TABLE org_state ADD COLUMN event_count INTEGER NOT NULL DEFAULT 0;
UPDATE org_state SET event_count = (SELECT count(*) FROM events WHERE events.org_id = org_state.org_id);

-- When the link left SYNCED; NULL while it is SYNCED or has never been. Reminders about a broken
-- link count from here, across any statuses it passes through, until it is SYNCED again.
ALTER TABLE org_state ADD COLUMN broken_since TEXT;
-- For a link that is not SYNCED now, that is the last time it left SYNCED, if it ever did.
UPDATE org_state SET broken_since = (
    SELECT max(t.changed_at) FROM transitions AS t
    WHERE t.org_id = org_state.org_id AND t.from_status = 'SYNCED'
)
WHERE status IS NOT 'SYNCED';

-- Reminder clocks were keyed by a route's position ("route[0]"); they are now keyed by what the
-- route says, so old keys match nothing and are dropped (at most one reminder comes early).
DELETE FROM reminders WHERE route LIKE 'route[%]';
