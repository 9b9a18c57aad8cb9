-- Reminders (a route's remind_every) and the status before the current one, which tells a
-- broken link (left SYNCED) from a link that has not synced yet.

ALTER TABLE org_state ADD COLUMN previous_status TEXT;

-- When each route last reminded about each org. `route` is the route's position in the config
-- ("route[0]"); reordering routes at most brings one reminder forward.
CREATE TABLE reminders (
    org_id       TEXT NOT NULL,
    route        TEXT NOT NULL,
    last_sent_at TEXT NOT NULL,
    PRIMARY KEY (org_id, route)
) STRICT;
