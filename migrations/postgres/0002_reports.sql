-- Scheduled reports: one row per report and slot, written in the transaction that enqueues the
-- report (its event and outbox rows), so that no slot is ever sent twice, by a restart or by a
-- second instance. `report` is the report's name (its cron text when unnamed); `slot` the cron
-- time it stands for; `late` says it was sent after its slot (linkwatch was not running then).
CREATE TABLE report_runs (
    report     text NOT NULL,
    slot       timestamptz NOT NULL,
    event_id   text NOT NULL,
    late       boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (report, slot)
);
