//! Counters kept in the process and the gauges read from the database at scrape time (status
//! per org, outbox depth and age), so that the gauges are right after a restart and a reload
//! without any bookkeeping. The `prometheus-client` crate keeps the counters and the histogram
//! and renders everything as OpenMetrics text.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::{OrgId, OrgIdHasher};
use crate::store::DbGauges;

/// Upper bounds of the check latency histogram, in seconds.
const BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A series' labels, by name.
type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    /// The counters and the histogram below, registered once.
    registry: Registry,
    /// Checks by org and outcome, kept compact and given their labels only when `/metrics` is
    /// rendered (a [`Collector`]): a `Family` would keep three owned label strings and a map
    /// entry per series, which at 10,000 orgs was megabytes of the daemon's memory.
    checks: std::sync::Arc<CheckCounts>,
    latency: Histogram,
    requests: Counter,
    events: Family<Labels, Counter>,
    /// By channel and outcome (sent, retry or failed).
    deliveries: Family<Labels, Counter>,
    /// By task (`check`, named by the org; `channel`, by the channel) and name.
    panics: Family<Labels, Counter>,
    /// Failed attempts to record a delivery's outcome in the database, by channel.
    record_failures: Family<Labels, Counter>,
    /// Blocked channels, as their dispatcher last saw them (it alone knows the hold).
    blocked: Mutex<BTreeMap<String, Blocked>>,
    /// Channels whose latest delivery was refused for good, until one of theirs is sent.
    refused: Mutex<BTreeMap<String, Refused>>,
    /// 1 while this instance leads (checks and sends), and the epoch of its lease (0 while it
    /// follows, and on SQLite).
    leader: Gauge,
    leader_epoch: Gauge,
    /// 1, labelled with this instance's name (`instance_name`), to tell instances apart.
    instance: Family<Labels, Gauge>,
    /// Heartbeat requests (`[heartbeat]`) that failed.
    heartbeat_failures: Counter,
    /// Heartbeats sent to the monitor's fail URL because linkwatch was not healthy.
    heartbeat_unhealthy: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            checks: std::sync::Arc::default(),
            latency: Histogram::new(BUCKETS),
            requests: Counter::default(),
            events: Family::default(),
            deliveries: Family::default(),
            panics: Family::default(),
            record_failures: Family::default(),
            blocked: Mutex::default(),
            refused: Mutex::default(),
            leader: Gauge::default(),
            leader_epoch: Gauge::default(),
            instance: Family::default(),
            heartbeat_failures: Counter::default(),
            heartbeat_unhealthy: Counter::default(),
        };
        // As before any role is known: one process, leading (SQLite).
        m.leader.set(1);
        let mut registry = Registry::default();
        // OpenMetrics names a counter's family without `_total` and its series with it; the
        // crate adds the suffix, and a full stop to each help text.
        m.register_instance(&mut registry);
        m.register_checks(&mut registry);
        m.register_deliveries(&mut registry);
        m.register_heartbeat(&mut registry);
        registry.register(
            "linkwatch_task_panics",
            "Panics caught and recovered, by task (check, channel) and its org or channel",
            m.panics.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Which instance this is, and whether it leads.
    fn register_instance(&self, registry: &mut Registry) {
        registry.register(
            "linkwatch_leader",
            "1 while this instance leads (checks and sends), 0 while another does (PostgreSQL)",
            self.leader.clone(),
        );
        registry.register(
            "linkwatch_leader_epoch",
            "The epoch (fencing token) of this instance's lease while it leads; 0 on SQLite",
            self.leader_epoch.clone(),
        );
        registry.register(
            "linkwatch_instance_info",
            "1, labelled with this instance's name (instance_name, by default the host's)",
            self.instance.clone(),
        );
    }

    /// The status checks: their outcomes, how long they took, and the requests they sent.
    fn register_checks(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.checks.clone()));
        registry.register(
            "linkwatch_check_duration_seconds",
            "How long one status check took, authentication included",
            self.latency.clone(),
        );
        registry.register(
            "linkwatch_cloud_manager_requests",
            "HTTP requests sent to Cloud Manager (Digest challenges included)",
            self.requests.clone(),
        );
    }

    /// The events recorded, and what became of their deliveries.
    fn register_deliveries(&self, registry: &mut Registry) {
        registry.register("linkwatch_events", "Events recorded, by kind", self.events.clone());
        registry.register(
            "linkwatch_deliveries",
            "Delivery attempts, by channel and outcome (sent, retry, failed)",
            self.deliveries.clone(),
        );
        registry.register(
            "linkwatch_delivery_record_failures",
            "Failed attempts to record a delivery's outcome; the delivery is not sent again meanwhile",
            self.record_failures.clone(),
        );
    }

    /// The heartbeat to an external monitor (`[heartbeat]`).
    fn register_heartbeat(&self, registry: &mut Registry) {
        registry.register(
            "linkwatch_heartbeat_failures",
            "Heartbeat requests to the external monitor that failed",
            self.heartbeat_failures.clone(),
        );
        registry.register(
            "linkwatch_heartbeat_unhealthy",
            "Heartbeats sent to the monitor's fail URL because linkwatch was not healthy",
            self.heartbeat_unhealthy.clone(),
        );
    }
}

/// A channel with deliveries that keep failing past its hold for the incident (see
/// [`crate::retry::HOLD_ATTEMPTS`]): their orgs' later deliveries wait behind them, other orgs'
/// pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    /// The first failure of the incident, as this process saw it, on the wall clock (to show)
    /// and on the monotonic clock (for its age).
    pub since: chrono::DateTime<chrono::Utc>,
    pub since_mono: tokio::time::Instant,
    /// How many deliveries of the channel are failing (waiting for a retry).
    pub deliveries: usize,
    /// The latest failure's error.
    pub last_error: Option<String>,
}

/// A channel whose latest delivery the receiver refused for good (a revoked webhook, a removed
/// recipient): nobody is told what that delivery said, and nothing retries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub at: chrono::DateTime<chrono::Utc>,
    pub error: String,
}

/// Checks by org id: the org's name (as of its last check) and a count per outcome (`ok` or a
/// failure class). Counting allocates nothing once the org and outcome have been seen (the id
/// is shared with the config).
#[derive(Debug, Default)]
struct CheckCounts(Mutex<HashMap<OrgId, OrgCounts, OrgIdHasher>>);

#[derive(Debug)]
struct OrgCounts {
    name: Box<str>,
    by_outcome: Vec<(&'static str, u64)>,
}

impl CheckCounts {
    fn count(&self, org_id: &OrgId, org_name: &str, outcome: &'static str) {
        let mut all = lock(&self.0);
        let org = match all.get_mut(org_id) {
            Some(org) => org,
            None => all.entry(org_id.clone()).or_insert_with(|| OrgCounts {
                name: org_name.into(),
                by_outcome: Vec::new(),
            }),
        };
        if *org.name != *org_name {
            org.name = org_name.into();
        }
        match org.by_outcome.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => org.by_outcome.push((outcome, 1)),
        }
    }
}

impl prometheus_client::collector::Collector for CheckCounts {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::TypedMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        // Sorted, so that a scrape reads the same from one time to the next.
        let rows: BTreeMap<(String, String, &'static str), u64> = lock(&self.0)
            .iter()
            .flat_map(|(id, org)| {
                org.by_outcome
                    .iter()
                    .map(move |(outcome, n)| ((id.to_string(), org.name.to_string(), *outcome), *n))
            })
            .collect();
        let mut metric = encoder.encode_descriptor(
            "linkwatch_checks",
            "Status checks, by org and outcome (ok or the failure class)",
            None,
            ConstCounter::<u64>::TYPE,
        )?;
        for ((id, name, outcome), n) in &rows {
            let labels = [
                ("org_id", id.as_str()),
                ("org_name", name.as_str()),
                ("outcome", *outcome),
            ];
            ConstCounter::new(*n).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
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

    /// Keeps only the blocked (and refused) channels `keep` names (a reload removed the others).
    pub fn retain_blocked(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.blocked).retain(|c, _| keep(c));
        lock(&self.refused).retain(|c, _| keep(c));
    }

    /// Whether `channel`'s latest delivery was refused for good (`None`: it was sent), as its
    /// dispatcher says after each outcome.
    pub fn set_refused(&self, channel: &str, refused: Option<Refused>) {
        let mut all = lock(&self.refused);
        match refused {
            Some(r) => {
                all.insert(channel.to_owned(), r);
            }
            None => {
                all.remove(channel);
            }
        }
    }

    /// The channels whose latest delivery was refused for good, by name.
    pub fn refused(&self) -> Vec<(String, Refused)> {
        lock(&self.refused)
            .iter()
            .map(|(c, r)| (c.clone(), r.clone()))
            .collect()
    }

    /// The blocked channels, by name.
    pub fn blocked(&self) -> Vec<(String, Blocked)> {
        lock(&self.blocked)
            .iter()
            .map(|(c, b)| (c.clone(), b.clone()))
            .collect()
    }

    pub fn check(&self, org_id: &OrgId, org_name: &str, outcome: &'static str, took: Duration, requests: u64) {
        self.checks.count(org_id, org_name, outcome);
        self.latency.observe(took.as_secs_f64());
        self.requests.inc_by(requests);
    }

    pub fn event(&self, kind: &str) {
        self.events.get_or_create(&vec![("kind", kind.to_owned())]).inc();
    }

    pub fn delivery(&self, channel: &str, outcome: &str, n: u64) {
        self.deliveries
            .get_or_create(&vec![("channel", channel.to_owned()), ("outcome", outcome.to_owned())])
            .inc_by(n);
    }

    /// A task that panicked and was recovered (a check of one org, a channel's worker).
    pub fn panicked(&self, task: &str, name: &str) {
        self.panics
            .get_or_create(&vec![("task", task.to_owned()), ("name", name.to_owned())])
            .inc();
    }

    /// A heartbeat request failed (no answer, or not 2xx).
    pub fn heartbeat_failed(&self) {
        self.heartbeat_failures.inc();
    }

    /// A heartbeat went to the fail URL: linkwatch was not healthy.
    pub fn heartbeat_unhealthy(&self) {
        self.heartbeat_unhealthy.inc();
    }

    /// The database refused to record what became of a delivery (it is kept in memory and
    /// written later; it is not sent again).
    pub fn record_failed(&self, channel: &str) {
        self.record_failures
            .get_or_create(&vec![("channel", channel.to_owned())])
            .inc();
    }

    /// Requests sent to Cloud Manager so far.
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// Names this instance in `linkwatch_instance_info`.
    pub fn set_instance(&self, name: &str) {
        self.instance.clear();
        // `name`, not `instance`: Prometheus gives every series the target's `instance` label.
        self.instance.get_or_create(&vec![("name", name.to_owned())]).set(1);
    }

    /// Follows this instance's leadership: the epoch of its lease while it leads, `None` while
    /// another instance does.
    pub fn set_role(&self, epoch: Option<i64>) {
        self.leader.set(i64::from(epoch.is_some()));
        self.leader_epoch.set(epoch.unwrap_or(0).max(0));
    }

    /// The OpenMetrics text of the counters and of `db`, read at scrape time.
    pub fn render(&self, db: &DbGauges) -> String {
        let mut scrape = Registry::default();
        register_org_statuses(&mut scrape, db);
        register_channels(&mut scrape, db, &self.blocked());
        register_migrations(&mut scrape, db);
        register_silences(&mut scrape, db);
        register_deprecations(&mut scrape, db);
        let oldest = Gauge::<f64, AtomicU64>::default();
        oldest.set(db.oldest_pending_s.unwrap_or(0.0));
        scrape.register(
            "linkwatch_outbox_oldest_pending_seconds",
            "Age of the oldest pending delivery (0 when none)",
            oldest,
        );

        let mut out = String::new();
        // Writing to a String cannot fail; the encoders return fmt::Result all the same.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &scrape);
        let _ = encode_eof(&mut out);
        out
    }
}

/// Each org's current confirmed status, with the instance it is asked at.
fn register_org_statuses(scrape: &mut Registry, db: &DbGauges) {
    let statuses = Family::<Labels, Gauge>::default();
    for (i, (id, name, status)) in db.statuses.iter().enumerate() {
        if let Some(status) = status {
            statuses
                .get_or_create(&vec![
                    ("org_id", id.clone()),
                    ("org_name", name.clone()),
                    ("status", status.clone()),
                    ("instance_url", db.instances.get(i).cloned().unwrap_or_default()),
                ])
                .set(1);
        }
    }
    scrape.register(
        "linkwatch_org_status",
        "1 for each org's current confirmed status, with the Cloud/Ops Manager it is asked at (instance_url)",
        statuses,
    );
}

/// Each channel's pending deliveries, and whether (and for how long) it is blocked.
fn register_channels(scrape: &mut Registry, db: &DbGauges, blocked: &[(String, Blocked)]) {
    let pending = Family::<Labels, Gauge>::default();
    let blocked_now = Family::<Labels, Gauge>::default();
    for (channel, n) in &db.outbox_depth {
        pending.get_or_create(&vec![("channel", channel.clone())]).set(*n);
        let is_blocked = blocked.iter().any(|(c, _)| c == channel);
        blocked_now
            .get_or_create(&vec![("channel", channel.clone())])
            .set(i64::from(is_blocked));
    }
    scrape.register(
        "linkwatch_outbox_pending",
        "Deliveries waiting to be sent, by channel",
        pending,
    );
    scrape.register(
        "linkwatch_channel_blocked",
        "1 when a delivery of the channel keeps failing past the hold (3 attempts or 5 minutes): its org's later events wait, other orgs' pass",
        blocked_now,
    );
    let blocked_for = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (channel, b) in blocked {
        blocked_for
            .get_or_create(&vec![("channel", channel.clone())])
            .set(b.since_mono.elapsed().as_secs_f64());
    }
    scrape.register(
        "linkwatch_channel_blocked_seconds",
        "Age of the channel's oldest blocked delivery",
        blocked_for,
    );
}

/// Each live migration's status, whether it is ready for cutover, its lag and the time left to
/// its estimated deadline.
fn register_migrations(scrape: &mut Registry, db: &DbGauges) {
    let (status, ready, lag, left) = (
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge>::default(),
        Family::<Labels, Gauge>::default(),
    );
    for m in &db.migrations {
        let name = || vec![("migration", m.name.clone())];
        if let Some(s) = &m.status {
            status
                .get_or_create(&vec![
                    ("migration", m.name.clone()),
                    ("org_id", m.org_id.clone()),
                    ("status", s.clone()),
                ])
                .set(1);
        }
        ready.get_or_create(&name()).set(i64::from(m.ready_for_cutover));
        if let Some(l) = m.lag_s {
            lag.get_or_create(&name()).set(l);
        }
        if let Some(l) = m.left_s {
            left.get_or_create(&name()).set(l);
        }
    }
    scrape.register(
        "linkwatch_migration_status",
        "1 for each live migration's current status (Atlas)",
        status,
    );
    scrape.register(
        "linkwatch_migration_ready_for_cutover",
        "1 while Atlas says the live migration can be cut over",
        ready,
    );
    scrape.register(
        "linkwatch_migration_lag_seconds",
        "The live migration's replication lag, while Atlas reports one",
        lag,
    );
    scrape.register(
        "linkwatch_migration_cutover_left_seconds",
        "Seconds left to the estimated end of the cutover window (estimated: an extension in the Atlas UI is not visible)",
        left,
    );
}

/// The silences holding events back now, and when each ends.
fn register_silences(scrape: &mut Registry, db: &DbGauges) {
    let silenced = Family::<Labels, Gauge>::default();
    for (s, org_name) in &db.silences {
        silenced
            .get_or_create(&vec![
                ("silence", s.id.to_string()),
                ("org_id", s.org_id.clone()),
                ("org_name", org_name.clone()),
                ("migration", s.migration.clone().unwrap_or_default()),
            ])
            .set(s.until().timestamp());
    }
    scrape.register(
        "linkwatch_silence_ends_timestamp_seconds",
        "For each silence holding events back now: when it ends (Unix time); its events are recorded, not sent",
        silenced,
    );
    let active = Gauge::<i64>::default();
    active.set(db.silences.len() as i64);
    scrape.register("linkwatch_silences_active", "Silences holding events back now", active);
}

/// The API versions announced for retirement, and their sunsets.
fn register_deprecations(scrape: &mut Registry, db: &DbGauges) {
    let deprecated = Family::<Labels, Gauge>::default();
    let sunset = Family::<Labels, Gauge>::default();
    for d in &db.api_deprecations {
        let label = d
            .sunset_at
            .map(|t| t.format("%Y-%m-%d").to_string())
            .or_else(|| d.sunset.clone())
            .unwrap_or_default();
        deprecated
            .get_or_create(&vec![
                ("api", d.api.clone()),
                ("version", d.version.clone()),
                ("sunset", label),
            ])
            .set(1);
        if let Some(t) = d.sunset_at {
            sunset
                .get_or_create(&vec![("api", d.api.clone()), ("version", d.version.clone())])
                .set(t.timestamp());
        }
    }
    scrape.register(
        "linkwatch_api_deprecated",
        "1 for each API version linkwatch asks for that the API announced for retirement (Deprecation/Sunset headers), with its sunset date",
        deprecated,
    );
    scrape.register(
        "linkwatch_api_sunset_timestamp_seconds",
        "When a deprecated API version is removed (its Sunset header), as a Unix time",
        sunset,
    );
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use super::*;

    /// Counts the allocations of the current thread, so tests running beside it do not count.
    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }

    #[test]
    fn counting_a_check_allocates_nothing_once_the_org_is_known() {
        let m = Metrics::default();
        let took = Duration::from_millis(30);
        let id = OrgId::parse("5f0c00000000000000000a01").unwrap();
        m.check(&id, "alpha", "ok", took, 1);
        m.check(&id, "alpha", "timeout", took, 1);
        let before = allocations();
        for _ in 0..1000 {
            m.check(&id, "alpha", "ok", took, 1);
            m.check(&id, "alpha", "timeout", took, 1);
        }
        assert_eq!(allocations() - before, 0, "allocations for 2,000 checks");

        let text = m.render(&DbGauges::default());
        assert!(
            text.contains(
                "linkwatch_checks_total{org_id=\"5f0c00000000000000000a01\",org_name=\"alpha\",outcome=\"ok\"} 1001"
            ),
            "{text}"
        );
        assert!(text.contains("linkwatch_check_duration_seconds_count 2002"), "{text}");
        assert!(text.contains("linkwatch_cloud_manager_requests_total 2002"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.check(
            &OrgId::parse("5f0c00000000000000000a01").unwrap(),
            "a \"quoted\\\" name",
            "ok",
            Duration::ZERO,
            1,
        );
        let text = m.render(&DbGauges::default());
        assert!(text.contains(r#"org_name="a \"quoted\\\" name""#), "{text}");
    }
}
