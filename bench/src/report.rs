//! The benchmark report: Markdown for people, JSON for tools, SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// min / median / max of repeated measurements.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Spread {
        assert!(!samples.is_empty(), "no samples");
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Spread {
            min: s[0],
            median: s[s.len() / 2],
            max: s[s.len() - 1],
        }
    }

    /// "median (min–max)" with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// One section of the report: a table, notes and optionally a plot.
#[derive(Debug, Default, Serialize)]
pub struct Section {
    pub title: String,
    pub intro: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
    /// File name of an SVG plot next to the report.
    pub figure: Option<String>,
    /// The raw figures.
    pub data: serde_json::Value,
}

/// A target from the benchmark issue and whether the run met it.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_mib: u64,
    pub date: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .unwrap_or(0)
            / 1024;
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib,
            date,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub quick: bool,
    pub machine: Machine,
    pub verdicts: Vec<Verdict>,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::write(dir.join("report.md"), self.markdown())
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "# nva benchmark report\n");
        if self.quick {
            let _ = writeln!(
                md,
                "**Quick run** (`--quick`): small sizes and few repeats; it checks that the harness works, the figures mean little.\n"
            );
        }
        let _ = writeln!(
            md,
            "Machine: {} ({} CPUs), {} MiB, Linux {}; {}.\n\nEvery figure is a median with (min–max) over repeats, and every headline is a ratio against a baseline measured in the same run.\n",
            m.cpu, m.cpus, m.memory_mib, m.kernel, m.date
        );
        if !self.verdicts.is_empty() {
            let _ = writeln!(
                md,
                "## Targets\n\n| target | measured | met |\n|---|---|---|"
            );
            for v in &self.verdicts {
                let met = match v.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "not measured",
                };
                let _ = writeln!(md, "| {} | {} | {} |", v.target, v.measured, met);
            }
            md.push('\n');
        }
        for s in &self.sections {
            let _ = writeln!(md, "## {}\n\n{}\n", s.title, s.intro);
            if !s.columns.is_empty() {
                let _ = writeln!(md, "| {} |", s.columns.join(" | "));
                let _ = writeln!(md, "|{}", "---|".repeat(s.columns.len()));
                for r in &s.rows {
                    let _ = writeln!(md, "| {} |", r.join(" | "));
                }
                md.push('\n');
            }
            if let Some(f) = &s.figure {
                let _ = writeln!(md, "![{}]({f})\n", s.title);
            }
            for n in &s.notes {
                let _ = writeln!(md, "- {n}");
            }
            if !s.notes.is_empty() {
                md.push('\n');
            }
        }
        md
    }
}

/// A line plot as SVG: x on a log10 scale, y linear from 0.
pub fn line_plot_log_x(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    line_plot(title, x_label, y_label, series, false)
}

/// A line plot as SVG: x on a log10 scale; y linear from 0, or on a log10
/// scale (for figures that span decades).
pub fn line_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 420.0;
    const L: f64 = 70.0;
    const R: f64 = 180.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| x.log10()))
        .collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::MAX, f64::min).floor(),
        xs.iter().copied().fold(f64::MIN, f64::max).ceil().max(1.0),
    );
    let y1 = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
        * 1.15;
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 };
    let px = |x: f64| L + (x.log10() - x0) / (x1 - x0).max(1e-9) * (W - L - R);
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| y.max(1e-9).log10()))
        .collect();
    let (ly0, ly1) = (
        ys.iter().copied().fold(f64::MAX, f64::min).floor(),
        ys.iter().copied().fold(f64::MIN, f64::max).ceil(),
    );
    let ly1 = if ly1 <= ly0 { ly0 + 1.0 } else { ly1 };
    let py = |y: f64| {
        if log_y {
            H - B - (y.max(1e-9).log10() - ly0) / (ly1 - ly0) * (H - T - B)
        } else {
            H - B - y / y1 * (H - T - B)
        }
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        (W - R + L) / 2.0,
        xml(title)
    );
    // Axes, ticks and grid.
    let _ = writeln!(
        svg,
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"black\"/>",
        H - B,
        W - R,
        H - B,
        H - B
    );
    let mut e = x0;
    while e <= x1 {
        let x = px(10f64.powf(e));
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{T}\" x2=\"{x}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            H - B,
            H - B + 18.0,
            10f64.powf(e)
        );
        e += 1.0;
    }
    let y_ticks: Vec<f64> = if log_y {
        (ly0 as i32..=ly1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| y1 * i as f64 / 5.0).collect()
    };
    for y in y_ticks {
        let _ = writeln!(
            svg,
            "<line x1=\"{L}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#eee\"/><text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{4:.0}</text>",
            py(y),
            W - R,
            L - 6.0,
            py(y) + 4.0,
            y
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text><text transform=\"translate(18,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        (W - R + L) / 2.0,
        H - 12.0,
        xml(x_label),
        (H - B + T) / 2.0,
        xml(y_label)
    );
    const COLOURS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    for (i, (name, points)) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y) in points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                px(*x),
                py(*y)
            );
        }
        let ly = T + 20.0 * i as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" y1=\"{ly}\" x2=\"{1}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{2}\" y=\"{3}\">{4}</text>",
            W - R + 10.0,
            W - R + 30.0,
            W - R + 36.0,
            ly + 4.0,
            xml(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_plot() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
        let svg = line_plot_log_x(
            "t",
            "rules",
            "ns",
            &[("a".into(), vec![(10.0, 5.0), (1000.0, 7.0)])],
        );
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
        let svg = line_plot(
            "t",
            "rules",
            "ns",
            &[("a".into(), vec![(10.0, 5.0), (1e4, 7e4)])],
            true,
        );
        assert!(svg.contains(">100000<"), "decade ticks on a log y axis");
    }
}
