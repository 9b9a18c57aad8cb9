//! Who checks and sends. On SQLite that is this process, once it holds the file lock
//! ([`crate::store::WriterLock`]). On PostgreSQL several instances share one database and the
//! one holding the lease leads: [`spawn`] takes the lease when it is free, renews it every third
//! of its length on the database's clock, and gives it up locally as soon as it was not renewed
//! in time (even when the database cannot be reached to say so), because by then another
//! instance may hold it. Every write of the leader is fenced by the epoch (see
//! `store/postgres/fence.rs`); [`Role`] is what the daemon, `/healthz` and `/metrics` follow.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{LeaseHolder, Postgres, Store, Term};

/// What this instance does now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Role {
    /// The epoch of this instance's lease while it leads (always 0 on SQLite).
    pub epoch: Option<i64>,
    /// Who leads, as last read from the database, while this instance follows.
    pub leader: Option<String>,
}

impl Role {
    pub fn leads(&self) -> bool {
        self.epoch.is_some()
    }

    /// For `/healthz` and logs.
    pub fn describe(&self) -> String {
        match (self.epoch, &self.leader) {
            (Some(epoch), _) => format!("leading (epoch {epoch})"),
            (None, Some(leader)) => format!("following ({leader} leads)"),
            (None, None) => "following (no instance leads yet)".into(),
        }
    }
}

/// This instance's leadership: its id, and its role as it changes.
#[derive(Debug, Clone)]
pub struct Leadership {
    pub holder: String,
    pub role: watch::Receiver<Role>,
}

impl Leadership {
    /// One process on a SQLite file: it leads for as long as it runs.
    pub fn sole(name: &str) -> Leadership {
        Leadership {
            holder: holder_id(name),
            role: watch::channel(Role {
                epoch: Some(0),
                leader: None,
            })
            .1,
        }
    }
}

/// This instance's part in leading, from its start to its release: on PostgreSQL the lease's
/// task; on SQLite nothing runs (the file lock keeps other processes out, so this one leads for
/// as long as it runs).
#[derive(Debug)]
pub struct Lease {
    pub leadership: Leadership,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    /// Asks for the lease of `store`'s database, held for `ttl` at a time, when it needs one, as
    /// the instance called `name` (`instance_name`).
    pub fn start(store: &Store, ttl: Duration, name: &str) -> Lease {
        let stop = CancellationToken::new();
        let (leadership, task) = match store.postgres() {
            Some(pg) => {
                let (leadership, task) = spawn(pg.clone(), LeaseTiming { ttl }, stop.clone(), name);
                (leadership, Some(task))
            }
            None => (Leadership::sole(name), None),
        };
        Lease { leadership, stop, task }
    }

    /// Gives the lease up (so that another instance takes over at once) and waits until it has.
    pub async fn release(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// This instance's id in the lease: its name (`instance_name`, by default the host's), process
/// and a random part (a restarted process on the same host is a new holder).
pub fn holder_id(name: &str) -> String {
    format!("{name}:{}:{:04x}", std::process::id(), rand::random::<u16>())
}

/// Why `me` leads now: nobody led that it saw, or the last leader it saw gave the lease up
/// (`announced == Some(false)`: a clean stop withdraws the instance) or let it run out (still
/// announced: it died, froze or lost the database).
pub fn takeover(me: &str, last: Option<&LeaseHolder>, announced: Option<bool>) -> String {
    match (last, announced) {
        (None, _) => "no other instance led while this one watched".into(),
        (Some(l), _) if l.holder == me => format!("its own lease (epoch {}) had run out", l.epoch),
        (Some(l), Some(false)) => format!("{} (epoch {}) gave the lease up", l.holder, l.epoch),
        (Some(l), Some(true)) => format!(
            "the lease of {} (epoch {}) ran out: it stopped renewing it (it died, froze or lost the database)",
            l.holder, l.epoch
        ),
        (Some(l), None) => format!("the lease of {} (epoch {}) ended", l.holder, l.epoch),
    }
}

/// The lease's timing: held for `ttl`, renewed every third of it, and given up locally a fifth
/// of it before it runs out, so that clock rates and the renewal's own round trip never let
/// this instance act on a lease the database already considers expired.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub ttl: Duration,
}

impl LeaseTiming {
    fn renew_every(self) -> Duration {
        self.ttl / 3
    }
    fn margin(self) -> Duration {
        self.ttl / 5
    }
}

/// Runs the lease for this instance until `stop`, then gives it up (so that another instance
/// takes over at once) once `released` is cancelled by the caller, after its last sends.
pub fn spawn(
    pg: Postgres,
    timing: LeaseTiming,
    stop: CancellationToken,
    name: &str,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let holder = holder_id(name);
    let (tx, rx) = watch::channel(Role::default());
    let task = tokio::spawn(run(pg, holder.clone(), timing, tx, stop));
    (Leadership { holder, role: rx }, task)
}

async fn run(pg: Postgres, holder: String, timing: LeaseTiming, role: watch::Sender<Role>, stop: CancellationToken) {
    let mut fenced = pg.fence().watch();
    let mut tenure = Tenure {
        pg,
        holder,
        timing,
        role,
        term: None,
        failing: false,
        last_leader: None,
    };
    loop {
        let started = Instant::now();
        let valid_until = started + timing.ttl.saturating_sub(timing.margin());
        match tenure.attempt().await {
            Ok(Some(epoch)) => tenure.renewed(epoch, valid_until).await,
            Ok(None) => tenure.follow().await,
            Err(e) => tenure.unreachable(e),
        }
        // Wait for the next renewal, or until the lease runs out locally, or until a write
        // finds itself fenced.
        let wake = match &tenure.term {
            Some(t) => (started + timing.renew_every()).min(t.valid_until),
            None => started + timing.renew_every(),
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(wake) => {}
            _ = fenced.changed() => {}
        }
        tenure.lapse_if_lost(&mut fenced);
    }
    tenure.give_up().await;
}

/// The lease loop's state between attempts.
struct Tenure {
    pg: Postgres,
    holder: String,
    timing: LeaseTiming,
    role: watch::Sender<Role>,
    /// The epoch this instance leads with, and until when (monotonic) it may act without renewal.
    term: Option<Term>,
    failing: bool,
    /// The leader this instance last saw while it followed, to say why it takes over.
    last_leader: Option<LeaseHolder>,
}

impl Tenure {
    /// Renews the lease this instance holds, or tries to acquire it: the epoch it now leads
    /// with, or `None` when another instance holds it.
    async fn attempt(&self) -> anyhow::Result<Option<i64>> {
        let (pg, holder, timing) = (&self.pg, &self.holder, self.timing);
        // A renewal that hangs must not outlive the lease it renews.
        tokio::time::timeout(timing.renew_every(), async {
            match &self.term {
                Some(t) => pg
                    .renew_lease(holder, t.epoch, timing.ttl)
                    .await
                    .map(|ok| ok.then_some(t.epoch)),
                None => pg.acquire_lease(holder, timing.ttl).await,
            }
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {:?}", timing.renew_every())))
    }

    /// The lease is this instance's (again) with `epoch`, valid until `valid_until`.
    async fn renewed(&mut self, epoch: i64, valid_until: Instant) {
        self.failing = false;
        let starting = self.term.is_none();
        let t = Term {
            holder: self.holder.clone(),
            epoch,
            valid_until,
        };
        self.pg.fence().lead(t.clone());
        self.term = Some(t);
        self.role.send_if_modified(|r| {
            replace(
                r,
                Role {
                    epoch: Some(epoch),
                    leader: None,
                },
            )
        });
        if starting {
            self.say_why_leading(epoch).await;
        }
    }

    async fn say_why_leading(&mut self, epoch: i64) {
        let holder = &self.holder;
        // After taking the lead, so that asking why delays nothing. Whether the last
        // leader is still announced tells a lease that ran out from one given up (a
        // clean stop withdraws the instance).
        let last = self.last_leader.take();
        let announced = match &last {
            Some(l) if l.holder != *holder => {
                tokio::time::timeout(self.timing.renew_every(), self.pg.announced(&l.holder))
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            _ => None,
        };
        let why = takeover(holder, last.as_ref(), announced);
        tracing::info!(epoch, holder = %holder, "leading: this instance now checks and sends ({why})");
    }

    /// Another instance holds the lease: stop leading if this one did, and note who leads.
    async fn follow(&mut self) {
        self.failing = false;
        if let Some(t) = self.term.take() {
            self.pg.fence().depose();
            tracing::warn!(
                epoch = t.epoch,
                "leadership lost: the lease expired or another instance took it; following"
            );
        }
        // Bounded: a dead connection must not keep this loop from its next attempt.
        let seen = tokio::time::timeout(self.timing.renew_every(), self.pg.lease_holder()).await;
        let leader = match seen {
            Ok(Ok(Some(h))) => {
                let shown = format!("{} (epoch {})", h.holder, h.epoch);
                self.last_leader = Some(h);
                Some(shown)
            }
            _ => None,
        };
        let next = Role { epoch: None, leader };
        let said = next.describe();
        if self.role.send_if_modified(|r| replace(r, next)) {
            tracing::info!("{said}");
        }
    }

    /// The database did not answer; said once until it answers again.
    fn unreachable(&mut self, e: anyhow::Error) {
        if !self.failing {
            tracing::warn!("cannot reach the lease in the database: {e:#}");
        }
        self.failing = true;
    }

    /// Stops leading once the lease ran out locally or a write found it taken.
    fn lapse_if_lost(&mut self, fenced: &mut watch::Receiver<Option<i64>>) {
        let expired = self.term.as_ref().is_some_and(|t| Instant::now() >= t.valid_until);
        let deposed = self.term.is_some() && fenced.borrow_and_update().is_none();
        if expired || deposed {
            let t = self.term.take().expect("checked above");
            self.pg.fence().depose();
            let why = if expired {
                "the lease could not be renewed in time"
            } else {
                "a write found the lease taken by another instance"
            };
            tracing::warn!(
                epoch = t.epoch,
                "leadership lost: {why}; this instance stops checking and sending"
            );
            self.role.send_if_modified(|r| replace(r, Role::default()));
        }
    }

    /// On stop: releases the lease this instance holds, or withdraws it as a follower.
    async fn give_up(self) {
        let Tenure {
            pg,
            holder,
            timing,
            role,
            term,
            ..
        } = self;
        role.send_if_modified(|r| replace(r, Role::default()));
        match term {
            Some(t) => {
                pg.fence().depose();
                match pg.release_lease(&holder, t.epoch).await {
                    Ok(()) => tracing::info!(
                        epoch = t.epoch,
                        "leadership released: another instance can take over now"
                    ),
                    Err(e) => {
                        tracing::warn!("cannot release the lease ({e:#}); another instance takes over when it expires")
                    }
                }
            }
            // A follower says it leaves too, so that `copy-history` need not wait for its word
            // to run out; bounded, since a stop must not wait on a database that does not answer.
            None => match tokio::time::timeout(timing.renew_every(), pg.withdraw(&holder)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("cannot tell the database that this instance stops ({e:#})"),
                Err(_) => tracing::warn!("cannot tell the database that this instance stops: no answer"),
            },
        }
    }
}

/// The role once the first attempt at the lease has been answered (or `patience` passed).
pub async fn settled(mut role: watch::Receiver<Role>, patience: Duration) -> Role {
    let answered = async {
        let _ = role.wait_for(|r| r.leads() || r.leader.is_some()).await;
    };
    let _ = tokio::time::timeout(patience, answered).await;
    role.borrow().clone()
}

fn replace(r: &mut Role, next: Role) -> bool {
    std::mem::replace(r, next.clone()) != next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_says_whether_the_last_leader_gave_up_or_ran_out() {
        let a = LeaseHolder {
            holder: "watcher-a:41:0a0a".into(),
            epoch: 7,
            live: true,
        };
        let me = "watcher-b:52:0b0b";
        assert!(takeover(me, Some(&a), Some(false)).contains("watcher-a:41:0a0a (epoch 7) gave the lease up"));
        assert!(takeover(me, Some(&a), Some(true)).contains("the lease of watcher-a:41:0a0a (epoch 7) ran out"));
        assert!(takeover(me, None, None).contains("no other instance led"));
    }
}
