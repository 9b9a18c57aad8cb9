//! One daemon per database file. SQLite would let two `linkwatch run` share a file, and both
//! would check every org and send every delivery. A lock on `<database>.lock` (flock, released
//! by the kernel when the process dies, even by kill -9) keeps the second one out, and the file
//! says who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// Held while the daemon runs; dropping it releases the database for another daemon.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{holder} is already using {database}; stop it first, or give this one a database of its own")]
    Held { database: String, holder: String },
    /// The lock could not be tried (the lock file cannot be opened or locked): whether another
    /// process holds it is not known, and callers that need to know must refuse.
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl WriterLock {
    /// [`WriterLock::acquire`], waiting up to `patience` for a holder that is about to finish:
    /// `linkwatch once` holds the lock only while it delivers (at most its `shutdown_timeout`),
    /// and a daemon restarting meanwhile should not fail for that. A `run` holding it is refused
    /// at once: it will not finish by itself.
    pub async fn acquire_patiently(
        database: &Path,
        command: &str,
        patience: Duration,
    ) -> Result<WriterLock, LockError> {
        let deadline = crate::clock::later(tokio::time::Instant::now(), patience);
        let mut said = false;
        loop {
            match WriterLock::acquire(database, command) {
                // A daemon does not finish by itself: refuse at once rather than wait in silence.
                // Anything else (`once` delivering) is about to let go: wait, and say for whom.
                Err(LockError::Held { holder, .. })
                    if !holder.starts_with("linkwatch run") && tokio::time::Instant::now() < deadline =>
                {
                    if !said {
                        tracing::info!(
                            "{holder} is using {}; waiting up to {} for it to finish",
                            database.display(),
                            humantime::format_duration(patience)
                        );
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                result => return result,
            }
        }
    }

    /// Takes the database for this process (running `linkwatch <command>`), or says who has it.
    pub fn acquire(database: &Path, command: &str) -> Result<WriterLock, LockError> {
        let path = lock_path(database);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Held {
                    database: database.display().to_string(),
                    holder: if holder.is_empty() {
                        "another linkwatch".to_owned()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot lock {}", path.display()))
                    .into());
            }
        }
        let holder = format!(
            "linkwatch {command} (pid {} on {} since {})",
            std::process::id(),
            crate::config::host_name(),
            super::ts(chrono::Utc::now())
        );
        // Who holds it is a courtesy for the next one's message; the lock works without it.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(holder.as_bytes()));
        Ok(WriterLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_holder_and_is_free_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("linkwatch.db");
        let first = WriterLock::acquire(&db, "run").unwrap();
        let err = WriterLock::acquire(&db, "run").unwrap_err().to_string();
        assert!(
            err.contains(&format!("linkwatch run (pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        WriterLock::acquire(&db, "run").expect("free again once released");
    }

    /// A lock file that cannot be opened (here a directory, which root cannot open as a file
    /// either) is not "free": it is an error that names the file and why.
    #[test]
    fn a_lock_file_that_cannot_be_opened_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("linkwatch.db");
        std::fs::create_dir(lock_path(&db)).unwrap();
        match WriterLock::acquire(&db, "copy-history") {
            Err(LockError::Io(e)) => {
                let said = format!("{e:#}");
                let expected = format!("cannot open the lock file {}: Is a directory", lock_path(&db).display());
                assert!(said.starts_with(&expected), "{said}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A second daemon is refused at once: waiting would only end in the same refusal later.
    #[tokio::test(start_paused = true)]
    async fn a_daemon_holding_it_is_refused_at_once_however_patient() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("linkwatch.db");
        let _run = WriterLock::acquire(&db, "run").unwrap();
        let started = tokio::time::Instant::now();
        match WriterLock::acquire_patiently(&db, "run", Duration::from_secs(3600)).await {
            Err(LockError::Held { holder, .. }) => assert!(holder.starts_with("linkwatch run (pid"), "{holder}"),
            other => panic!("took a held lock: {other:?}"),
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "it waited for a daemon");
    }

    /// A daemon starting while `linkwatch once` delivers waits for it instead of failing.
    #[tokio::test(start_paused = true)]
    async fn a_patient_lock_waits_for_a_holder_that_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("linkwatch.db");
        let once = WriterLock::acquire(&db, "once").unwrap();
        // While `once` holds it, patience that runs out is a refusal naming the holder.
        let started = tokio::time::Instant::now();
        match WriterLock::acquire_patiently(&db, "run", Duration::from_secs(1)).await {
            Err(LockError::Held { holder, .. }) => assert!(holder.contains("linkwatch once"), "{holder}"),
            other => panic!("took a held lock: {other:?}"),
        }
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "it did not wait out its patience"
        );
        // With more patience it gets the lock once the holder lets go, and not before.
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = released.clone();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(once);
        });
        let started = tokio::time::Instant::now();
        let _run = WriterLock::acquire_patiently(&db, "run", Duration::from_secs(10))
            .await
            .expect("the lock once `once` is done");
        assert!(
            released.load(std::sync::atomic::Ordering::SeqCst),
            "taken while still held"
        );
        assert!(started.elapsed() >= Duration::from_secs(3));
        release.await.unwrap();
    }
}
