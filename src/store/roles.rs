//! What a database asks of the processes that use it, said the way callers need it: on SQLite
//! one process at a time sends (the file's lock), on PostgreSQL several instances share the
//! database and the holder of a lease leads.

use std::time::Duration;

use super::{LockError, Store, WriterLock};
use crate::config::Database;

impl Store {
    /// Whether instances share this database and take turns by a lease (PostgreSQL), rather
    /// than one process holding the file (SQLite).
    pub fn needs_lease(&self) -> bool {
        self.postgres().is_some()
    }
}

impl WriterLock {
    /// The lock a process that sends (`linkwatch <command>`) holds on `database`: the SQLite
    /// file's, waiting up to `patience` for a holder about to finish (see
    /// [`WriterLock::acquire_patiently`]); none on PostgreSQL, where the lease decides who sends.
    pub async fn to_send(
        database: &Database,
        command: &str,
        patience: Duration,
    ) -> Result<Option<WriterLock>, LockError> {
        match database.sqlite_path() {
            Some(path) => WriterLock::acquire_patiently(path, command, patience).await.map(Some),
            None => Ok(None),
        }
    }
}
