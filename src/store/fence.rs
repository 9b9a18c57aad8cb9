//! The fence: what this instance believes about its own leadership, which every write of the
//! PostgreSQL backend checks twice, here (locally, without the database) and in SQL.
//!
//! Locally, leadership ends when the monotonic time since the last successful renewal passes
//! the lease's TTL minus a margin, even when the database cannot be reached to say so: by then
//! another instance may hold the lease. In SQL, each write transaction first locks the lease
//! row `FOR SHARE` where `holder` and `epoch` are ours and `expires_at > now()` (the database's
//! clock); no row means another instance took over, and the transaction rolls back.

use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

/// A write refused because this instance no longer leads.
#[derive(Debug, thiserror::Error)]
#[error("this instance no longer leads ({why}); it writes and sends nothing until it leads again")]
pub struct Fenced {
    pub why: &'static str,
}

/// Leadership as this instance knows it: the holder id, the epoch (fencing token) and until when
/// it may act without another renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub holder: String,
    pub epoch: i64,
    pub valid_until: Instant,
}

#[derive(Debug)]
pub struct Fence {
    term: Mutex<Option<Term>>,
    /// Changes whenever leadership is gained, renewed or lost; the daemon watches it to stop
    /// checking and sending the moment a write finds itself fenced.
    changed: watch::Sender<Option<i64>>,
}

impl Default for Fence {
    fn default() -> Fence {
        Fence {
            term: Mutex::new(None),
            changed: watch::channel(None).0,
        }
    }
}

impl Fence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Term>> {
        self.term.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This instance leads with `term` (acquired or renewed).
    pub fn lead(&self, term: Term) {
        let epoch = term.epoch;
        *self.lock() = Some(term);
        self.changed.send_if_modified(|e| e.replace(epoch) != Some(epoch));
    }

    /// This instance no longer leads.
    pub fn depose(&self) {
        self.depose_if(|_| true);
    }

    /// This instance no longer leads in `epoch` (a write found it fenced); a newer term set
    /// meanwhile stands.
    pub fn depose_term(&self, epoch: i64) {
        self.depose_if(|t| t.epoch == epoch);
    }

    /// Ends the current term if `ended` says so, and tells the watchers; whether it ended.
    fn depose_if(&self, ended: impl FnOnce(&Term) -> bool) -> bool {
        let mut term = self.lock();
        if !term.as_ref().is_some_and(ended) {
            return false;
        }
        *term = None;
        drop(term);
        self.changed.send_if_modified(|e| e.take().is_some());
        true
    }

    /// The term to write under, if this instance still leads by its own clock.
    pub fn current(&self) -> Result<Term, Fenced> {
        let now = Instant::now();
        let mut seen = None;
        let expired = self.depose_if(|t| {
            seen = Some(t.clone());
            now >= t.valid_until
        });
        match seen {
            Some(t) if !expired => Ok(t),
            Some(_) => Err(Fenced {
                why: "the lease was not renewed in time",
            }),
            None => Err(Fenced {
                why: "it does not hold the lease",
            }),
        }
    }

    /// Whether this instance still leads by its own clock ([`Fence::current`] without the term).
    pub fn leads(&self) -> bool {
        let now = Instant::now();
        let mut held = false;
        let expired = self.depose_if(|t| {
            held = true;
            now >= t.valid_until
        });
        held && !expired
    }

    /// The epoch while leading, `None` while following; changes as leadership does.
    pub fn watch(&self) -> watch::Receiver<Option<i64>> {
        self.changed.subscribe()
    }
}
