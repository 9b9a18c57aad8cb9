//! PostgreSQL's leader lease and the fence every write of the leader passes: several linkwatch
//! instances on one database, one of them leading (see [`super::fence`] for the local side).
//!
//! Every write of the check path is fenced: it runs in a transaction that, last, locks the
//! lease row `FOR SHARE` as long as this instance holds it with its epoch. Delivery outcomes are
//! guarded by the claim instead: a row is marked only under the claim token that sent it, so
//! that a deposed leader can still record what a receiver accepted (which keeps the new leader
//! from sending it again) but never touches a row someone else claimed since.

use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::{Postgres as Pg, Transaction};

use super::fence::{Fence, Fenced, Term};

/// The lease's name: one leader per database.
const LEASE: &str = "linkwatch";

#[derive(Debug, Clone)]
pub struct Postgres {
    pub(super) pool: PgPool,
    /// The lease's own connection: its renewal never waits for a connection behind slow writes.
    pub(super) lease: PgPool,
    pub(super) fence: std::sync::Arc<Fence>,
}

/// Who holds the lease, as the database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    pub epoch: i64,
    /// Whether the lease is still running (by the database's clock).
    pub live: bool,
}

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Postgres {
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

    /// Whether `holder` still says it is there (`lease_instances`): a clean stop withdraws it, an
    /// instance that died or froze stays until its word runs out.
    pub async fn announced(&self, holder: &str) -> anyhow::Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM lease_instances WHERE holder = $1)")
                .bind(holder)
                .fetch_one(&self.lease)
                .await?,
        )
    }

    pub async fn lease_holder(&self) -> anyhow::Result<Option<LeaseHolder>> {
        let row: Option<(String, i64, bool)> =
            sqlx::query_as("SELECT holder, epoch, expires_at > now() FROM leader_lease WHERE name = $1")
                .bind(LEASE)
                .fetch_optional(&self.lease)
                .await?;
        Ok(row.map(|(holder, epoch, live)| LeaseHolder { holder, epoch, live }))
    }

    /// Commits `tx` if this instance still holds the lease with `term`'s epoch, by the database:
    /// the lease row is locked `FOR SHARE` from that check to the commit, so a takeover's
    /// `UPDATE` waits for the commit, and a takeover that came first makes the check fail and
    /// nothing is written. The check comes last so that the lock is held for a moment only: a
    /// slow statement before it (a lock held by someone querying the tables) must not hold up
    /// the renewal of the lease.
    pub(super) async fn commit_fenced(&self, mut tx: Transaction<'static, Pg>, term: &Term) -> anyhow::Result<()> {
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
