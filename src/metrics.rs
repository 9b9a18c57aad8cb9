//! Counters kept in the process and the Prometheus text exposition (format 0.0.4) of them plus
//! the gauges read from the database at scrape time (status per org, outbox depth and age), so
//! that the gauges are right after a restart and a reload without any bookkeeping.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the check latency histogram, in seconds.
const BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Default)]
pub struct Metrics {
    /// org_id -> [(org_name, outcome, count)]; outcome is `ok` or a failure class. Keyed by the
    /// id alone so that counting a check (on every check) looks up by `&str` and allocates
    /// nothing once the org's entry exists; sorted only when rendered.
    checks: Mutex<HashMap<String, Vec<OrgChecks>>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    requests: AtomicU64,
    events: Mutex<BTreeMap<String, u64>>,
    /// (channel, outcome) -> count; outcome is sent, retry or failed.
    deliveries: Mutex<BTreeMap<(String, String), u64>>,
    /// (task, name) -> count; task is `check` (name: the org) or `channel` (name: the channel).
    panics: Mutex<BTreeMap<(String, String), u64>>,
    /// channel -> failed attempts to record a delivery's outcome in the database.
    record_failures: Mutex<BTreeMap<String, u64>>,
    /// Blocked channels, as their dispatcher last saw them (it alone knows the hold).
    blocked: Mutex<BTreeMap<String, Blocked>>,
    /// Whether this instance leads (checks and sends), and the epoch of its lease; -1 while it
    /// follows.
    leader_epoch: std::sync::atomic::AtomicI64,
    /// Heartbeat requests (`[heartbeat]`) that failed.
    heartbeat_failures: std::sync::atomic::AtomicU64,
    /// Heartbeats not sent because linkwatch was not healthy.
    heartbeat_skipped: std::sync::atomic::AtomicU64,
}

/// A channel with deliveries that keep failing past the hold (see [`crate::retry::HOLD_ATTEMPTS`]):
/// their orgs' later deliveries wait behind them, other orgs' pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    /// The first failure of the oldest of them seen by this process, on the wall clock (to show)
    /// and on the monotonic clock (for its age).
    pub since: chrono::DateTime<chrono::Utc>,
    pub since_mono: tokio::time::Instant,
    /// How many deliveries of the channel are past the hold.
    pub deliveries: usize,
    /// The last error of the oldest.
    pub last_error: Option<String>,
}

/// (org_name, outcome, count) of one org's checks.
type OrgChecks = (String, &'static str, u64);

/// What the database says at scrape time.
#[derive(Debug, Default)]
pub struct DbGauges {
    /// (org_id, org_name, status)
    pub statuses: Vec<(String, String, Option<String>)>,
    /// channel -> pending rows
    pub outbox_depth: Vec<(String, i64)>,
    /// Age of the oldest pending delivery, in seconds.
    pub oldest_pending_s: Option<f64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// Whether `channel` is blocked now (`None`: not), as its dispatcher says after each look at
    /// its pending rows.
    pub fn set_blocked(&self, channel: &str, blocked: Option<Blocked>) {
        let mut all = lock(&self.blocked);
        match blocked {
            Some(b) => {
                all.insert(channel.to_owned(), b);
            }
            None => {
                all.remove(channel);
            }
        }
    }

    /// Keeps only the blocked channels `keep` names (a reload removed the others).
    pub fn retain_blocked(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.blocked).retain(|c, _| keep(c));
    }

    /// The blocked channels, by name.
    pub fn blocked(&self) -> Vec<(String, Blocked)> {
        lock(&self.blocked)
            .iter()
            .map(|(c, b)| (c.clone(), b.clone()))
            .collect()
    }

    pub fn check(&self, org_id: &str, org_name: &str, outcome: &'static str, took: Duration, requests: u64) {
        {
            let mut checks = lock(&self.checks);
            let counts = match checks.get_mut(org_id) {
                Some(counts) => counts,
                None => checks.entry(org_id.to_owned()).or_default(),
            };
            match counts.iter_mut().find(|(n, o, _)| n == org_name && *o == outcome) {
                Some((_, _, count)) => *count += 1,
                None => counts.push((org_name.to_owned(), outcome, 1)),
            }
        }
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.requests.fetch_add(requests, Ordering::Relaxed);
    }

    pub fn event(&self, kind: &str) {
        *lock(&self.events).entry(kind.to_owned()).or_default() += 1;
    }

    pub fn delivery(&self, channel: &str, outcome: &str, n: u64) {
        *lock(&self.deliveries)
            .entry((channel.to_owned(), outcome.to_owned()))
            .or_default() += n;
    }

    /// A task that panicked and was recovered (a check of one org, a channel's worker).
    pub fn panicked(&self, task: &str, name: &str) {
        *lock(&self.panics)
            .entry((task.to_owned(), name.to_owned()))
            .or_default() += 1;
    }

    /// A heartbeat request failed (no answer, or not 2xx).
    pub fn heartbeat_failed(&self) {
        self.heartbeat_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A heartbeat was not sent: linkwatch was not healthy.
    pub fn heartbeat_skipped(&self) {
        self.heartbeat_skipped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The database refused to record what became of a delivery (it is kept in memory and
    /// written later; it is not sent again).
    pub fn record_failed(&self, channel: &str) {
        *lock(&self.record_failures).entry(channel.to_owned()).or_default() += 1;
    }

    /// Requests sent to Cloud Manager so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Follows this instance's leadership (see [`crate::leader`]).
    pub fn set_role(&self, role: &crate::leader::Role) {
        self.leader_epoch.store(role.epoch.unwrap_or(-1), Ordering::Relaxed);
    }

    pub fn render(&self, db: &DbGauges) -> String {
        let mut out = String::new();
        let w = &mut out;
        let epoch = self.leader_epoch.load(Ordering::Relaxed);
        header(
            w,
            "linkwatch_leader",
            "gauge",
            "1 while this instance leads (checks and sends), 0 while another does (PostgreSQL).",
        );
        let _ = writeln!(w, "linkwatch_leader {}", u8::from(epoch >= 0));
        header(
            w,
            "linkwatch_leader_epoch",
            "gauge",
            "The epoch (fencing token) of this instance's lease while it leads; 0 on SQLite.",
        );
        let _ = writeln!(w, "linkwatch_leader_epoch {}", epoch.max(0));
        header(
            w,
            "linkwatch_checks_total",
            "counter",
            "Status checks, by org and outcome (ok or the failure class).",
        );
        let checks = lock(&self.checks);
        let sorted: BTreeMap<(&str, &str, &str), u64> = checks
            .iter()
            .flat_map(|(id, counts)| {
                counts
                    .iter()
                    .map(move |(name, outcome, n)| ((id.as_str(), name.as_str(), *outcome), *n))
            })
            .collect();
        for ((id, name, outcome), n) in sorted {
            let _ = writeln!(
                w,
                "linkwatch_checks_total{{org_id=\"{}\",org_name=\"{}\",outcome=\"{}\"}} {n}",
                esc(id),
                esc(name),
                esc(outcome)
            );
        }
        drop(checks);
        header(
            w,
            "linkwatch_check_duration_seconds",
            "histogram",
            "How long one status check took, authentication included.",
        );
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                w,
                "linkwatch_check_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(w, "linkwatch_check_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            w,
            "linkwatch_check_duration_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(w, "linkwatch_check_duration_seconds_count {count}");
        header(
            w,
            "linkwatch_cloud_manager_requests_total",
            "counter",
            "HTTP requests sent to Cloud Manager (Digest challenges included).",
        );
        let _ = writeln!(w, "linkwatch_cloud_manager_requests_total {}", self.requests());
        header(w, "linkwatch_events_total", "counter", "Events recorded, by kind.");
        for (kind, n) in lock(&self.events).iter() {
            let _ = writeln!(w, "linkwatch_events_total{{kind=\"{}\"}} {n}", esc(kind));
        }
        header(
            w,
            "linkwatch_deliveries_total",
            "counter",
            "Delivery attempts, by channel and outcome (sent, retry, failed).",
        );
        for ((channel, outcome), n) in lock(&self.deliveries).iter() {
            let _ = writeln!(
                w,
                "linkwatch_deliveries_total{{channel=\"{}\",outcome=\"{}\"}} {n}",
                esc(channel),
                esc(outcome)
            );
        }
        header(
            w,
            "linkwatch_delivery_record_failures_total",
            "counter",
            "Failed attempts to record a delivery's outcome; the delivery is not sent again meanwhile.",
        );
        for (channel, n) in lock(&self.record_failures).iter() {
            let _ = writeln!(
                w,
                "linkwatch_delivery_record_failures_total{{channel=\"{}\"}} {n}",
                esc(channel)
            );
        }
        header(
            w,
            "linkwatch_heartbeat_failures_total",
            "counter",
            "Heartbeat requests to the external monitor that failed.",
        );
        let _ = writeln!(
            w,
            "linkwatch_heartbeat_failures_total {}",
            self.heartbeat_failures.load(std::sync::atomic::Ordering::Relaxed)
        );
        header(
            w,
            "linkwatch_heartbeat_skipped_total",
            "counter",
            "Heartbeats not sent because linkwatch was not healthy (what the monitor alerts on).",
        );
        let _ = writeln!(
            w,
            "linkwatch_heartbeat_skipped_total {}",
            self.heartbeat_skipped.load(std::sync::atomic::Ordering::Relaxed)
        );
        header(
            w,
            "linkwatch_task_panics_total",
            "counter",
            "Panics caught and recovered, by task (check, channel) and its org or channel.",
        );
        for ((task, name), n) in lock(&self.panics).iter() {
            let _ = writeln!(
                w,
                "linkwatch_task_panics_total{{task=\"{}\",name=\"{}\"}} {n}",
                esc(task),
                esc(name)
            );
        }
        header(
            w,
            "linkwatch_org_status",
            "gauge",
            "1 for each org's current confirmed status.",
        );
        for (id, name, status) in &db.statuses {
            if let Some(status) = status {
                let _ = writeln!(
                    w,
                    "linkwatch_org_status{{org_id=\"{}\",org_name=\"{}\",status=\"{}\"}} 1",
                    esc(id),
                    esc(name),
                    esc(status)
                );
            }
        }
        header(
            w,
            "linkwatch_outbox_pending",
            "gauge",
            "Deliveries waiting to be sent, by channel.",
        );
        for (channel, n) in &db.outbox_depth {
            let _ = writeln!(w, "linkwatch_outbox_pending{{channel=\"{}\"}} {n}", esc(channel));
        }
        header(
            w,
            "linkwatch_channel_blocked",
            "gauge",
            "1 when a delivery of the channel keeps failing past the hold (3 attempts or 5 minutes): its org's later events wait, other orgs' pass.",
        );
        let blocked = self.blocked();
        for (channel, _) in &db.outbox_depth {
            let blocked = blocked.iter().any(|(c, _)| c == channel);
            let _ = writeln!(
                w,
                "linkwatch_channel_blocked{{channel=\"{}\"}} {}",
                esc(channel),
                u8::from(blocked)
            );
        }
        header(
            w,
            "linkwatch_channel_blocked_seconds",
            "gauge",
            "Age of the channel's oldest blocked delivery.",
        );
        for (channel, b) in &blocked {
            let age = b.since_mono.elapsed().as_secs_f64();
            let _ = writeln!(
                w,
                "linkwatch_channel_blocked_seconds{{channel=\"{}\"}} {age}",
                esc(channel)
            );
        }
        header(
            w,
            "linkwatch_outbox_oldest_pending_seconds",
            "gauge",
            "Age of the oldest pending delivery (0 when none).",
        );
        let _ = writeln!(
            w,
            "linkwatch_outbox_oldest_pending_seconds {}",
            db.oldest_pending_s.unwrap_or(0.0)
        );
        out
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label values escape backslash, quote and newline.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
