//! The pages, as maud templates: compiled with the binary, every value escaped unless marked
//! otherwise (nothing here is). One function per section; a page is a layout around sections.

use base64::Engine as _;
use chrono::Utc;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::{Digest as _, Sha256};

use super::REFRESH_SECS;
use super::filter::{Filter, Shown};
use super::format::span;
use super::standing::OrgStanding;
use super::timeline::class;
use super::view::{
    ChangeView, ChannelView, FailureView, LiveMigrationDetail, LiveMigrationView, OrgDetail, OrgView, SilenceView,
    StatusView, SyncedShare, parse,
};
use crate::text::shown_time;

/// Small and inline: no files to serve, no build step.
const CSS: &str = "
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1200px}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin-top:1.8rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e0e0e0;vertical-align:top}
th{font-weight:600;color:#555}.muted{color:#777;font-size:.9rem}.err{color:#b71c1c}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.8rem;font-size:.8rem;font-weight:600;white-space:nowrap}
.badge.failing{background:#c62828;color:#fff}.badge.broken{background:#ef6c00;color:#fff}
.badge.not_synced{background:#f9a825;color:#222}.badge.unchecked{background:#cfd8dc;color:#222}
.badge.synced{background:#2e7d32;color:#fff}.badge.retrying{background:#ffcc80;color:#222}
.badge.silenced{background:#9e9e9e;color:#fff}
ul.summary{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4rem 1.2rem}
ul.summary a{text-decoration:none;color:inherit}ul.summary .n{font-weight:600;margin-left:.3rem}
form.filters{display:flex;flex-wrap:wrap;gap:.6rem;align-items:end;margin:1rem 0}
form.filters label{display:flex;flex-direction:column;font-size:.85rem;color:#555}
.share{white-space:nowrap;font-variant-numeric:tabular-nums}.share .low{color:#b71c1c}.share .part{color:#8d6e00}
.badge.failed{background:#c62828;color:#fff}.badge.ready{background:#1565c0;color:#fff}
.badge.in_progress{background:#bbdefb;color:#222}.badge.complete{background:#2e7d32;color:#fff}
svg.lag{width:100%;height:auto}
.status.synced{color:#2e7d32}.status.not-synced{color:#8d6e00}.status.other{color:#6a1b9a}
svg.timeline{width:100%;height:auto;max-height:140px}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 1rem;vertical-align:middle}
.legend .key-synced{background:#2e7d32}.legend .key-not-synced{background:#f9a825}
.legend .key-other{background:#6a1b9a}.legend .key-unknown{background:#cfd8dc}
.legend .key-failure{background:#c62828;width:.2rem}.legend .key-lag{background:#1565c0;height:.2rem}
.legend .key-lag-alert{background:#c62828;height:.1rem}.legend .key-no-lag{background:#eceff1}
";

/// The Content-Security-Policy of every answer: nothing may load, run or frame the page, and
/// the one thing the pages need, the style block above, is allowed by its hash (no
/// `'unsafe-inline'`: the pages have no style attributes, so an injected one would not apply).
/// Forms may submit to this origin only: the filters are a `GET` form to the page itself.
/// The charts are inline SVG drawn with presentation attributes, which need nothing more.
pub(super) fn content_security_policy() -> String {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(CSS.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
}

/// A page; `root` is the relative path from it back to the status page (`""` on the status page
/// itself, `"../"` one level down), so that every link also works under a proxy's sub-path.
fn layout(title: &str, refresh: bool, generated_at: &str, root: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh {
                    meta http-equiv="refresh" content=(REFRESH_SECS);
                }
                title { (title) " · linkwatch" }
                style { (PreEscaped(CSS)) }
            }
            body {
                (body)
                @if !generated_at.is_empty() {
                    p class="muted" {
                        "Generated " (shown_time(generated_at)) " by linkwatch"
                        @if refresh { "; reloads every " (REFRESH_SECS) " s" }
                        ". JSON: " a href=(format!("{root}api/v1/status")) { "api/v1/status" } "."
                    }
                }
            }
        }
    }
}

/// `GET /`: counts by state, the filters, the orgs they pick (by default those that need
/// attention: healthy orgs are counted, not listed), the live migrations, then the channels.
pub fn status_page(v: &StatusView, filter: &Filter) -> Markup {
    let shown = filter.state.unwrap_or(Shown::Attention);
    layout(
        "Status",
        true,
        &v.generated_at,
        "",
        html! {
            h1 { "linkwatch status" }
            p class="muted" {
                (v.summary.values().sum::<usize>()) " orgs"
                @if v.migrations_not_shown + v.migrations.len() > 0 {
                    ", " (v.migrations_not_shown + v.migrations.len()) " live migrations"
                }
                @if !v.channels.is_empty() { "; " (v.channels.len()) " channels with undelivered notifications" }
                @if !v.silences.is_empty() { "; " (v.silences.len()) " silenced" }
                ". Served by " (v.instance) "."
            }
            (summary(v, filter))
            @if !v.silences.is_empty() { (silences_section(&v.silences)) }
            (filter_form(v, filter, shown))
            (orgs_section(v, filter, shown))
            @if !v.migrations.is_empty() || v.migrations_not_shown > 0 {
                (live_migrations_section(v, filter))
            }
            (channels_section(&v.channels))
        },
    )
}

/// Every state with its count, each a link to the orgs in it.
fn summary(v: &StatusView, filter: &Filter) -> Markup {
    html! {
        ul class="summary" {
            @for (state, n) in &v.summary {
                // Silences are rare: the state is shown once some org has one.
                @if *n > 0 || *state != OrgStanding::Silenced {
                    li {
                        a href=(filter.link(Shown::State(*state), 1)) {
                            span class=(format!("badge {}", state.as_str())) { (state.label()) }
                            span class="n" { (n) }
                        }
                    }
                }
            }
        }
    }
}

/// The filters as a plain `GET` form to the page itself: no script, and the result a link.
fn filter_form(v: &StatusView, filter: &Filter, shown: Shown) -> Markup {
    let states = [Shown::Attention, Shown::All]
        .into_iter()
        .chain(OrgStanding::ALL.into_iter().map(Shown::State));
    html! {
        form class="filters" method="get" {
            label {
                "state"
                select name="state" {
                    @for s in states {
                        option value=(s.as_str()) selected[s == shown] {
                            @match s {
                                Shown::Attention => "needs attention",
                                Shown::All => "all",
                                Shown::State(state) => (state.label()),
                            }
                        }
                    }
                }
            }
            label {
                "name or id contains"
                input type="search" name="name" value=(filter.name.as_deref().unwrap_or(""));
            }
            label {
                "Cloud Manager"
                select name="instance" {
                    option value="" { "any" }
                    @for i in &v.instances {
                        option value=(i) selected[filter.instance.as_deref() == Some(i.as_str())] { (i) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
    }
}

fn badge(org: &OrgView) -> Markup {
    html! {
        span class=(format!("badge {}", org.state.as_str())) { (org.state.label()) }
    }
}

/// A share of a window, to a tenth of a percent, rounded down (100% means all of it).
fn share(share: Option<f64>) -> Markup {
    let Some(s) = share else { return html! { "–" } };
    let tenths = (s * 1000.0).floor() / 10.0;
    let class = if s >= 0.999 {
        None
    } else if s >= 0.9 {
        Some("part")
    } else {
        Some("low")
    };
    html! {
        span class=[class] { (if s >= 1.0 { "100%".to_owned() } else { format!("{tenths:.1}%") }) }
    }
}

fn shares(s: Option<&SyncedShare>) -> Markup {
    html! {
        span class="share" {
            @match s {
                Some(s) => { (share(s.day)) " · " (share(s.week)) " · " (share(s.month)) },
                None => "–",
            }
        }
    }
}

/// How many checks failed, before the reason: a retrying org has failed once.
fn failed_in_a_row(n: i64) -> String {
    if n == 1 {
        "The last check failed: ".into()
    } else {
        format!("{n} failed checks in a row: ")
    }
}

/// The longest error the list shows of each org: the org's page has all of it.
const ERROR_SHOWN: usize = 200;

fn short(text: &str) -> String {
    match text.char_indices().nth(ERROR_SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn orgs_section(v: &StatusView, filter: &Filter, shown: Shown) -> Markup {
    let now = v.generated_at.as_str();
    let first = v.page_rows.map_or(0, |n| (v.page - 1) * n);
    let more = v.matched.saturating_sub(first + v.orgs.len());
    html! {
        h2 {
            @match shown {
                Shown::Attention => "Needs attention",
                Shown::All => "All orgs",
                Shown::State(s) => { "Orgs: " (s.label()) },
            }
            @if filter.name.is_some() || filter.instance.is_some() { " (filtered)" }
        }
        @if v.orgs.is_empty() {
            p class="muted" {
                @if v.matched > 0 {
                    "No orgs on page " (v.page) ": " (v.matched) " match, on "
                    a href=(filter.link(shown, 1)) { "the first page" } " and on."
                }
                @else if shown == Shown::Attention && filter.name.is_none() && filter.instance.is_none() {
                    "Nothing needs attention."
                } @else { "No org matches." }
            }
        } @else {
            table class="orgs" {
                thead { tr {
                    th { "org" } th { "state" } th { "link status" } th { "since" } th { "last check" }
                    th { "SYNCED 24h · 7d · 30d" } th { "problem" }
                } }
                tbody {
                    @for o in &v.orgs {
                        tr class="org" {
                            td {
                                a href=(format!("org/{}", o.id)) { (o.name) }
                                br; span class="muted" { (o.id) }
                                @if let Some(url) = &o.console_url { " " a href=(url) { "Cloud Manager" } }
                            }
                            td {
                                (badge(o))
                                @if let Some(until) = &o.silenced_until { br; span class="muted" { "until " (shown_time(until)) } }
                            }
                            td class=(format!("status {}", class(o.status.as_deref()))) {
                                (o.status.as_deref().unwrap_or("–"))
                            }
                            td { (when(o.since.as_deref(), now)) }
                            td { (when(o.last_checked_at.as_deref(), now)) }
                            td { (shares(o.synced_share.as_ref())) }
                            td {
                                @if let Some(e) = &o.last_error {
                                    span class="err" { (failed_in_a_row(o.consecutive_failures)) (short(e)) }
                                } @else if let Some(b) = &o.broken_since {
                                    "left SYNCED " (when(Some(b), now))
                                }
                            }
                        }
                    }
                }
            }
            p class="muted" {
                "Orgs " (first + 1) "–" (first + v.orgs.len()) " of " (v.matched) "."
                @if v.page > 1 { " " a href=(filter.link(shown, v.page - 1)) { "← previous page" } }
                @if more > 0 {
                    " And " (more) " more: " a href=(filter.link(shown, v.page + 1)) { "the next page" }
                    ", or narrow the filters above."
                }
            }
        }
    }
}

fn live_migration_badge(m: &LiveMigrationView) -> Markup {
    html! {
        span class=(format!("badge {}", m.stage.as_str())) { (m.stage.label()) }
    }
}

/// The lag, marked when it is above the migration's `lag_alert`.
fn lag(m: &LiveMigrationView) -> Markup {
    html! {
        @match m.lag_s {
            Some(s) if m.lag_high() => span class="err" title="above lag_alert" { (span(s)) " (above " (span(m.lag_alert_s.unwrap_or(0))) ")" },
            Some(s) => (span(s)),
            None => "–",
        }
    }
}

/// The time left to cut over, while a cutover window runs.
fn time_left(m: &LiveMigrationView) -> Markup {
    html! {
        @match (m.time_left_s, &m.estimated_deadline) {
            (Some(left), Some(deadline)) if left >= 0 => {
                span class=[(left < 24 * 3600).then_some("err")] { "about " (span(left)) }
                br; span class="muted" { "estimated deadline " (at(deadline)) }
            },
            (Some(_), Some(deadline)) => span class="err" { "estimated deadline passed: " (at(deadline)) },
            _ => "–",
        }
    }
}

fn live_migrations_section(v: &StatusView, filter: &Filter) -> Markup {
    let (migrations, now) = (&v.migrations, v.generated_at.as_str());
    html! {
        h2 { "Live migrations" }
        @if v.migrations_not_shown > 0 {
            p class="muted" {
                @if migrations.is_empty() { "None needs attention; " } @else { "Those that need attention; " }
                (v.migrations_not_shown) " more in progress, complete or not checked yet: "
                a href=(filter.link(Shown::All, 1)) { "all" } "."
            }
        }
        @if !migrations.is_empty() {
        table class="migrations" {
            thead { tr { th { "migration" } th { "state" } th { "Atlas status" } th { "lag" } th { "time left to cut over" } th { "last check" } th { "problem" } } }
            tbody {
                @for m in migrations {
                    tr class="migration" {
                        td {
                            a href=(format!("org/{}#migration-{}", m.org_id, m.id)) { (m.name) }
                            br; span class="muted" { "from " (m.org_name) }
                            @if let Some(url) = &m.atlas_url { " " a href=(url) { "Atlas" } }
                            @if !m.migration_hosts.is_empty() {
                                br; span class="muted hosts" { "via " (m.migration_hosts.join(", ")) }
                            }
                        }
                        td { (live_migration_badge(m)) }
                        td {
                            (m.status.as_deref().unwrap_or("–"))
                            @if m.since.is_some() { br; span class="muted" { "since " (when_inline(m.since.as_deref(), now)) } }
                        }
                        td { (lag(m)) }
                        td { (time_left(m)) }
                        td { (when(m.last_checked_at.as_deref(), now)) }
                        td {
                            @if let Some(e) = &m.last_error {
                                span class="err" { (failed_in_a_row(m.consecutive_failures)) (e) }
                            }
                        }
                    }
                }
            }
        }
    }
    }
}

/// A migration on its source org's page: where it stands, its lag chart, its changes.
fn live_migration_detail(d: &LiveMigrationDetail, now: &str) -> Markup {
    let m = &d.migration;
    html! {
        section class="migration" id=(format!("migration-{}", m.id)) {
            h2 { "Live migration " (m.name) " " (live_migration_badge(m)) }
            p class="muted" {
                (m.id) " · project " (m.group_id) " · Atlas status " (m.status.as_deref().unwrap_or("not known yet"))
                @if m.since.is_some() { " since " (when_inline(m.since.as_deref(), now)) }
                " · lag " (lag(m))
                " · last check " (when_inline(m.last_checked_at.as_deref(), now))
                @if !m.migration_hosts.is_empty() { " · migration hosts " (m.migration_hosts.join(", ")) }
            }
            @if m.estimated_deadline.is_some() { p { "Time left to cut over: " (time_left(m)) } }
            @if let Some(e) = &m.last_error { p class="err" { (failed_in_a_row(m.consecutive_failures)) (e) } }
            h3 { "Replication lag, the last " (super::view::WINDOW_DAYS) " days" }
            @if d.chart.steps.is_empty() {
                p class="muted" { "No lag reported in the last " (super::view::WINDOW_DAYS) " days." }
            } @else {
                (d.chart.svg())
                p class="legend muted" {
                    span class="key-lag" {} "lag"
                    @if m.lag_alert_s.is_some() { span class="key-lag-alert" {} "lag_alert" }
                    span class="key-no-lag" {} "no lag reported"
                }
            }
            @if !d.changes.is_empty() { (changes_table("migration-changes", &d.changes, false)) }
            p class="muted" {
                @if let Some(url) = &m.atlas_url { a href=(url) { "Atlas project" } " · " }
                "JSON: " a href=(format!("../api/v1/migrations/{}", m.id)) { "api/v1/migrations/" (m.id) }
            }
        }
    }
}

/// Silences first: a team that silenced an org for planned work sees that it did, and until when.
fn silences_section(silences: &[SilenceView]) -> Markup {
    html! {
        h2 { "Silenced" }
        table class="silences" {
            thead { tr { th { "silence" } th { "org" } th { "until" } th { "by" } th { "reason" } } }
            tbody {
                @for s in silences {
                    tr class="silence" {
                        td { (s.id) }
                        td {
                            a href={ "org/" (s.org_id) } { (s.org_name) }
                            @if let Some(m) = &s.migration { " (migration " (m) ")" }
                        }
                        td { (shown_time(&s.until)) }
                        td { (s.by) }
                        td { (s.reason) }
                    }
                }
            }
        }
        p class="muted" { "Events of a silenced org are recorded and not sent; " code { "linkwatch silence end ID" } " ends one early." }
    }
}

fn channels_section(channels: &[ChannelView]) -> Markup {
    html! {
        h2 { "Notification channels" }
        @if channels.is_empty() {
            p class="muted" { "Every notification has been delivered." }
        } @else {
            table class="channels" {
                thead { tr { th { "channel" } th { "pending" } th { "failed" } th { "oldest pending" } th { "last error" } } }
                tbody {
                    @for c in channels {
                        tr class="channel" {
                            td {
                                (c.name)
                                @if !c.configured { br; span class="muted" { "not in the config: waits for it to return" } }
                                @if let Some(b) = &c.blocked_since { br; span class="err" { "blocked since " (shown_time(b)) } }
                            }
                            td { (c.pending) }
                            td { (c.failed) }
                            td { (c.oldest_pending_at.as_deref().map_or_else(|| "–".to_owned(), shown_time)) }
                            td class="err" { (c.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// Runs of one failure (class, HTTP status, error code and detail alike) in `failures`, newest
/// first as given: each run's newest failure, the time of its oldest, and how many. Fifty 503s
/// in a row are one row.
fn runs(failures: &[FailureView]) -> Vec<(&FailureView, &str, usize)> {
    let same = FailureView::same_as;
    let mut out: Vec<(&FailureView, &str, usize)> = Vec::new();
    for f in failures {
        match out.last_mut() {
            Some((newest, oldest, n)) if same(newest, f) => {
                *oldest = &f.checked_at;
                *n += 1;
            }
            _ => out.push((f, &f.checked_at, 1)),
        }
    }
    out
}

/// `GET /org/{id or name}`: the timeline, the changes, the failed checks.
pub fn org_page(d: &OrgDetail) -> Markup {
    let o = &d.org;
    let now = d.generated_at.as_str();
    layout(
        &o.name,
        true,
        &d.generated_at,
        "../",
        html! {
            p { a href="../" { "← all orgs" } }
            (org_heading(d))
            h2 { "The last " (super::view::WINDOW_DAYS) " days" }
            (d.timeline.svg())
            p class="legend muted" {
                span class="key-synced" {} "SYNCED"
                span class="key-not-synced" {} "NOT_SYNCED"
                span class="key-other" {} "other status"
                span class="key-unknown" {} "not known"
                span class="key-failure" {} "failed check"
            }
            @for m in &d.migrations { (live_migration_detail(m, now)) }
            (changes_section(d))
            (failures_section(d))
            p class="muted" { "JSON: " a href=(format!("../api/v1/orgs/{}/changes", o.id)) { "api/v1/orgs/" (o.id) "/changes" } }
        },
    )
}

/// The org's name and state, where it is asked, since when, and its last failure.
fn org_heading(d: &OrgDetail) -> Markup {
    let o = &d.org;
    let now = d.generated_at.as_str();
    html! {
        h1 { (o.name) " " (badge(o)) }
        p class="muted" {
            (o.id)
            @if let Some(url) = &o.console_url { " · " a href=(url) { "Cloud Manager" } }
            " · " (o.instance)
            @if let Some(until) = &o.silenced_until { " · silenced until " (shown_time(until)) }
            " · link status "
            span class=(format!("status {}", class(o.status.as_deref()))) { (o.status.as_deref().unwrap_or("not known yet")) }
            @if o.since.is_some() { " since " (when_inline(o.since.as_deref(), now)) }
            " · last check " (when_inline(o.last_checked_at.as_deref(), now))
            " · SYNCED 24h · 7d · 30d: " (shares(o.synced_share.as_ref()))
        }
        @if let Some(e) = &o.last_error { p class="err" { (failed_in_a_row(o.consecutive_failures)) (e) } }
    }
}

/// The link's status changes, newest first.
fn changes_section(d: &OrgDetail) -> Markup {
    html! {
        h2 { "Link status changes" }
        @if d.changes.is_empty() {
            p class="muted" { "No status recorded yet." }
        } @else {
            (changes_table("changes", &d.changes, true))
        }
    }
}

/// Status changes, newest first; `coloured`: the new status in the link's colours.
fn changes_table(table_class: &str, changes: &[ChangeView], coloured: bool) -> Markup {
    html! {
        table class=(table_class) {
            thead { tr { th { "when" } th { "from" } th { "to" } th { "the old status lasted" } } }
            tbody {
                @for c in changes.iter().rev() {
                    tr {
                        td { (shown_time(&c.at)) }
                        td { (c.from.as_deref().unwrap_or("(first seen)")) }
                        @if coloured {
                            td class=(format!("status {}", class(Some(&c.to)))) { (c.to) }
                        } @else {
                            td { (c.to) }
                        }
                        td { (c.previous_lasted_s.map(span).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

/// The recent failed checks, a row per run of identical ones; the oldest run says when it goes
/// back further than the page lists.
fn failures_section(d: &OrgDetail) -> Markup {
    html! {
        h2 { "Recent failed checks" }
        @if d.failures.is_empty() {
            p class="muted" { "None in the last " (super::view::WINDOW_DAYS) " days." }
        } @else {
            table class="failures" {
                thead { tr { th { "when" } th { "checks" } th { "class" } th { "HTTP" } th { "error code" } th { "detail" } } }
                tbody {
                    @let runs = runs(&d.failures);
                    @let last = runs.len() - 1;
                    @for (i, (f, oldest, n)) in runs.into_iter().enumerate() {
                        @let cut = d.oldest_run_goes_on && i == last;
                        tr {
                            td {
                                @if cut { "from before " }
                                @if n > 1 || cut { (shown_time(oldest)) " to " }
                                (shown_time(&f.checked_at))
                            }
                            td { "× " (n) @if cut { " or more" } }
                            td { (f.class) }
                            td { (f.http_status.map(|s| s.to_string()).unwrap_or_default()) }
                            td { (f.error_code.as_deref().unwrap_or("")) }
                            td { (f.detail) }
                        }
                    }
                }
            }
        }
        @if d.failures_beyond {
            p class="muted" {
                "The latest " (super::view::FAILURES_SHOWN) " failed checks; all of them are in the database's "
                code { "failed_checks" } " view."
            }
        }
    }
}

/// A 404; `root` leads back to the status page from where it was asked.
pub fn not_found(text: &str, root: &str) -> Markup {
    layout(
        "Not found",
        false,
        "",
        root,
        html! {
            h1 { "Not found" }
            p { (text) }
            p { a href=(root) { "The status page" } }
        },
    )
}

/// A 400 for filters the page cannot use, with why; the status page is one level up or here.
pub fn bad_request(why: &str) -> Markup {
    layout(
        "Bad request",
        false,
        "",
        "",
        html! {
            h1 { "Bad request" }
            p { (why) }
            p { a href="./" { "The status page without filters" } }
        },
    )
}

/// A time as stored, and how long ago it was from `now`.
fn when(at: Option<&str>, now: &str) -> Markup {
    let Some(at) = at else { return html! { "–" } };
    let ago = parse(at).zip(parse(now)).map(|(t, n)| (n - t).num_seconds());
    let shown = parse(at).map_or_else(
        || at.to_owned(),
        |t| t.with_timezone(&Utc).format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    );
    html! {
        span title=(at) { (shown) }
        @if let Some(s) = ago.filter(|s| *s >= 0) { br; span class="muted" { (span(s)) " ago" } }
    }
}

/// A time as stored, to the minute (estimates are no finer).
fn at(text: &str) -> String {
    parse(text).map_or_else(|| text.to_owned(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

/// A time as stored and how long ago it was, on one line.
fn when_inline(at: Option<&str>, now: &str) -> String {
    let Some(at) = at else { return "–".into() };
    match parse(at).zip(parse(now)) {
        Some((t, n)) if n >= t => format!(
            "{} ({} ago)",
            t.format("%Y-%m-%d %H:%M:%S UTC"),
            span((n - t).num_seconds())
        ),
        _ => at.to_owned(),
    }
}
