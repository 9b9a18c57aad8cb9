-- Scheduled reports: one row per report and slot, written in the transaction that enqueues the
-- report (its event and outbox rows), so that no slot is ever sent twice, by a restart or by a
-- second writer. `report` is the report's name (its cron text when unnamed); `slot` the cron
-- time it stands for; `late` says it was sent after its slot (linkwatch was not running then).
CREATE TABLE report_runs (
    report     TEXT NOT NULL,
    slot       TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    late       INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    PRIMARY KEY (report, slot)
) STRICT;
