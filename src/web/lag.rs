//! A live migration's replication lag over a window, as a step line drawn on the server (SVG, no
//! script), from the compact lag series (`migration_lag`: a sample only when the lag moved a
//! step, so the lag holds its value until the next sample).

use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};

use super::format::span as format_span;

/// The drawing's size and the plot's height, in SVG units (it scales to the page's width).
const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 150.0;
const PLOT: f64 = 120.0;
/// The smallest top of the scale, so that a lag of a few seconds does not fill the chart.
const MIN_TOP_S: i64 = 60;

/// A stretch of time with one lag (`None`: Atlas reported no lag then).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub lag_s: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct LagChart {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only the stretches with a known lag or a reported absence of one; before the first
    /// sample nothing is drawn.
    pub steps: Vec<Step>,
    /// The migration's `lag_alert`, drawn as a dashed line.
    pub alert_s: Option<i64>,
}

impl LagChart {
    /// `samples`: (when, the lag), oldest first, from any time (the last one before `from` says
    /// what the lag was when the window starts).
    pub fn new(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        samples: &[(DateTime<Utc>, Option<i64>)],
        alert_s: Option<i64>,
    ) -> LagChart {
        let mut steps = Vec::new();
        for (i, (at, lag)) in samples.iter().enumerate() {
            let end = samples.get(i + 1).map_or(to, |(next, _)| *next).min(to);
            let start = (*at).max(from);
            if end > start {
                steps.push(Step {
                    start,
                    end,
                    lag_s: *lag,
                });
            }
        }
        LagChart {
            from,
            to,
            steps,
            alert_s,
        }
    }

    /// The top of the scale: the largest lag shown or the alert threshold, with some room.
    fn top_s(&self) -> i64 {
        let highest = self.steps.iter().filter_map(|s| s.lag_s).max().unwrap_or(0);
        let highest = highest.max(self.alert_s.unwrap_or(0));
        (highest + highest / 10).max(MIN_TOP_S)
    }

    fn x(&self, t: DateTime<Utc>) -> f64 {
        let total = (self.to - self.from).num_milliseconds().max(1) as f64;
        ((t - self.from).num_milliseconds() as f64 / total * WIDTH).clamp(0.0, WIDTH)
    }

    fn y(&self, lag_s: i64) -> f64 {
        PLOT - (lag_s as f64 / self.top_s() as f64 * PLOT).clamp(0.0, PLOT)
    }

    /// The step line: one path, broken where no lag was reported.
    fn path(&self) -> String {
        let mut d = String::new();
        let mut last: Option<(DateTime<Utc>, f64)> = None;
        for s in &self.steps {
            let Some(lag) = s.lag_s else {
                last = None;
                continue;
            };
            let y = self.y(lag);
            match last {
                Some((end, _)) if end == s.start => d.push_str(&format!("V{} ", fmt(y))),
                _ => d.push_str(&format!("M{},{} ", fmt(self.x(s.start)), fmt(y))),
            }
            d.push_str(&format!("H{} ", fmt(self.x(s.end))));
            last = Some((s.end, y));
        }
        d.trim_end().to_owned()
    }

    pub fn svg(&self) -> Markup {
        let days = (self.to - self.from).num_days();
        let ticks: Vec<DateTime<Utc>> = (0..=days).step_by(7).map(|d| self.to - Duration::days(d)).collect();
        let top = self.top_s();
        html! {
            svg class="lag" xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
                role="img" aria-label=(format!("replication lag over the last {days} days")) {
                line x1="0" x2=(WIDTH) y1=(PLOT) y2=(PLOT) stroke="#bbb" stroke-width="1" {}
                @for s in self.steps.iter().filter(|s| s.lag_s.is_none()) {
                    rect class="no-lag" x=(fmt(self.x(s.start))) y="0" width=(fmt(self.x(s.end) - self.x(s.start)))
                        height=(PLOT) fill="#eceff1" {
                        title { "no lag reported: " (day(s.start)) " to " (day(s.end)) }
                    }
                }
                @if let Some(alert) = self.alert_s {
                    line class="lag-alert" x1="0" x2=(WIDTH) y1=(fmt(self.y(alert))) y2=(fmt(self.y(alert)))
                        stroke="#c62828" stroke-width="1" stroke-dasharray="6 4" {
                        title { "lag_alert: " (format_span(alert)) }
                    }
                }
                path class="lag" d=(self.path()) fill="none" stroke="#1565c0" stroke-width="2" {}
                @for s in self.steps.iter().filter(|s| s.lag_s.is_some()) {
                    // An invisible band over each step, so hovering says its lag and when.
                    rect class="lag-step" x=(fmt(self.x(s.start))) y="0" width=(fmt(self.x(s.end) - self.x(s.start)))
                        height=(PLOT) fill="transparent" {
                        title { "lag " (format_span(s.lag_s.unwrap_or(0))) ": " (day(s.start)) " to " (day(s.end)) }
                    }
                }
                text x="4" y="12" font-size="12" fill="#555" { (format_span(top)) }
                text x="4" y=(PLOT - 4.0) font-size="12" fill="#555" { "0" }
                @for t in &ticks {
                    @let x = self.x(*t);
                    @let anchor = if x > WIDTH - 40.0 { "end" } else if x < 40.0 { "start" } else { "middle" };
                    text x=(fmt(x)) y=(HEIGHT - 4.0) font-size="12" text-anchor=(anchor) fill="#555" { (t.format("%b %d")) }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(day: u32) -> DateTime<Utc> {
        format!("2026-11-{day:02}T00:00:00Z").parse().unwrap()
    }

    fn steps(c: &LagChart) -> Vec<(u32, u32, Option<i64>)> {
        use chrono::Datelike;
        c.steps.iter().map(|s| (s.start.day(), s.end.day(), s.lag_s)).collect()
    }

    #[test]
    fn a_sample_holds_until_the_next_and_one_before_the_window_starts_it() {
        let c = LagChart::new(
            t(10),
            t(30),
            &[(t(1), Some(900)), (t(5), Some(600)), (t(20), Some(20)), (t(25), None)],
            Some(600),
        );
        assert_eq!(steps(&c), [(10, 20, Some(600)), (20, 25, Some(20)), (25, 30, None)]);
        // 600 s and the alert at 600 s: the scale's top is 660 s.
        assert_eq!(c.top_s(), 660);
        assert_eq!(c.path(), "M0.0,10.9 H500.0 V116.4 H750.0");
        let svg = c.svg().into_string();
        assert_eq!(svg.matches("class=\"no-lag\"").count(), 1, "{svg}");
        assert!(svg.contains("class=\"lag-alert\""), "{svg}");
        assert!(svg.contains("lag 10m 0s: 2026-11-10 00:00 UTC to 2026-11-20"), "{svg}");
    }

    #[test]
    fn a_gap_breaks_the_line_and_nothing_is_drawn_before_the_first_sample() {
        let c = LagChart::new(
            t(1),
            t(30),
            &[(t(11), Some(30)), (t(16), None), (t(21), Some(30))],
            None,
        );
        assert_eq!(c.top_s(), MIN_TOP_S, "a small lag does not fill the chart");
        assert_eq!(c.path().matches('M').count(), 2, "{}", c.path());
        assert!(!c.svg().into_string().contains("lag-alert"));
    }

    #[test]
    fn no_samples_draw_no_line() {
        let c = LagChart::new(t(1), t(30), &[], Some(600));
        assert!(c.steps.is_empty());
        assert_eq!(c.path(), "");
    }
}
