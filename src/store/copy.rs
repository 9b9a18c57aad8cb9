//! The SQL of `linkwatch copy-history` (see `src/copy.rs` for what it refuses and why): the
//! SQLite file read in one read-only transaction, PostgreSQL written in one transaction that
//! holds the lease table locked, table by table in chunks of JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::Url;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection as _, PgConnection, SqliteConnection};

use crate::config::PgTarget;

/// Rows read from SQLite and written to PostgreSQL per statement.
const CHUNK: i64 = 2000;

/// What one run copied: per table, the rows the source has and the rows written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The database identity, now the target's too.
    pub instance: String,
    /// Whether the target took the source's identity in this run (it had no history yet).
    pub adopted_instance: bool,
    pub tables: Vec<TableCount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: &'static str,
    /// Rows in the source.
    pub source: u64,
    /// Rows inserted or updated in the target (the rest were there already).
    pub written: u64,
}

impl Copied {
    /// Rows written to `table` in this run.
    pub fn written(&self, table: &str) -> u64 {
        self.tables.iter().find(|t| t.table == table).map_or(0, |t| t.written)
    }
}

/// One table's copy: how SQLite hands out a chunk of rows as a JSON array (after the rowid
/// `?1`, at most `?2` rows; the largest rowid read comes first), and how PostgreSQL takes them
/// (`$1`, that array as jsonb) without duplicating what it has already.
struct Table {
    name: &'static str,
    read: &'static str,
    write: &'static str,
    /// `write` takes, as `$2`, the last event the target had before this copy.
    after_last_event: bool,
}

/// `json_object` of each row, in rowid order: timestamps stay ISO-8601 text, which PostgreSQL
/// reads into timestamptz; a payload is embedded as JSON.
macro_rules! chunk {
    ($table:literal, $object:literal) => {
        concat!(
            "SELECT max(r), json_group_array(json(o)) FROM (SELECT rowid AS r, json_object(",
            $object,
            ") AS o FROM ",
            $table,
            " WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)"
        )
    };
}

/// In dependency order: an outbox row finds its event by the event's id.
const TABLES: [Table; 11] = [
    Table {
        name: "org_state",
        read: chunk!(
            "org_state",
            "'org_id', org_id, 'org_name', org_name, 'status', status, 'status_since', status_since,
             'candidate_status', candidate_status, 'candidate_count', candidate_count,
             'candidate_since', candidate_since, 'consecutive_failures', consecutive_failures,
             'failing_since', failing_since, 'failing_alerted', failing_alerted,
             'first_checked_at', first_checked_at, 'last_checked_at', last_checked_at,
             'last_success_at', last_success_at, 'last_error', last_error, 'checks', checks,
             'previous_status', previous_status, 'broken_since', broken_since, 'event_count', event_count"
        ),
        // The newer state wins: a second copy never takes an org back in time.
        write: "INSERT INTO org_state AS os
                SELECT * FROM jsonb_populate_recordset(NULL::org_state, $1::jsonb)
                ON CONFLICT (org_id) DO UPDATE SET org_name = excluded.org_name, status = excluded.status,
                    status_since = excluded.status_since, candidate_status = excluded.candidate_status,
                    candidate_count = excluded.candidate_count, candidate_since = excluded.candidate_since,
                    consecutive_failures = excluded.consecutive_failures, failing_since = excluded.failing_since,
                    failing_alerted = excluded.failing_alerted, first_checked_at = excluded.first_checked_at,
                    last_checked_at = excluded.last_checked_at, last_success_at = excluded.last_success_at,
                    last_error = excluded.last_error, checks = excluded.checks,
                    previous_status = excluded.previous_status, broken_since = excluded.broken_since,
                    event_count = excluded.event_count
                WHERE os.last_checked_at < excluded.last_checked_at",
        after_last_event: false,
    },
    Table {
        name: "reminders",
        read: chunk!(
            "reminders",
            "'org_id', org_id, 'route', route, 'last_sent_at', last_sent_at"
        ),
        write: "INSERT INTO reminders AS r
                SELECT * FROM jsonb_populate_recordset(NULL::reminders, $1::jsonb)
                ON CONFLICT (org_id, route) DO UPDATE SET last_sent_at = excluded.last_sent_at
                WHERE r.last_sent_at < excluded.last_sent_at",
        after_last_event: false,
    },
    Table {
        name: "transitions",
        read: chunk!(
            "transitions",
            "'id', id, 'org_id', org_id, 'from_status', from_status, 'to_status', to_status,
             'changed_at', changed_at, 'previous_lasted_s', previous_lasted_s"
        ),
        // Natural key: an org changes to one status at one instant once.
        write: "INSERT INTO transitions (org_id, from_status, to_status, changed_at, previous_lasted_s)
                SELECT q.org_id, q.from_status, q.to_status, q.changed_at, q.previous_lasted_s
                FROM jsonb_populate_recordset(NULL::transitions, $1::jsonb) AS q
                WHERE NOT EXISTS (SELECT 1 FROM transitions AS t
                                  WHERE t.org_id = q.org_id AND t.changed_at = q.changed_at
                                    AND t.to_status = q.to_status
                                    AND t.from_status IS NOT DISTINCT FROM q.from_status)
                ORDER BY q.id",
        after_last_event: false,
    },
    Table {
        name: "check_failures",
        read: chunk!(
            "check_failures",
            "'id', id, 'org_id', org_id, 'checked_at', checked_at, 'class', class,
             'http_status', http_status, 'error_code', error_code, 'detail', detail"
        ),
        // Natural key: one check of an org at one instant fails once.
        write: "INSERT INTO check_failures (org_id, checked_at, class, http_status, error_code, detail)
                SELECT q.org_id, q.checked_at, q.class, q.http_status, q.error_code, q.detail
                FROM jsonb_populate_recordset(NULL::check_failures, $1::jsonb) AS q
                WHERE NOT EXISTS (SELECT 1 FROM check_failures AS f
                                  WHERE f.org_id = q.org_id AND f.checked_at = q.checked_at
                                    AND f.class = q.class)
                ORDER BY q.id",
        after_last_event: false,
    },
    Table {
        name: "migration_state",
        read: chunk!(
            "migration_state",
            "'migration_id', migration_id, 'name', name, 'org_id', org_id, 'group_id', group_id,
             'status', status, 'status_since', status_since, 'ready_for_cutover', ready_for_cutover,
             'ready_since', ready_since, 'deadline', deadline, 'lag_s', lag_s, 'lag_high', lag_high,
             'lag_high_since', lag_high_since, 'lag_streak', lag_streak, 'warned_s', warned_s,
             'link_break_reported', link_break_reported, 'consecutive_failures', consecutive_failures,
             'failing_since', failing_since, 'failing_alerted', failing_alerted,
             'first_checked_at', first_checked_at, 'last_checked_at', last_checked_at,
             'last_success_at', last_success_at, 'last_error', last_error, 'checks', checks,
             'event_count', event_count, 'migration_hosts', migration_hosts"
        ),
        // As for org_state: the newer state wins.
        write: "INSERT INTO migration_state AS ms
                SELECT * FROM jsonb_populate_recordset(NULL::migration_state, $1::jsonb)
                ON CONFLICT (migration_id) DO UPDATE SET name = excluded.name, org_id = excluded.org_id,
                    group_id = excluded.group_id, status = excluded.status,
                    status_since = excluded.status_since, ready_for_cutover = excluded.ready_for_cutover,
                    ready_since = excluded.ready_since, deadline = excluded.deadline, lag_s = excluded.lag_s,
                    lag_high = excluded.lag_high, lag_high_since = excluded.lag_high_since,
                    lag_streak = excluded.lag_streak, warned_s = excluded.warned_s,
                    link_break_reported = excluded.link_break_reported,
                    consecutive_failures = excluded.consecutive_failures,
                    failing_since = excluded.failing_since, failing_alerted = excluded.failing_alerted,
                    first_checked_at = excluded.first_checked_at, last_checked_at = excluded.last_checked_at,
                    last_success_at = excluded.last_success_at, last_error = excluded.last_error,
                    checks = excluded.checks, event_count = excluded.event_count,
                    migration_hosts = excluded.migration_hosts
                WHERE ms.last_checked_at < excluded.last_checked_at",
        after_last_event: false,
    },
    Table {
        name: "migration_transitions",
        read: chunk!(
            "migration_transitions",
            "'id', id, 'migration_id', migration_id, 'from_status', from_status, 'to_status', to_status,
             'changed_at', changed_at, 'previous_lasted_s', previous_lasted_s"
        ),
        // Natural key, as for transitions.
        write: "INSERT INTO migration_transitions (migration_id, from_status, to_status, changed_at,
                                                   previous_lasted_s)
                SELECT q.migration_id, q.from_status, q.to_status, q.changed_at, q.previous_lasted_s
                FROM jsonb_populate_recordset(NULL::migration_transitions, $1::jsonb) AS q
                WHERE NOT EXISTS (SELECT 1 FROM migration_transitions AS t
                                  WHERE t.migration_id = q.migration_id AND t.changed_at = q.changed_at
                                    AND t.to_status = q.to_status
                                    AND t.from_status IS NOT DISTINCT FROM q.from_status)
                ORDER BY q.id",
        after_last_event: false,
    },
    Table {
        name: "migration_lag",
        read: chunk!(
            "migration_lag",
            "'migration_id', migration_id, 'at', at, 'lag_s', lag_s"
        ),
        write: "INSERT INTO migration_lag
                SELECT * FROM jsonb_populate_recordset(NULL::migration_lag, $1::jsonb)
                ON CONFLICT (migration_id, at) DO NOTHING",
        after_last_event: false,
    },
    Table {
        name: "events",
        read: chunk!(
            "events",
            "'seq', seq, 'id', id, 'org_id', org_id, 'kind', kind, 'created_at', created_at,
             'payload', json(payload)"
        ),
        // In the source's order, so that deliveries keep going out oldest first.
        write: "INSERT INTO events (id, org_id, kind, created_at, payload)
                SELECT q.id, q.org_id, q.kind, q.created_at, q.payload
                FROM jsonb_populate_recordset(NULL::events, $1::jsonb) AS q
                -- A report whose slot the target has recorded is there, or was delivered and
                -- pruned: copied again, its delivery would go out a second time.
                WHERE NOT EXISTS (SELECT 1 FROM report_runs AS r WHERE r.event_id = q.id)
                ORDER BY q.seq
                ON CONFLICT (id) DO NOTHING",
        after_last_event: false,
    },
    Table {
        name: "outbox",
        read: chunk!(
            "outbox",
            "'id', id, 'event_id', (SELECT e.id FROM events AS e WHERE e.seq = outbox.event_seq),
             'channel', channel, 'state', state, 'attempts', attempts, 'next_attempt_at', next_attempt_at,
             'last_error', last_error, 'created_at', created_at, 'sent_at', sent_at"
        ),
        // Unclaimed: a claim belongs to an instance's send, and no instance runs now. Only for
        // events this copy adds ($2: the last event before it): the deliveries of events copied
        // before went on in PostgreSQL, and retention may have deleted the sent ones, which
        // must not come back as pending.
        write: "INSERT INTO outbox (event_seq, channel, state, attempts, next_attempt_at, last_error,
                                    created_at, sent_at)
                SELECT e.seq, q.channel, q.state, q.attempts, q.next_attempt_at, q.last_error,
                       q.created_at, q.sent_at
                FROM jsonb_to_recordset($1::jsonb) AS q(id bigint, event_id text, channel text, state text,
                     attempts integer, next_attempt_at timestamptz, last_error text,
                     created_at timestamptz, sent_at timestamptz)
                JOIN events AS e ON e.id = q.event_id AND e.seq > $2
                ORDER BY q.id
                ON CONFLICT (event_seq, channel) DO NOTHING",
        after_last_event: true,
    },
    Table {
        name: "report_runs",
        read: chunk!(
            "report_runs",
            "'report', report, 'slot', slot, 'event_id', event_id,
             'late', json(CASE WHEN late THEN 'true' ELSE 'false' END), 'created_at', created_at"
        ),
        // Natural key: a report's slot is sent once, in either database.
        write: "INSERT INTO report_runs (report, slot, event_id, late, created_at)
                SELECT q.report, q.slot, q.event_id, q.late, q.created_at
                FROM jsonb_to_recordset($1::jsonb) AS q(report text, slot timestamptz, event_id text,
                     late boolean, created_at timestamptz)
                ON CONFLICT (report, slot) DO NOTHING",
        after_last_event: false,
    },
    Table {
        name: "api_deprecations",
        read: chunk!(
            "api_deprecations",
            "'api', api, 'base_url', base_url, 'version', version, 'deprecation', deprecation,
             'sunset', sunset, 'sunset_at', sunset_at, 'first_seen_at', first_seen_at,
             'event_id', event_id"
        ),
        // Natural key: a version's retirement is announced once, in either database.
        write: "INSERT INTO api_deprecations
                SELECT * FROM jsonb_populate_recordset(NULL::api_deprecations, $1::jsonb)
                ON CONFLICT (api, base_url, version) DO NOTHING",
        after_last_event: false,
    },
];

/// Copies the SQLite history at `path` into `target`, whose instances the caller has stopped
/// (and holds the file's lock).
pub async fn copy(path: &Path, target: &PgTarget) -> anyhow::Result<Copied> {
    let mut src = open_source(path).await?;
    let instance = source_instance(&mut src, path).await?;
    let mut dst = connect_target(target).await?;

    let copied = copy_into(&mut src, &mut dst, path, target, instance).await;
    let _ = src.close().await;
    let _ = dst.close().await;
    copied
}

async fn copy_into(
    src: &mut SqliteConnection,
    dst: &mut PgConnection,
    path: &Path,
    target: &PgTarget,
    instance: String,
) -> anyhow::Result<Copied> {
    let url = target.url();
    let mut tx = dst.begin().await?;
    lock_out_instances(&mut tx, url).await?;
    let adopted_instance = adopt_instance(&mut tx, path, url, &instance).await?;

    let last_event: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM events")
        .fetch_one(&mut *tx)
        .await?;
    // One read transaction: the tables agree with each other even if something reads meanwhile.
    let mut snapshot = src.begin().await?;
    let mut tables = Vec::new();
    for table in &TABLES {
        tables.push(copy_table(table, &mut snapshot, &mut tx, path, url, last_event).await?);
    }
    snapshot.rollback().await?;
    tx.commit()
        .await
        .with_context(|| format!("cannot commit the copy into {url}"))?;
    Ok(Copied {
        instance,
        adopted_instance,
        tables,
    })
}

/// Locks the lease table for the rest of the copy's transaction `tx`, and refuses when an
/// instance leads or follows on the target.
async fn lock_out_instances(tx: &mut PgConnection, url: &Url) -> anyhow::Result<()> {
    // Nobody takes or renews the lease until this commits: a daemon starting now waits, and
    // then leads over the whole copy.
    sqlx::raw_sql("SET LOCAL lock_timeout = '10s'; LOCK TABLE leader_lease IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .with_context(|| format!("cannot lock the leader lease of {url} (is a linkwatch instance busy there?)"))?;
    let lease: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT holder, epoch, linkwatch_ts(expires_at) FROM leader_lease WHERE expires_at > now() LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((holder, epoch, until)) = lease {
        anyhow::bail!(
            "linkwatch instance \"{holder}\" leads {url} (epoch {epoch}, lease until {until}): copying under a \
             running daemon could race it (both would write states and events). Stop every instance on this \
             database, then copy again"
        );
    }
    // A follower would take the lease right after the copy, with the identity it read at start.
    // Followers are found by what they say at every attempt at the lease, not by the name of
    // their connections, which the URL may change.
    let present: Vec<(String, String)> = sqlx::query_as(
        "SELECT holder, linkwatch_ts(seen_until) FROM lease_instances WHERE seen_until > now() ORDER BY holder",
    )
    .fetch_all(&mut *tx)
    .await?;
    if !present.is_empty() {
        let named: Vec<String> = present
            .iter()
            .map(|(holder, until)| {
                format!("\"{holder}\" (asked for the lease; there until {until} unless it asks again)")
            })
            .collect();
        anyhow::bail!(
            "linkwatch instance(s) that do not lead use {url}: {}. A follower (or `linkwatch once`) would take \
             the lease right after the copy, with the database identity it read before. Stop every instance \
             on this database, then copy again",
            named.join(", ")
        );
    }
    Ok(())
}

/// Gives the target the source's database identity `instance` when it has none of its own
/// history yet (whether it did so), and refuses to mix two histories.
async fn adopt_instance(tx: &mut PgConnection, path: &Path, url: &Url, instance: &str) -> anyhow::Result<bool> {
    let target_instance: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'instance'")
        .fetch_one(&mut *tx)
        .await?;
    let adopted_instance = target_instance != instance;
    if adopted_instance {
        let (events, orgs): (i64, i64) =
            sqlx::query_as("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM org_state)")
                .fetch_one(&mut *tx)
                .await?;
        if events > 0 || orgs > 0 {
            anyhow::bail!(
                "{url} already holds a different history (database identity {target_instance}, {events} events, \
                 {orgs} orgs) than {} (identity {instance}): copying would mix two histories whose event ids \
                 differ. Copy into an empty database",
                path.display()
            );
        }
        sqlx::query("UPDATE meta SET value = $1 WHERE key = 'instance'")
            .bind(instance)
            .execute(&mut *tx)
            .await?;
    }
    Ok(adopted_instance)
}

/// Copies one table in chunks, from the read transaction `snapshot` into `tx`.
async fn copy_table(
    table: &Table,
    snapshot: &mut SqliteConnection,
    tx: &mut PgConnection,
    path: &Path,
    url: &Url,
    last_event: i64,
) -> anyhow::Result<TableCount> {
    let (mut source, mut written, mut after) = (0u64, 0u64, 0i64);
    loop {
        let (last, rows): (Option<i64>, String) = sqlx::query_as(table.read)
            .bind(after)
            .bind(CHUNK)
            .fetch_one(&mut *snapshot)
            .await
            .with_context(|| format!("cannot read {} from {}", table.name, path.display()))?;
        let Some(last) = last else { break };
        after = last;
        let (count, rows) = gated(&rows)?;
        source += count;
        let write = sqlx::query(table.write).bind(&rows);
        let write = if table.after_last_event {
            write.bind(last_event)
        } else {
            write
        };
        written += write
            .execute(&mut *tx)
            .await
            .with_context(|| format!("cannot write {} into {url}", table.name))?
            .rows_affected();
    }
    Ok(TableCount {
        table: table.name,
        source,
        written,
    })
}

/// The file, read-only, on one connection.
async fn open_source(path: &Path) -> anyhow::Result<SqliteConnection> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let conn = pool.acquire().await?.detach();
    pool.close().await;
    Ok(conn)
}

/// The source's identity, once its schema is the one this linkwatch writes.
/// A chunk's rows with every string through the gate for outside text, uncut (a copy keeps all
/// it can), and how many rows it has. A SQLite history may hold a NUL that a receiver or Cloud
/// Manager sent before the gate existed; PostgreSQL refuses it in `text` and `jsonb`, and one
/// such row rolled the whole copy back.
fn gated(rows: &str) -> anyhow::Result<(u64, String)> {
    fn clean(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) if !crate::outside::is_clean(s) => {
                *s = crate::outside::text(s, usize::MAX);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(clean),
            serde_json::Value::Object(o) => o.values_mut().for_each(clean),
            _ => {}
        }
    }
    let mut value: serde_json::Value = serde_json::from_str(rows)?;
    let count = value.as_array().map_or(0, Vec::len) as u64;
    clean(&mut value);
    Ok((count, value.to_string()))
}

async fn source_instance(src: &mut SqliteConnection, path: &Path) -> anyhow::Result<String> {
    let newest = sqlx::migrate!("migrations/sqlite")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut *src)
        .await
        .map_err(|e| anyhow::anyhow!("{} is not a linkwatch database ({e})", path.display()))?;
    match version {
        Some(v) if v == newest => {}
        Some(v) if v > newest => anyhow::bail!(
            "{} was written by a newer linkwatch (schema {v}; this one knows up to {newest}): copy it with that version",
            path.display()
        ),
        v => anyhow::bail!(
            "{} has schema version {} of {newest}: open it once with this linkwatch (`linkwatch history --database {}`) \
             to bring it up to date, then copy",
            path.display(),
            v.unwrap_or(0),
            path.display()
        ),
    }
    sqlx::query_scalar("SELECT value FROM meta WHERE key = 'instance'")
        .fetch_one(&mut *src)
        .await
        .with_context(|| format!("{} has no database identity", path.display()))
}

/// One connection to the target, migrated like a daemon's, named so that it is not taken for
/// an instance.
async fn connect_target(target: &PgTarget) -> anyhow::Result<PgConnection> {
    let options = super::open::connect_options(target)?.application_name("linkwatch copy-history");
    let mut conn = tokio::time::timeout(Duration::from_secs(15), PgConnection::connect_with(&options))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within 15s", target.url()))?
        .with_context(|| format!("cannot connect to {}", target.url()))?;
    sqlx::migrate!("migrations/postgres")
        .run(&mut conn)
        .await
        .with_context(|| format!("cannot migrate database {}", target.url()))?;
    Ok(conn)
}
