//! The PostgreSQL backend: several linkwatch instances on one database, one of them leading.
//! Timestamps are `timestamptz` (bound as `DateTime<Utc>`, read back as linkwatch's text form
//! through `linkwatch_ts()`), payloads `jsonb`.
//!
//! Every write of the check path is fenced ([`Fence`]): it runs in a transaction that first
//! locks the lease row `FOR SHARE` as long as this instance holds it with its epoch. Delivery
//! outcomes are guarded by the claim instead: a row is marked only under the claim token that
//! sent it, so that a deposed leader can still record what a receiver accepted (which keeps
//! the new leader from sending it again) but never touches a row someone else claimed since.

mod fence;
mod live_migration;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres as Pg, Row, Transaction};

pub use fence::{Fence, Fenced, Term};

use super::DbGauges;
use super::backend::{Backend, FailureRow, Pruned, QuietRow};
use super::{
    Applied, ChannelDeliveries, Check, CheckRecord, CurrentStatus, Decision, Delivery, FailedCheck,
    LiveMigrationChange, LiveMigrationCheck, LiveMigrationDecision, LiveMigrationRow, OrgRow, Pending, REPORT_ORG_END,
    REPORT_ORG_PREFIX, RemindersSent, ReportRun, StatusChange, StoredEvent, cap, event_id, transition, ts,
};
use crate::config::{OrgId, PgTarget};
use crate::detect::OrgState;
use crate::detect::live_migration::{LinkView, LiveMigrationState};

/// The lease's name: one leader per database.
const LEASE: &str = "linkwatch";

#[derive(Debug, Clone)]
pub struct Postgres {
    pool: PgPool,
    /// The lease's own connection: its renewal never waits for a connection behind slow writes.
    lease: PgPool,
    fence: std::sync::Arc<Fence>,
}

/// Who holds the lease, as the database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    pub epoch: i64,
    /// Whether the lease is still running (by the database's clock).
    pub live: bool,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// How to reach `target`: its URL and its password (kept out of the URL).
pub fn connect_options(target: &PgTarget) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = target
        .url()
        .as_str()
        .parse()
        .with_context(|| format!("cannot read the PostgreSQL URL {}", target.url()))?;
    Ok(match &target.password {
        Some(password) => options.password(password.expose()),
        None => options,
    })
}

/// How long the first connection may take before the server is reported unreachable.
const FIRST_CONNECT: Duration = Duration::from_secs(10);

/// One connection first, so that a server that is not there, or refuses, is named with its host
/// and port and its own words once (the pool would wait its whole acquire timeout in silence,
/// then say only "pool timed out", and repeats a server's message with its source line).
async fn reach(target: &PgTarget, options: &sqlx::postgres::PgConnectOptions) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let url = target.url();
    let place = format!(
        "PostgreSQL at {}:{}",
        url.host_str().unwrap_or("localhost"),
        url.port().unwrap_or(5432)
    );
    match tokio::time::timeout(FIRST_CONNECT, sqlx::PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(sqlx::Error::Database(e))) => {
            anyhow::bail!("{place} refused: {}", crate::outside::text(e.message(), 500))
        }
        Ok(Err(sqlx::Error::Io(e))) => anyhow::bail!("cannot connect to {place}: {e}"),
        Ok(Err(e)) => anyhow::bail!(
            "cannot connect to {place}: {}",
            crate::outside::text(&e.to_string(), 500)
        ),
        Err(_) => anyhow::bail!(
            "cannot connect to {place}: no answer within {}",
            humantime::format_duration(FIRST_CONNECT)
        ),
    }
}

impl Postgres {
    /// Connects and migrates. The connections carry `application_name` (the URL's, or
    /// `linkwatch`) so that operators and tests find them in `pg_stat_activity`, and a
    /// statement timeout so that a stuck server cannot hold a check for ever.
    pub async fn open(target: &PgTarget) -> anyhow::Result<Postgres> {
        let mut options = connect_options(target)?;
        if !target.url().query_pairs().any(|(k, _)| k == "application_name") {
            options = options.application_name("linkwatch");
        }
        // idle_in_transaction_session_timeout: a leader paused inside a transaction (SIGSTOP, a
        // frozen VM) holds the lease row FOR SHARE; the server ends its session, so that the
        // lease can be taken over instead of waiting for it to wake.
        options = options.options([
            ("statement_timeout", "15s"),
            ("lock_timeout", "10s"),
            ("idle_in_transaction_session_timeout", "5s"),
        ]);
        reach(target, &options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            // A connection the server dropped (restart, pg_terminate_backend) is found here, not
            // by the check that would use it.
            .test_before_acquire(true)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("cannot connect to {}", target.url()))?;
        let lease = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(true)
            .connect_lazy_with(options);
        // sqlx holds an advisory lock while migrating: two instances starting together migrate once.
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .with_context(|| format!("cannot migrate database {}", target.url()))?;
        Ok(Postgres {
            pool,
            lease,
            fence: Default::default(),
        })
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Takes the lease for `holder` when it is free, expired or already `holder`'s, for `ttl`
    /// by the database's clock. Each acquisition is a new term: the epoch goes up. Returns the
    /// epoch, or `None` when another instance holds a running lease.
    ///
    /// Every attempt also says that `holder` is there for `ttl` (`lease_instances`), so that
    /// `copy-history` finds followers too; rows of instances gone for a day are deleted.
    pub async fn acquire_lease(&self, holder: &str, ttl: Duration) -> anyhow::Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "WITH seen AS (
                 INSERT INTO lease_instances (holder, seen_until) VALUES ($2, now() + make_interval(secs => $3))
                 ON CONFLICT (holder) DO UPDATE SET seen_until = excluded.seen_until
             ), gone AS (
                 DELETE FROM lease_instances WHERE seen_until < now() - interval '1 day' AND holder <> $2
             )
             INSERT INTO leader_lease (name, holder, epoch, expires_at)
             VALUES ($1, $2, 1, now() + make_interval(secs => $3))
             ON CONFLICT (name) DO UPDATE SET holder = $2, epoch = leader_lease.epoch + 1,
                 expires_at = now() + make_interval(secs => $3)
             WHERE leader_lease.holder = $2 OR leader_lease.expires_at <= now()
             RETURNING epoch",
        )
        .bind(LEASE)
        .bind(holder)
        .bind(secs(ttl))
        .fetch_optional(&self.lease)
        .await?)
    }

    /// Extends the lease of `holder` in `epoch` by `ttl`; `false` when it is no longer theirs
    /// (expired, or taken by another instance). Says that `holder` is there, as
    /// [`Postgres::acquire_lease`] does.
    pub async fn renew_lease(&self, holder: &str, epoch: i64, ttl: Duration) -> anyhow::Result<bool> {
        let renewed = sqlx::query(
            "WITH seen AS (
                 INSERT INTO lease_instances (holder, seen_until) VALUES ($2, now() + make_interval(secs => $4))
                 ON CONFLICT (holder) DO UPDATE SET seen_until = excluded.seen_until
             )
             UPDATE leader_lease SET expires_at = now() + make_interval(secs => $4)
             WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
        )
        .bind(LEASE)
        .bind(holder)
        .bind(epoch)
        .bind(secs(ttl))
        .execute(&self.lease)
        .await?
        .rows_affected();
        Ok(renewed == 1)
    }

    /// Ends the lease of `holder` in `epoch` now, so that another instance takes over at once
    /// (a clean shutdown), and says that `holder` is gone. The lease row stays: epochs only go up.
    pub async fn release_lease(&self, holder: &str, epoch: i64) -> anyhow::Result<()> {
        sqlx::query(
            "WITH gone AS (DELETE FROM lease_instances WHERE holder = $2)
             UPDATE leader_lease SET expires_at = now() WHERE name = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(LEASE)
        .bind(holder)
        .bind(epoch)
        .execute(&self.lease)
        .await?;
        Ok(())
    }

    /// Says that `holder`, which does not lead, is gone (a follower's clean shutdown), so that
    /// `copy-history` need not wait for its word to run out.
    pub async fn withdraw(&self, holder: &str) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM lease_instances WHERE holder = $1")
            .bind(holder)
            .execute(&self.lease)
            .await?;
        Ok(())
    }

    pub async fn lease_holder(&self) -> anyhow::Result<Option<LeaseHolder>> {
        let row: Option<(String, i64, bool)> =
            sqlx::query_as("SELECT holder, epoch, expires_at > now() FROM leader_lease WHERE name = $1")
                .bind(LEASE)
                .fetch_optional(&self.lease)
                .await?;
        Ok(row.map(|(holder, epoch, live)| LeaseHolder { holder, epoch, live }))
    }

    /// A transaction for a write of the leader, after checking on this process's own clock that
    /// it still leads. Commit it with [`Postgres::commit_fenced`].
    async fn begin_fenced(&self) -> anyhow::Result<(Transaction<'static, Pg>, Term)> {
        let term = self.fence.current()?;
        Ok((self.pool.begin().await?, term))
    }

    /// Commits `tx` if this instance still holds the lease with `term`'s epoch, by the database:
    /// the lease row is locked `FOR SHARE` from that check to the commit, so a takeover's
    /// `UPDATE` waits for the commit, and a takeover that came first makes the check fail and
    /// nothing is written. The check comes last so that the lock is held for a moment only: a
    /// slow statement before it (a lock held by someone querying the tables) must not hold up
    /// the renewal of the lease.
    async fn commit_fenced(&self, mut tx: Transaction<'static, Pg>, term: &Term) -> anyhow::Result<()> {
        let held: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM leader_lease
             WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now() FOR SHARE",
        )
        .bind(LEASE)
        .bind(&term.holder)
        .bind(term.epoch)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            drop(tx);
            self.fence.depose_term(term.epoch);
            return Err(Fenced {
                why: "another instance took the lease, or it expired",
            }
            .into());
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Backend for Postgres {
    async fn instance(&self) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = 'instance'")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn apply(
        &self,
        instance: &str,
        check: &Check<'_>,
        superseded: impl FnOnce(DateTime<Utc>) -> bool,
        decide: impl FnOnce(&OrgState, &RemindersSent) -> Decision,
    ) -> anyhow::Result<Applied> {
        let (mut tx, term) = self.begin_fenced().await?;
        // FOR UPDATE: the row cannot change between reading it and writing what follows from it.
        let (state, last_checked) = load_state(&mut tx, check.org_id, true).await?;
        if last_checked.is_some_and(superseded) {
            return Ok(Applied::Superseded);
        }
        let sent = reminders_sent(&mut tx, check.org_id).await?;
        let decision = decide(&state, &sent);
        write_record(&mut tx, instance, &check.record(&decision)).await?;
        self.commit_fenced(tx, &term).await?;
        Ok(Applied::Recorded(decision))
    }

    async fn record_if_quiet(&self, org: &OrgId, name: &str, status: &str, at: DateTime<Utc>) -> anyhow::Result<bool> {
        let (mut tx, term) = self.begin_fenced().await?;
        let updated = sqlx::query(
            "UPDATE org_state SET org_name = $2, last_checked_at = $4, last_success_at = $4,
                 last_error = NULL, checks = checks + 1
             WHERE org_id = $1 AND status = $3 AND candidate_status IS NULL
               AND consecutive_failures = 0 AND NOT failing_alerted",
        )
        .bind(org.as_str())
        .bind(name)
        .bind(status)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.commit_fenced(tx, &term).await?;
        Ok(updated == 1)
    }

    async fn apply_live_migration(
        &self,
        instance: &str,
        check: &LiveMigrationCheck<'_>,
        superseded: impl FnOnce(DateTime<Utc>) -> bool,
        decide: impl FnOnce(&LiveMigrationState, &LinkView) -> LiveMigrationDecision,
    ) -> anyhow::Result<Option<LiveMigrationDecision>> {
        let (mut tx, term) = self.begin_fenced().await?;
        let decision = live_migration::apply(&mut tx, instance, check, superseded, decide).await?;
        self.commit_fenced(tx, &term).await?;
        Ok(decision)
    }

    async fn live_migrations(&self) -> anyhow::Result<Vec<LiveMigrationRow>> {
        Ok(sqlx::query_as::<_, LiveMigrationRow>(
            "SELECT migration, migration_id, org_id, org_name, group_id, status, linkwatch_ts(since) AS since,
                    ready_for_cutover, linkwatch_ts(ready_since) AS ready_since,
                    linkwatch_ts(estimated_deadline) AS estimated_deadline, lag_s,
                    linkwatch_ts(last_checked_at) AS last_checked_at,
                    consecutive_failures::bigint AS consecutive_failures, last_error
             FROM migration_status ORDER BY migration",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn live_migration_changes(&self, migration_id: &str) -> anyhow::Result<Vec<LiveMigrationChange>> {
        Ok(sqlx::query_as::<_, LiveMigrationChange>(
            "SELECT from_status, to_status, linkwatch_ts(changed_at) AS changed_at, previous_lasted_s
             FROM migration_changes WHERE migration_id = $1 ORDER BY migration_changes.changed_at",
        )
        .bind(migration_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn live_migration_lag(
        &self,
        migration_id: &str,
        since: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(DateTime<Utc>, Option<i64>)>> {
        Ok(
            sqlx::query_as("SELECT at, lag_s FROM migration_lag WHERE migration_id = $1 AND at >= $2 ORDER BY at")
                .bind(migration_id)
                .bind(since)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn record_check(&self, instance: &str, rec: &CheckRecord<'_>) -> anyhow::Result<()> {
        let (mut tx, term) = self.begin_fenced().await?;
        write_record(&mut tx, instance, rec).await?;
        self.commit_fenced(tx, &term).await?;
        Ok(())
    }

    async fn load_state(&self, org: &OrgId) -> anyhow::Result<OrgState> {
        let mut conn = self.pool.acquire().await?;
        Ok(load_state(&mut conn, org, false).await?.0)
    }

    async fn flush_quiet(&self, rows: &[QuietRow]) -> anyhow::Result<Vec<String>> {
        let json = batch_json(rows)?;
        let (mut tx, term) = self.begin_fenced().await?;
        // `org_id = ANY($2)` lets the primary key find the rows whatever the planner believes of
        // the table: before the first ANALYZE it estimated the quiet conditions to match one row
        // and joined every row of org_state against the batch, a third of a core at 10,000 orgs.
        let written = sqlx::query_scalar(
            "UPDATE org_state AS os SET last_checked_at = q.t, last_success_at = q.t, last_error = NULL,
                 checks = os.checks + q.n
             FROM jsonb_to_recordset($1::jsonb) AS q(o text, s text, t timestamptz, n bigint)
             WHERE os.org_id = ANY($2) AND os.org_id = q.o AND os.status = q.s
               AND os.candidate_status IS NULL AND os.consecutive_failures = 0
               AND NOT os.failing_alerted AND os.last_checked_at < q.t
             RETURNING os.org_id",
        )
        .bind(&json)
        .bind(rows.iter().map(|r| r.org_id.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        self.commit_fenced(tx, &term).await?;
        Ok(written)
    }

    async fn pending(&self, channel: &str, limit: i64, skip: &[String]) -> anyhow::Result<Vec<Pending>> {
        // An anti-join on the skipped orgs (one array parameter), prepared afresh each time so
        // that PostgreSQL plans it for the array at hand and hashes it: a cached statement may
        // switch to a generic plan after five runs, which guesses ten skipped orgs and compares
        // every row with each of them (measured: 0.1 s instead of 4 ms for 1,500 skipped orgs
        // among 20,000 pending rows).
        Ok(sqlx::query_as::<_, Pending>(
            "SELECT x.id AS outbox_id, e.org_id, x.attempts::bigint AS attempts,
                    linkwatch_ts(x.next_attempt_at) AS next_attempt_at,
                    linkwatch_ts(x.created_at) AS created_at, x.last_error
             FROM outbox AS x
             JOIN events AS e ON e.seq = x.event_seq
             WHERE x.channel = $1 AND x.state = 'pending'
               AND NOT EXISTS (SELECT FROM unnest($3::text[]) AS w(org_id) WHERE w.org_id = e.org_id)
             ORDER BY x.event_seq LIMIT $2",
        )
        .bind(channel)
        .bind(limit)
        .bind(skip)
        .persistent(false)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn pending_of(&self, outbox_ids: &[i64]) -> anyhow::Result<Vec<Pending>> {
        Ok(sqlx::query_as::<_, Pending>(
            "SELECT x.id AS outbox_id, e.org_id, x.attempts::bigint AS attempts,
                    linkwatch_ts(x.next_attempt_at) AS next_attempt_at,
                    linkwatch_ts(x.created_at) AS created_at, x.last_error
             FROM outbox AS x
             JOIN events AS e ON e.seq = x.event_seq
             WHERE x.id = ANY($1) AND x.state = 'pending'
             ORDER BY x.event_seq",
        )
        .bind(outbox_ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn deliveries(&self, outbox_ids: &[i64]) -> anyhow::Result<Vec<Delivery>> {
        Ok(sqlx::query_as::<_, Delivery>(
            "SELECT x.id AS outbox_id, x.attempts::bigint AS attempts,
                    linkwatch_ts(x.next_attempt_at) AS next_attempt_at, e.id, e.org_id, o.org_name,
                    e.kind, linkwatch_ts(e.created_at) AS created_at, e.payload::text AS payload
             FROM outbox AS x
             JOIN events AS e ON e.seq = x.event_seq
             LEFT JOIN org_state AS o ON o.org_id = e.org_id
             WHERE x.id = ANY($1) AND x.state = 'pending'
             ORDER BY x.event_seq",
        )
        .bind(outbox_ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn claim(&self, outbox_ids: &[i64], token: &str, hold: Duration) -> anyhow::Result<Vec<i64>> {
        let (mut tx, term) = self.begin_fenced().await?;
        // SKIP LOCKED: a row another instance is claiming right now is simply not ours. This
        // instance's own earlier claims (same holder and epoch) do not keep it out.
        let claimed = sqlx::query_scalar(
            "UPDATE outbox SET claim_token = $2, claimed_by = $3,
                 claim_expires_at = now() + make_interval(secs => $4)
             WHERE id IN (SELECT id FROM outbox
                          WHERE id = ANY($1) AND state = 'pending'
                            AND (claim_expires_at IS NULL OR claim_expires_at <= now() OR claimed_by = $3)
                          FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind(outbox_ids)
        .bind(token)
        .bind(format!("{} (epoch {})", term.holder, term.epoch))
        .bind(secs(hold))
        .fetch_all(&mut *tx)
        .await?;
        self.commit_fenced(tx, &term).await?;
        Ok(claimed)
    }

    async fn next_due(&self, channel: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT next_attempt_at FROM outbox WHERE channel = $1 AND state = 'pending' ORDER BY event_seq LIMIT 1",
        )
        .bind(channel)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn mark_sent(
        &self,
        outbox_ids: &[i64],
        token: &str,
        now: DateTime<Utc>,
        note: Option<&str>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE outbox SET state = 'sent', attempts = attempts + 1, sent_at = $1, last_error = $2,
                 claim_expires_at = NULL
             WHERE id = ANY($3) AND state = 'pending' AND claim_token = $4",
        )
        .bind(now)
        .bind(note.map(cap))
        .bind(outbox_ids)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mark_attempt_failed(
        &self,
        outbox_ids: &[i64],
        token: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $1,
                 state = CASE WHEN $2::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
                 next_attempt_at = coalesce($2, next_attempt_at), claim_expires_at = NULL
             WHERE id = ANY($3) AND state = 'pending' AND claim_token = $4",
        )
        .bind(cap(error))
        .bind(retry_at)
        .bind(outbox_ids)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn enqueue_report(&self, run: &ReportRun<'_>) -> anyhow::Result<bool> {
        let (mut tx, term) = self.begin_fenced().await?;
        let recorded = sqlx::query(
            "INSERT INTO report_runs (report, slot, event_id, late, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (report, slot) DO NOTHING",
        )
        .bind(run.report)
        .bind(run.slot)
        .bind(run.event_id)
        .bind(run.late)
        .bind(run.at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recorded == 0 {
            return Ok(false);
        }
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (id, org_id, kind, created_at, payload) VALUES ($1, $2, 'report', $3, $4::jsonb)
             RETURNING seq",
        )
        .bind(run.event_id)
        .bind(run.org_id())
        .bind(run.at)
        .bind(run.payload)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO outbox (event_seq, channel, next_attempt_at, created_at)
             SELECT $1, channel, $2, $2 FROM unnest($3::text[]) AS channel",
        )
        .bind(seq)
        .bind(run.at)
        .bind(run.channels)
        .execute(&mut *tx)
        .await?;
        self.commit_fenced(tx, &term).await?;
        Ok(true)
    }

    async fn last_report_slot(&self, report: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
        Ok(
            sqlx::query_scalar("SELECT max(slot) FROM report_runs WHERE report = $1")
                .bind(report)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn probe_write(&self) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('health_probe', linkwatch_ts(now()))
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn prune(&self, before: DateTime<Utc>) -> anyhow::Result<Pruned> {
        let failures = sqlx::query("DELETE FROM check_failures WHERE checked_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let deliveries = sqlx::query(
            "DELETE FROM outbox WHERE (state = 'sent' AND sent_at < $1) OR (state = 'failed' AND created_at < $1)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        // After the deliveries: a report still being delivered (or retried) keeps its event.
        let reports = sqlx::query(
            // The org_id range reads the index on (org_id, created_at), not every event.
            "DELETE FROM events AS e WHERE e.org_id >= $2 AND e.org_id < $3
                 AND e.kind = 'report' AND e.created_at < $1
                 AND NOT EXISTS (SELECT 1 FROM outbox AS x WHERE x.event_seq = e.seq)",
        )
        .bind(before)
        .bind(REPORT_ORG_PREFIX)
        .bind(REPORT_ORG_END)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(Pruned {
            failures,
            deliveries,
            reports,
        })
    }

    async fn gauges(&self) -> anyhow::Result<DbGauges> {
        let statuses = sqlx::query_as("SELECT org_id, org_name, status FROM current_status ORDER BY org_id")
            .fetch_all(&self.pool)
            .await?;
        let outbox_depth = sqlx::query_as(
            "SELECT channel, count(*) FROM outbox WHERE state = 'pending' GROUP BY channel ORDER BY channel",
        )
        .fetch_all(&self.pool)
        .await?;
        let oldest: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT min(created_at) FROM outbox WHERE state = 'pending'")
                .fetch_one(&self.pool)
                .await?;
        Ok(DbGauges {
            statuses,
            outbox_depth,
            oldest_pending_s: oldest.map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0),
            migrations: Vec::new(),
        })
    }

    async fn history(&self, org: Option<&str>, since: Option<DateTime<Utc>>) -> anyhow::Result<Vec<StatusChange>> {
        Ok(sqlx::query_as::<_, StatusChange>(
            "SELECT org_id, org_name, from_status, to_status, linkwatch_ts(changed_at) AS changed_at,
                    previous_lasted_s
             FROM status_changes
             WHERE ($1::text IS NULL OR org_id = $1 OR org_name = $1)
               AND ($2::timestamptz IS NULL OR changed_at >= $2)
             ORDER BY status_changes.changed_at, org_id",
        )
        .bind(org)
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn current(&self) -> anyhow::Result<Vec<CurrentStatus>> {
        Ok(sqlx::query_as::<_, CurrentStatus>(
            "SELECT org_id, org_name, status, linkwatch_ts(since) AS since,
                    linkwatch_ts(last_checked_at) AS last_checked_at,
                    consecutive_failures::bigint AS consecutive_failures, last_error
             FROM current_status ORDER BY org_name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn events(&self, org: Option<&OrgId>) -> anyhow::Result<Vec<StoredEvent>> {
        Ok(sqlx::query_as::<_, StoredEvent>(
            "SELECT e.id, e.org_id, o.org_name, e.kind, linkwatch_ts(e.created_at) AS created_at,
                    e.payload::text AS payload
             FROM events AS e LEFT JOIN org_state AS o USING (org_id)
             WHERE $1::text IS NULL OR e.org_id = $1 ORDER BY e.seq",
        )
        .bind(org.map(OrgId::as_str))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn failures(&self, org: &OrgId) -> anyhow::Result<Vec<FailureRow>> {
        Ok(sqlx::query_as(
            "SELECT class, http_status::bigint, error_code, detail FROM check_failures WHERE org_id = $1 ORDER BY id",
        )
        .bind(org.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn org_rows(&self) -> anyhow::Result<Vec<OrgRow>> {
        Ok(sqlx::query_as::<_, OrgRow>(
            "SELECT org_id, org_name, status, linkwatch_ts(status_since) AS since,
                    linkwatch_ts(last_checked_at) AS last_checked_at,
                    consecutive_failures::bigint AS consecutive_failures, last_error,
                    linkwatch_ts(broken_since) AS broken_since
             FROM org_state ORDER BY org_name, org_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn channel_deliveries(&self) -> anyhow::Result<Vec<ChannelDeliveries>> {
        Ok(sqlx::query_as::<_, ChannelDeliveries>(
            "SELECT channel, count(*) FILTER (WHERE state = 'pending') AS pending,
                    count(*) FILTER (WHERE state = 'failed') AS failed,
                    linkwatch_ts(min(created_at) FILTER (WHERE state = 'pending')) AS oldest_pending_at,
                    (SELECT l.last_error FROM outbox AS l
                     WHERE l.channel = o.channel AND l.state IN ('pending', 'failed') AND l.last_error IS NOT NULL
                     ORDER BY l.id DESC LIMIT 1) AS last_error
             FROM outbox AS o WHERE state IN ('pending', 'failed') GROUP BY channel ORDER BY channel",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn failed_checks(&self, org: &OrgId, since: DateTime<Utc>, limit: i64) -> anyhow::Result<Vec<FailedCheck>> {
        Ok(sqlx::query_as::<_, FailedCheck>(
            "SELECT linkwatch_ts(checked_at) AS checked_at, class, http_status::bigint AS http_status, error_code,
                    detail
             FROM check_failures
             WHERE org_id = $1 AND checked_at >= $2 ORDER BY check_failures.checked_at DESC, id DESC LIMIT $3",
        )
        .bind(org.as_str())
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn close(&self) {
        self.pool.close().await;
        self.lease.close().await;
    }
}

/// The org's state, and when it was last checked (`None` for an org never checked); with
/// `lock`, the row stays locked until the transaction ends.
async fn load_state(
    conn: &mut sqlx::PgConnection,
    org: &OrgId,
    lock: bool,
) -> anyhow::Result<(OrgState, Option<DateTime<Utc>>)> {
    macro_rules! select {
        () => {
            "SELECT status, status_since, previous_status, broken_since, candidate_status, candidate_count,
                    candidate_since, consecutive_failures, failing_since, failing_alerted, last_checked_at
             FROM org_state WHERE org_id = $1"
        };
    }
    let sql = if lock {
        concat!(select!(), " FOR UPDATE")
    } else {
        select!()
    };
    let row = sqlx::query(sql).bind(org.as_str()).fetch_optional(conn).await?;
    let Some(r) = row else {
        return Ok((OrgState::default(), None));
    };
    let state = OrgState {
        status: r.try_get("status")?,
        status_since: r.try_get("status_since")?,
        previous_status: r.try_get("previous_status")?,
        broken_since: r.try_get("broken_since")?,
        candidate: r.try_get("candidate_status")?,
        candidate_count: r.try_get::<i32, _>("candidate_count")?.try_into().unwrap_or(0),
        candidate_since: r.try_get("candidate_since")?,
        consecutive_failures: r
            .try_get::<i32, _>("consecutive_failures")?
            .try_into()
            .unwrap_or(u32::MAX),
        failing_since: r.try_get("failing_since")?,
        failing_alerted: r.try_get("failing_alerted")?,
    };
    Ok((state, r.try_get("last_checked_at")?))
}

async fn reminders_sent(conn: &mut sqlx::PgConnection, org: &OrgId) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    Ok(
        sqlx::query_as("SELECT route, last_sent_at FROM reminders WHERE org_id = $1")
            .bind(org.as_str())
            .fetch_all(conn)
            .await?,
    )
}

/// Writes `rec` inside the caller's transaction.
async fn write_record(conn: &mut sqlx::PgConnection, instance: &str, rec: &CheckRecord<'_>) -> anyhow::Result<()> {
    let at = rec.at;
    let s = rec.state;
    let (success_at, last_error) = match rec.outcome {
        Ok(_) => (Some(at), None),
        Err(f) => (None, Some(f.explain())),
    };
    // The org's event count moves with its events, so the n-th event of an org is numbered n
    // whether it is detected for the first time or again after a lost commit.
    let event_count: i64 = sqlx::query_scalar(
        "INSERT INTO org_state AS os (org_id, org_name, status, status_since, candidate_status,
             candidate_count, candidate_since, consecutive_failures, failing_since,
             failing_alerted, first_checked_at, last_checked_at, last_success_at, last_error, checks,
             previous_status, broken_since, event_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, 1, $14, $15, $16)
         ON CONFLICT (org_id) DO UPDATE SET
             org_name = $2, status = $3, status_since = $4, previous_status = $14, candidate_status = $5,
             candidate_count = $6, candidate_since = $7, consecutive_failures = $8,
             failing_since = $9, failing_alerted = $10, last_checked_at = $11,
             last_success_at = coalesce($12, os.last_success_at), last_error = $13,
             checks = os.checks + 1, broken_since = $15, event_count = os.event_count + $16
         RETURNING event_count",
    )
    .bind(rec.org_id.as_str())
    .bind(rec.org_name)
    .bind(&s.status)
    .bind(s.status_since)
    .bind(&s.candidate)
    .bind(i32::try_from(s.candidate_count).unwrap_or(i32::MAX))
    .bind(s.candidate_since)
    .bind(i32::try_from(s.consecutive_failures).unwrap_or(i32::MAX))
    .bind(s.failing_since)
    .bind(s.failing_alerted)
    .bind(at)
    .bind(success_at)
    .bind(last_error)
    .bind(&s.previous_status)
    .bind(s.broken_since)
    .bind(rec.events.len() as i64)
    .fetch_one(&mut *conn)
    .await?;

    for route in rec.reminded {
        sqlx::query(
            "INSERT INTO reminders (org_id, route, last_sent_at) VALUES ($1, $2, $3)
             ON CONFLICT (org_id, route) DO UPDATE SET last_sent_at = $3",
        )
        .bind(rec.org_id.as_str())
        .bind(route)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }

    if let Err(f) = rec.outcome {
        sqlx::query(
            "INSERT INTO check_failures (org_id, checked_at, class, http_status, error_code, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(rec.org_id.as_str())
        .bind(at)
        .bind(f.class.as_str())
        .bind(f.http_status.map(i32::from))
        .bind(&f.error_code)
        .bind(&f.detail)
        .execute(&mut *conn)
        .await?;
    }

    let first_number = event_count - rec.events.len() as i64 + 1;
    for (number, (event, channels)) in (first_number..).zip(rec.events) {
        if let Some(t) = transition(event, rec.at) {
            sqlx::query(
                "INSERT INTO transitions (org_id, from_status, to_status, changed_at, previous_lasted_s)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(rec.org_id.as_str())
            .bind(t.from)
            .bind(t.to)
            .bind(t.changed_at)
            .bind(t.previous_lasted_s)
            .execute(&mut *conn)
            .await?;
        }
        let id = event_id(instance, rec.org_id.as_str(), number, event);
        insert_event(conn, &id, rec.org_id.as_str(), at, event, channels).await?;
    }
    Ok(())
}

/// An event and one outbox row per channel, inside the caller's transaction.
async fn insert_event(
    conn: &mut sqlx::PgConnection,
    id: &str,
    org_id: &str,
    at: DateTime<Utc>,
    event: &crate::detect::Event,
    channels: &[String],
) -> anyhow::Result<()> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, org_id, kind, created_at, payload) VALUES ($1, $2, $3, $4, $5::jsonb)
         RETURNING seq",
    )
    .bind(id)
    .bind(org_id)
    .bind(event.kind())
    .bind(at)
    .bind(serde_json::to_string(event)?)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (event_seq, channel, next_attempt_at, created_at)
         SELECT $1, channel, $2, $2 FROM unnest($3::text[]) AS channel",
    )
    .bind(seq)
    .bind(at)
    .bind(channels)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The group commit's rows as one JSON array, `[{"o": org, "s": status, "t": time, "n": checks}]`,
/// for `jsonb_to_recordset` to unpack (one parameter, whatever the batch's size).
fn batch_json(rows: &[QuietRow]) -> anyhow::Result<String> {
    let mut json = String::with_capacity(rows.len() * 110);
    json.push('[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let status = serde_json::to_string(&*row.status)?;
        let (org, t, n) = (&row.org_id, ts(row.at), row.checks);
        let _ = write!(json, r#"{{"o":"{org}","s":{status},"t":"{t}","n":{n}}}"#);
    }
    json.push(']');
    Ok(json)
}
