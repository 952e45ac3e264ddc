//! The plot: deliveries per second, one group of bars per scenario, one bar
//! per server, on a logarithmic axis (the servers differ by orders of
//! magnitude). Plain SVG written by hand: a plotting crate would be the
//! biggest dependency in the tree for forty lines of output.

use std::fmt::Write as _;

/// One scenario: its label and each server's deliveries/s (`None`: no
/// figure: skipped or did not finish).
pub struct Group {
    pub label: String,
    pub bars: Vec<(String, Option<f64>)>,
}

const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];

pub fn svg(groups: &[Group]) -> String {
    let servers: Vec<&str> = groups
        .first()
        .map(|g| g.bars.iter().map(|(s, _)| s.as_str()).collect())
        .unwrap_or_default();
    let values: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.bars.iter().filter_map(|(_, v)| *v))
        .collect();
    let top = values.iter().copied().fold(10.0f64, f64::max);
    let bottom = values.iter().copied().fold(top, f64::min);
    // The axis spans whole decades, from the one below the smallest figure.
    let first = (bottom.log10().floor() as i32 - 1).max(0);
    let decades = (top.log10().ceil() as i32 - first).max(1);
    let (left, width, bar, gap) = (250.0, 520.0, 16.0, 14.0);
    let group_height = bar * servers.len().max(1) as f64 + gap;
    let height = 60.0 + group_height * groups.len() as f64 + 50.0;
    let x = |v: f64| {
        let v = v.max(10f64.powi(first));
        left + width * ((v.log10() - f64::from(first)) / f64::from(decades))
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = left + width + 120.0
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="20" font-size="14" font-weight="bold">Chat lines delivered per second (log scale; more is better)</text>"#
    );
    for (i, server) in servers.iter().enumerate() {
        let lx = left + 150.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="30" width="12" height="12" fill="{}"/><text x="{}" y="40">{server}</text>"#,
            COLORS[i % COLORS.len()],
            lx + 16.0
        );
    }
    let axis_y = 60.0 + group_height * groups.len() as f64;
    for d in first..=first + decades {
        let gx = x(10f64.powi(d));
        let _ = writeln!(
            out,
            r##"<line x1="{gx}" y1="55" x2="{gx}" y2="{axis_y}" stroke="#ddd"/><text x="{gx}" y="{}" text-anchor="middle">{}</text>"##,
            axis_y + 16.0,
            label(10f64.powi(d))
        );
    }
    for (g, group) in groups.iter().enumerate() {
        let gy = 60.0 + group_height * g as f64;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            gy + group_height / 2.0,
            escape(&group.label)
        );
        for (i, (_, value)) in group.bars.iter().enumerate() {
            let by = gy + bar * i as f64;
            match value {
                Some(v) => {
                    let _ = writeln!(
                        out,
                        r#"<rect x="{left}" y="{by}" width="{:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{}">{}</text>"#,
                        x(*v) - left,
                        bar - 2.0,
                        COLORS[i % COLORS.len()],
                        x(*v) + 4.0,
                        by + bar - 5.0,
                        label(*v)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        r##"<text x="{}" y="{}" fill="#888">no figure</text>"##,
                        left + 4.0,
                        by + bar - 5.0
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "</svg>");
    out
}

/// 1, 10, 100, 1k, 10k, 100k, 1M, ...; others with three figures.
fn label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.3}M", v / 1e6).replace(".000M", "M")
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;")
}
