//! The dashboard's usage chart: one feature's hourly rows of `report usage` drawn as SVG
//! on the server (SPEC §10): a bar per hour for the peak in use, red where every seat of
//! the pool was held, and the pool as a line above. Only geometry here; the template
//! writes the elements.

use tally_protocol::{format_time, UsageRow, HOUR_MS};

/// The drawing's size, in SVG units.
pub const WIDTH: f64 = 760.0;
pub const HEIGHT: f64 = 190.0;
/// The plot area within it: room on the left for the seat counts, below for the days.
const LEFT: f64 = 40.0;
const RIGHT: f64 = WIDTH - 10.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = HEIGHT - 24.0;

/// One feature's chart.
#[derive(Debug, Clone)]
pub struct Chart {
    pub feature: String,
    /// A bar per hour, oldest first.
    pub bars: Vec<Bar>,
    /// The pool over the hours, as the `d` of an SVG path (a step line).
    pub pool_line: String,
    /// The seat counts marked on the left.
    pub ticks: Vec<Tick>,
    /// The start of each day, marked below.
    pub days: Vec<Tick>,
    /// The largest peak of the range, and the largest pool.
    pub peak: u32,
    pub pool: u32,
    /// Hours in which every seat of the pool was held.
    pub full_hours: usize,
    pub hours: usize,
    pub denials: u64,
    pub seat_hours: f64,
}

/// One hour's bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    /// The hour's peak in use and pool.
    pub peak: u32,
    pub pool: u32,
    /// Every seat of the pool was held at some instant of the hour.
    pub full: bool,
    /// What a pointer over it shows: the hour, its peak and pool.
    pub title: String,
}

/// A mark on an axis: where, and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    pub at: f64,
    pub label: String,
}

/// The chart of `rows`: one feature's rows of a report by hour, in order.
pub fn chart(feature: &str, rows: &[&UsageRow]) -> Chart {
    let peak = rows.iter().map(|r| r.peak_in_use).max().unwrap_or(0);
    let pool = rows.iter().map(|r| r.pool).max().unwrap_or(0);
    let top = peak.max(pool).max(1) as f64;
    let step = (RIGHT - LEFT) / rows.len().max(1) as f64;
    let y_of = |seats: u32| BOTTOM - (BOTTOM - TOP) * seats as f64 / top;
    let bars = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let y = y_of(row.peak_in_use);
            let full = row.pool > 0 && row.peak_in_use >= row.pool;
            Bar {
                x: round(LEFT + step * i as f64),
                y: round(y),
                width: round((step - 0.5).max(0.5)),
                height: round(BOTTOM - y),
                peak: row.peak_in_use,
                pool: row.pool,
                full,
                title: format!(
                    "{}: peak {} of {} seat(s){}",
                    hour_label(row.period_start),
                    row.peak_in_use,
                    row.pool,
                    if full { ", all held" } else { "" }
                ),
            }
        })
        .collect();
    let mut pool_line = String::new();
    for (i, row) in rows.iter().enumerate() {
        let (x, y) = (round(LEFT + step * i as f64), round(y_of(row.pool)));
        match i {
            0 => pool_line.push_str(&format!("M{x} {y}")),
            _ => pool_line.push_str(&format!(" H{x} V{y}")),
        }
    }
    if !rows.is_empty() {
        pool_line.push_str(&format!(" H{RIGHT}"));
    }
    let top_seats = top as u32;
    let mut ticks = vec![Tick {
        at: BOTTOM,
        label: "0".into(),
    }];
    if top_seats >= 2 {
        ticks.push(Tick {
            at: round(y_of(top_seats / 2)),
            label: (top_seats / 2).to_string(),
        });
    }
    ticks.push(Tick {
        at: TOP,
        label: top_seats.to_string(),
    });
    let days = rows
        .iter()
        .enumerate()
        .filter(|(_, row)| row.period_start.rem_euclid(24 * HOUR_MS) == 0)
        .map(|(i, row)| Tick {
            at: round(LEFT + step * i as f64),
            label: format_time(row.period_start)[5..10].to_string(),
        })
        .collect();
    Chart {
        feature: feature.to_string(),
        bars,
        pool_line,
        ticks,
        days,
        peak,
        pool,
        full_hours: rows
            .iter()
            .filter(|r| r.pool > 0 && r.peak_in_use >= r.pool)
            .count(),
        hours: rows.len(),
        denials: rows.iter().map(|r| r.denials).sum(),
        seat_hours: rows.iter().map(|r| r.seat_hours()).sum(),
    }
}

impl Chart {
    pub fn width(&self) -> f64 {
        WIDTH
    }

    pub fn height(&self) -> f64 {
        HEIGHT
    }

    pub fn left(&self) -> f64 {
        LEFT
    }

    pub fn right(&self) -> f64 {
        RIGHT
    }

    pub fn bottom(&self) -> f64 {
        BOTTOM
    }

    /// Seat-hours, to one decimal.
    pub fn seat_hours_text(&self) -> String {
        format!("{:.1}", self.seat_hours)
    }
}

/// "2026-11-23 14:00 UTC".
fn hour_label(at: i64) -> String {
    let text = format_time(at);
    format!("{} {} UTC", &text[..10], &text[11..16])
}

/// To a tenth of a unit: enough for a screen, and short in the page.
fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_700_006_400_000; // 2023-11-15T00:00:00Z, a whole day

    fn row(hour: i64, peak: u32, pool: u32) -> UsageRow {
        UsageRow {
            feature: "nuke".into(),
            period_start: START + hour * HOUR_MS,
            period_ms: HOUR_MS,
            pool,
            peak_in_use: peak,
            seat_ms: peak as u64 * HOUR_MS as u64,
            checkouts: 0,
            denials: hour as u64 % 2,
            distinct_users: 0,
        }
    }

    #[test]
    fn bars_stand_in_the_plot_in_proportion_to_the_peak() {
        let rows: Vec<UsageRow> = (0..48).map(|h| row(h, (h % 5) as u32, 4)).collect();
        let refs: Vec<&UsageRow> = rows.iter().collect();
        let chart = chart("nuke", &refs);
        assert_eq!(chart.bars.len(), 48);
        assert_eq!((chart.peak, chart.pool), (4, 4));
        for (bar, row) in chart.bars.iter().zip(&rows) {
            assert!(bar.x >= LEFT && bar.x + bar.width <= RIGHT + 0.1, "{bar:?}");
            assert!(
                bar.y >= TOP - 0.1 && bar.y + bar.height <= BOTTOM + 0.1,
                "{bar:?}"
            );
            let expected = (BOTTOM - TOP) * row.peak_in_use as f64 / 4.0;
            assert!((bar.height - expected).abs() < 0.2, "{bar:?}");
            assert_eq!(bar.full, row.peak_in_use >= 4);
        }
        assert_eq!(
            chart.full_hours,
            rows.iter().filter(|r| r.peak_in_use >= 4).count()
        );
        assert_eq!(chart.denials, 24);
        // Two days: two marks, at midnight.
        assert_eq!(chart.days.len(), 2);
        assert_eq!(chart.days[0].label, "11-15");
        assert!(chart.bars[5]
            .title
            .starts_with("2023-11-15 05:00 UTC: peak 0 of 4"));
    }

    #[test]
    fn the_pool_line_steps_with_the_pool() {
        let rows = [row(0, 1, 2), row(1, 1, 2), row(2, 3, 4)];
        let refs: Vec<&UsageRow> = rows.iter().collect();
        let chart = chart("nuke", &refs);
        let top = TOP;
        let half = BOTTOM - (BOTTOM - TOP) / 2.0;
        assert!(chart
            .pool_line
            .starts_with(&format!("M{LEFT} {}", round(half))));
        assert!(chart.pool_line.contains(&format!("V{top}")));
        assert!(chart.pool_line.ends_with(&format!("H{RIGHT}")));
    }

    #[test]
    fn an_empty_or_idle_feature_draws_without_dividing_by_zero() {
        let chart = chart("nuke", &[]);
        assert!(chart.bars.is_empty() && chart.pool_line.is_empty());
        let rows = [row(0, 0, 0)];
        let refs: Vec<&UsageRow> = rows.iter().collect();
        let chart = super::chart("nuke", &refs);
        assert_eq!(chart.bars[0].height, 0.0);
        assert!(!chart.bars[0].full);
    }
}
