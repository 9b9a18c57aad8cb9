//! `linkwatch copy-history`: moves a SQLite history into PostgreSQL, so that a team switching
//! backends keeps its states, changes, events and deliveries.
//!
//! The copy reads the SQLite file read-only in one transaction (a consistent snapshot) and
//! writes PostgreSQL in one transaction: it lands whole or not at all. It goes around the
//! `Store`'s fenced write path on purpose: no instance may lead while it runs (it refuses when
//! one does, or when an instance that asks for the lease is there: `lease_instances`), and it
//! holds the lease table locked so that none starts leading until it commits. On the SQLite
//! side it refuses unless it holds the file's lock: a lock it cannot take proves nothing.
//!
//! It is idempotent: events are matched by their unique id, transitions and failed checks by
//! their natural keys (org, time, status or class), outbox rows by (event, channel), orgs and
//! reminders by their keys (the newer state wins). The database identity (`meta.instance`) is
//! carried over, so that event ids stay the same and receivers keep deduplicating.

use std::fmt;

use crate::config::Database;
pub use crate::store::copy::{Copied, TableCount};
use crate::store::{LockError, WriterLock};

impl fmt::Display for Copied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "database identity {}{}",
            self.instance,
            if self.adopted_instance {
                " (taken over by the target: event ids stay the same)"
            } else {
                ""
            }
        )?;
        writeln!(f, "{:<16} {:>10} {:>10} {:>10}", "TABLE", "SOURCE", "COPIED", "SKIPPED")?;
        for t in &self.tables {
            writeln!(
                f,
                "{:<16} {:>10} {:>10} {:>10}",
                t.table,
                t.source,
                t.written,
                t.source.saturating_sub(t.written)
            )?;
        }
        Ok(())
    }
}

/// Copies the SQLite history at `from` into the PostgreSQL database `to`, or refuses (with
/// what and why) when that could lose or mix up history.
pub async fn copy_history(from: &Database, to: &Database) -> anyhow::Result<Copied> {
    let Some(path) = from.sqlite_path() else {
        anyhow::bail!("--from {from} is not a SQLite database: copy-history copies a SQLite file into PostgreSQL");
    };
    let Database::Postgres(target) = to else {
        anyhow::bail!("--to {to} is not a PostgreSQL database (write postgres://user@host:5432/database)");
    };
    if !path.is_file() {
        anyhow::bail!(
            "there is no SQLite database at {}: nothing to copy (--from names the file `database` points to)",
            path.display()
        );
    }
    // A daemon on the file would go on writing (and sending) what the copy leaves behind; the
    // lock also keeps one from starting on it while the copy reads. Only a lock taken proves
    // that none runs: a lock file that cannot be opened (another user's, a read-only
    // directory, NFS) says nothing about a daemon that opened it, so that is a refusal too.
    let _source_lock = match WriterLock::acquire(path, "copy-history") {
        Ok(lock) => lock,
        Err(LockError::Held { holder, .. }) => anyhow::bail!(
            "{holder} is using {}: stop it first, or what it records after the copy stays behind \
             and both databases would send the same deliveries",
            path.display()
        ),
        Err(LockError::Io(e)) => anyhow::bail!(
            "cannot tell whether a daemon uses {}: {e:#}; copy-history refuses, since a daemon it cannot \
             see would go on sending what the copy carries over. Stop linkwatch and copy as the user it \
             runs as, or copy the database file (with its -wal file) to a directory you can write and \
             copy from there",
            path.display()
        ),
    };

    crate::store::copy::copy(path, target).await
}
