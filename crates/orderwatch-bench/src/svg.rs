//! A tiny SVG line chart, written as text: no dependencies, readable in any browser or on GitHub.

use std::fmt::Write;

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    /// One value per x position (`None`: no point).
    pub values: Vec<Option<f64>>,
}

/// One panel: a title, a y-axis label, the scale, the lines.
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const LEGEND_H: f64 = 30.0;

/// Panels side by side over a shared x axis (`xs`, shown on a log2 scale), with a legend
/// under them and a caption line on top.
pub fn chart(caption: &str, x_label: &str, xs: &[f64], panels: &[Panel]) -> String {
    let width = PANEL_W * panels.len() as f64;
    let height = PANEL_H + LEGEND_H + 24.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="16" text-anchor="middle" font-size="13">{}</text>"#,
        width / 2.0,
        escape(caption)
    );
    for (index, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, index as f64 * PANEL_W, 24.0, x_label, xs, panel);
    }
    if let Some(first) = panels.first() {
        let y = 24.0 + PANEL_H + 18.0;
        let mut x = 20.0;
        for series in &first.series {
            let _ = writeln!(
                svg,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                x + 24.0,
                series.color,
                x + 30.0,
                y + 4.0,
                escape(&series.name)
            );
            x += 40.0 + 7.5 * series.name.len() as f64;
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(svg: &mut String, ox: f64, oy: f64, x_label: &str, xs: &[f64], panel: &Panel) {
    let plot_w = PANEL_W - LEFT - RIGHT;
    let plot_h = PANEL_H - TOP - BOTTOM;
    let (x0, y0) = (ox + LEFT, oy + TOP);
    let lx: Vec<f64> = xs.iter().map(|x| x.max(1e-9).log2()).collect();
    let (lx_min, lx_max) = (
        lx.iter().copied().fold(f64::INFINITY, f64::min),
        lx.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let x_at = |i: usize| {
        if lx_max > lx_min {
            x0 + (lx[i] - lx_min) / (lx_max - lx_min) * plot_w
        } else {
            x0 + plot_w / 2.0
        }
    };
    let values: Vec<f64> = panel
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .filter(|v| v.is_finite() && (!panel.log_y || *v > 0.0))
        .collect();
    let (ticks, lo, hi) = if panel.log_y {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if values.is_empty() {
            (0.0, 1.0)
        } else {
            (
                min.log10().floor(),
                max.log10().ceil().max(min.log10().floor() + 1.0),
            )
        };
        let ticks: Vec<f64> = (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect();
        (ticks, lo, hi)
    } else {
        let max = values.iter().copied().fold(0.0, f64::max);
        let top = nice_ceiling(max);
        let ticks: Vec<f64> = (0..=5).map(|i| top * i as f64 / 5.0).collect();
        (ticks, 0.0, top)
    };
    let y_at = |v: f64| {
        let t = if panel.log_y { v.max(1e-12).log10() } else { v };
        let frac = if hi > lo { (t - lo) / (hi - lo) } else { 0.5 };
        y0 + plot_h - frac.clamp(0.0, 1.0) * plot_h
    };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        x0 + plot_w / 2.0,
        oy + 20.0,
        escape(&panel.title)
    );
    for tick in &ticks {
        let y = y_at(*tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 + plot_w,
            x0 - 6.0,
            y + 4.0,
            number(*tick)
        );
    }
    for (i, x) in xs.iter().enumerate() {
        let px = x_at(i);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{y0}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y0 + plot_h,
            y0 + plot_h + 16.0,
            number(*x)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{x0}" y="{y0}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        x0 + plot_w / 2.0,
        y0 + plot_h + 36.0,
        escape(x_label)
    );
    let (ly, lx) = (y0 + plot_h / 2.0, ox + 16.0);
    let _ = writeln!(
        svg,
        r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        escape(&panel.y_label)
    );
    for series in &panel.series {
        let points: Vec<(f64, f64)> = series
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.filter(|v| v.is_finite() && (!panel.log_y || *v > 0.0))
                    .map(|v| (x_at(i), y_at(v)))
            })
            .collect();
        let line: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"/>"#,
            line.join(" "),
            series.color
        );
        for (x, y) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{}"/>"#,
                series.color
            );
        }
    }
}

/// The smallest 1, 2 or 5 × 10^k at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * magnitude)
}

/// Axis labels: 12k, 1.5k, 250, 0.5, 0.01.
fn number(v: f64) -> String {
    if v >= 10_000.0 || (v >= 1000.0 && v % 1000.0 == 0.0) {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_one_polyline_per_series_and_panel() {
        let series = |log| Panel {
            title: "t".into(),
            y_label: "y".into(),
            log_y: log,
            series: vec![
                Series {
                    name: "a".into(),
                    color: "red",
                    values: vec![Some(1.0), Some(20.0), None],
                },
                Series {
                    name: "b <c>".into(),
                    color: "blue",
                    values: vec![Some(0.5), Some(3.0), Some(9.0)],
                },
            ],
        };
        let svg = chart(
            "cap",
            "x",
            &[1.0, 16.0, 64.0],
            &[series(false), series(true)],
        );
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("b &lt;c&gt;"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(nice_ceiling(4300.0), 5000.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
