//! An org's link status over a window, as the spans of each status and the failed checks, and
//! the SVG that draws them on the server (no script, no chart library).

use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};

/// The drawing's width and the bar's height, in SVG units (it scales to the page's width).
const WIDTH: f64 = 1000.0;
const BAR: f64 = 36.0;
/// The narrowest span drawn, so that a status of a few minutes still shows.
const MIN_SPAN: f64 = 3.0;

/// A stretch of time with one status (`None`: not known, before the first check).
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub status: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Timeline {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub spans: Vec<Span>,
    pub failures: Vec<DateTime<Utc>>,
}

impl Timeline {
    /// `changes`: (when, the new status), oldest first, from any time (those before `from` say
    /// where the window starts); `failures`: when checks failed.
    pub fn new(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        changes: impl IntoIterator<Item = (DateTime<Utc>, String)>,
        failures: impl IntoIterator<Item = DateTime<Utc>>,
    ) -> Timeline {
        let mut spans: Vec<Span> = vec![Span {
            start: from,
            end: to,
            status: None,
        }];
        for (at, status) in changes {
            if at >= to {
                break;
            }
            let last = spans.last_mut().expect("there is always a span");
            if at <= from {
                last.status = Some(status);
                continue;
            }
            last.end = at;
            spans.push(Span {
                start: at,
                end: to,
                status: Some(status),
            });
        }
        spans.retain(|s| s.end > s.start);
        let failures = failures.into_iter().filter(|t| *t >= from && *t <= to).collect();
        Timeline {
            from,
            to,
            spans,
            failures,
        }
    }

    fn x(&self, t: DateTime<Utc>) -> f64 {
        let total = (self.to - self.from).num_milliseconds().max(1) as f64;
        ((t - self.from).num_milliseconds() as f64 / total * WIDTH).clamp(0.0, WIDTH)
    }

    /// Where a span is drawn: (x, width), at least [`MIN_SPAN`] wide and inside the drawing, so
    /// that a status of the last few minutes still shows at the right edge.
    fn extent(&self, s: &Span) -> (f64, f64) {
        let w = (self.x(s.end) - self.x(s.start)).max(MIN_SPAN);
        (self.x(s.start).min(WIDTH - w), w)
    }

    pub fn svg(&self) -> Markup {
        let days = (self.to - self.from).num_days();
        let ticks: Vec<DateTime<Utc>> = (0..=days).step_by(7).map(|d| self.to - Duration::days(d)).collect();
        html! {
            svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} 80"))
                role="img" aria-label=(format!("link status over the last {days} days")) {
                @for s in &self.spans {
                    @let (x, w) = self.extent(s);
                    rect class=(format!("span {}", class(s.status.as_deref())))
                        x=(fmt(x)) y="0" width=(fmt(w)) height=(BAR) fill=(color(s.status.as_deref())) {
                        title { (s.status.as_deref().unwrap_or("unknown")) ": " (day(s.start)) " to " (day(s.end)) }
                    }
                }
                @for f in &self.failures {
                    @let x = self.x(*f);
                    line class="failure" x1=(fmt(x)) x2=(fmt(x)) y1=(BAR + 2.0) y2=(BAR + 14.0)
                        stroke="#c62828" stroke-width="2" {
                        title { "failed check " (day(*f)) }
                    }
                }
                @for t in &ticks {
                    @let x = self.x(*t);
                    @let anchor = if x > WIDTH - 40.0 { "end" } else if x < 40.0 { "start" } else { "middle" };
                    text x=(fmt(x)) y="72" font-size="12" text-anchor=(anchor) fill="#555" { (t.format("%b %d")) }
                }
            }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The CSS class of a status badge or span.
pub fn class(status: Option<&str>) -> &'static str {
    match status {
        Some("SYNCED") => "synced",
        Some("NOT_SYNCED") => "not-synced",
        Some(_) => "other",
        None => "unknown",
    }
}

fn color(status: Option<&str>) -> &'static str {
    match status {
        Some("SYNCED") => "#2e7d32",
        Some("NOT_SYNCED") => "#f9a825",
        Some(_) => "#6a1b9a",
        None => "#cfd8dc",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(day: u32) -> DateTime<Utc> {
        format!("2026-11-{day:02}T00:00:00Z").parse().unwrap()
    }

    fn spans(tl: &Timeline) -> Vec<(u32, u32, Option<&str>)> {
        use chrono::Datelike;
        tl.spans
            .iter()
            .map(|s| (s.start.day(), s.end.day(), s.status.as_deref()))
            .collect()
    }

    #[test]
    fn a_change_before_the_window_colours_its_start() {
        let tl = Timeline::new(
            t(10),
            t(30),
            [(t(1), "NOT_SYNCED".into()), (t(20), "SYNCED".into())],
            [t(5), t(15)],
        );
        assert_eq!(spans(&tl), [(10, 20, Some("NOT_SYNCED")), (20, 30, Some("SYNCED"))]);
        assert_eq!(tl.failures, [t(15)], "a failure before the window is not drawn");
    }

    #[test]
    fn before_the_first_check_the_status_is_unknown() {
        let tl = Timeline::new(t(1), t(30), [(t(11), "SYNCED".into())], []);
        assert_eq!(spans(&tl), [(1, 11, None), (11, 30, Some("SYNCED"))]);
        let svg = tl.svg().into_string();
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert!(svg.contains("SYNCED: 2026-11-11 00:00 UTC to 2026-11-30"), "{svg}");
    }

    #[test]
    fn a_status_of_the_last_minutes_is_drawn_inside_the_chart() {
        let now = t(30);
        let tl = Timeline::new(t(1), now, [(now - Duration::seconds(5), "NOT_SYNCED".into())], []);
        let last = tl.spans.last().unwrap();
        assert_eq!(last.status.as_deref(), Some("NOT_SYNCED"));
        let (x, w) = tl.extent(last);
        assert!(w >= MIN_SPAN && x + w <= WIDTH, "drawn at {x} wide {w}");
    }

    #[test]
    fn no_history_is_one_unknown_span() {
        let tl = Timeline::new(t(1), t(30), [], []);
        assert_eq!(spans(&tl), [(1, 30, None)]);
    }
}
