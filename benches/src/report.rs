//! The table the benchmark prints (Markdown, ready for BENCHMARKS.md).

use std::fmt::Write;

use crate::measure::{Contender, Sample};

const MIB: f64 = (1 << 20) as f64;

#[derive(Debug)]
struct Row {
    case: String,
    /// What else the case was run under (the latency proxy's round trip), or empty.
    setting: String,
    who: Contender,
    /// Changed bytes the case moves: the MiB/s column is of these.
    bytes: u64,
    samples: Vec<Sample>,
}

impl Row {
    fn median(&self) -> f64 {
        median(self.samples.iter().map(|s| s.secs).collect())
    }

    fn median_snapshot(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| s.snapshot_secs)
            .collect();
        (!v.is_empty()).then(|| median(v))
    }

    /// Every run's seconds.
    fn runs(&self) -> String {
        let runs: Vec<String> = self
            .samples
            .iter()
            .map(|s| format!("{:.2}", s.secs))
            .collect();
        runs.join(" ")
    }

    fn median_of(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.samples.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        self.samples
            .iter()
            .filter_map(|s| s.rss_kib)
            .max()
            .map(|k| k as f64 / 1024.0)
    }
}

/// Samples by case and contender, in the order they first appeared.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Row>,
}

/// Text that may contain `|`, made safe for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The median of `v` (of an even count, the mean of the middle two).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Table {
    pub fn add(&mut self, case: &str, who: Contender, bytes: u64, sample: Sample) {
        self.add_at(case, "", who, bytes, sample);
    }

    /// Adds a sample of `case` run under `setting` (such as a round trip).
    pub fn add_at(
        &mut self,
        case: &str,
        setting: &str,
        who: Contender,
        bytes: u64,
        sample: Sample,
    ) {
        match self
            .rows
            .iter_mut()
            .find(|r| r.case == case && r.setting == setting && r.who == who)
        {
            Some(row) => row.samples.push(sample),
            None => self.rows.push(Row {
                case: case.to_owned(),
                setting: setting.to_owned(),
                who,
                bytes,
                samples: vec![sample],
            }),
        }
    }

    fn reference(&self, case: &str, who: Contender) -> Option<f64> {
        self.reference_at(case, "", who)
    }

    fn row_at(&self, case: &str, setting: &str, who: Contender) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.case == case && r.setting == setting && r.who == who)
    }

    fn reference_at(&self, case: &str, setting: &str, who: Contender) -> Option<f64> {
        self.row_at(case, setting, who).map(Row::median)
    }

    /// The sweep behind the latency proxy: one line per setting of DiffTransfer, its median
    /// in each case and round trip as a multiple of the best setting's there, and the worst
    /// of those multiples (a default is to be within 1.10 of the best everywhere).
    pub fn render_latency_sweep(&self) -> String {
        let mut columns: Vec<(&str, &str)> = Vec::new();
        let mut settings: Vec<Contender> = Vec::new();
        for row in self
            .rows
            .iter()
            .filter(|r| matches!(r.who, Contender::Ours { .. }))
        {
            if !columns.contains(&(row.case.as_str(), row.setting.as_str())) {
                columns.push((&row.case, &row.setting));
            }
            if !settings.contains(&row.who) {
                settings.push(row.who);
            }
        }
        let mut out = String::from("| setting |");
        for (case, setting) in &columns {
            let _ = write!(out, " {} at {setting} |", cell(case));
        }
        out.push_str(" worst × best |\n|---|");
        out.push_str(&"---:|".repeat(columns.len() + 1));
        out.push('\n');
        let best: Vec<Option<f64>> = columns
            .iter()
            .map(|&(case, setting)| {
                settings
                    .iter()
                    .filter_map(|&who| self.reference_at(case, setting, who))
                    .min_by(f64::total_cmp)
            })
            .collect();
        for &who in &settings {
            let _ = write!(out, "| {} |", cell(&who.name()));
            let mut worst: Option<f64> = None;
            for (&(case, setting), best) in columns.iter().zip(&best) {
                match (self.reference_at(case, setting, who), best) {
                    (Some(m), Some(b)) => {
                        let ratio = m / b;
                        worst = Some(worst.map_or(ratio, |w| w.max(ratio)));
                        let _ = write!(out, " {m:.2} ({ratio:.2}) |");
                    }
                    _ => out.push_str(" – |"),
                }
            }
            let _ = writeln!(
                out,
                " {} |",
                worst.map_or("–".into(), |w| format!("{w:.2}"))
            );
        }
        out
    }

    /// The runs behind the latency proxy: per case and round trip, seconds, MiB/s, ratios to
    /// both pipes, client and proxy CPU, peak RSS.
    pub fn render_latency(&self) -> String {
        let mut out = String::from(
            "| case | round trip | contender | median s | runs (s) | MiB/s | × pipe | × no-cache pipe | client CPU s | CPU s/GiB | CPU / pipe's | proxy CPU s | peak RSS MiB |\n\
             |---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let mut groups: Vec<(&str, &str)> = Vec::new();
        for c in self.rows.iter().map(|r| r.case.as_str()) {
            for row in self.rows.iter().filter(|r| r.case == c) {
                if !groups.contains(&(c, row.setting.as_str())) {
                    groups.push((c, &row.setting));
                }
            }
        }
        let f = |v: Option<f64>| v.map_or("–".into(), |s| format!("{s:.2}"));
        for (case, setting) in groups {
            let pipe = self.reference_at(case, setting, Contender::Pipe);
            let no_cache = self.reference_at(case, setting, Contender::PipeNoCache);
            let pipe_cpu = self
                .row_at(case, setting, Contender::Pipe)
                .and_then(|r| r.median_of(|s| s.cpu_secs));
            for row in self
                .rows
                .iter()
                .filter(|r| r.case == case && r.setting == setting)
            {
                let m = row.median();
                let cpu = row.median_of(|s| s.cpu_secs);
                let gib = row.bytes as f64 / (1u64 << 30) as f64;
                let _ = writeln!(
                    out,
                    "| {case} | {setting} | {} | {m:.2} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                    cell(&row.who.name()),
                    row.runs(),
                    row.bytes as f64 / MIB / m,
                    f(pipe.map(|p| p / m)),
                    f(no_cache.map(|p| p / m)),
                    f(cpu),
                    f(cpu.map(|c| c / gib)),
                    f(cpu.zip(pipe_cpu).map(|(c, p)| c / p)),
                    f(row.median_of(|s| s.proxy_cpu_secs)),
                    row.peak_rss_mib().map_or("–".into(), |r| format!("{r:.0}")),
                );
            }
        }
        out
    }

    /// The comparison: seconds, MiB/s of changed data, ratio to the pipe, share of the copy
    /// ceiling, and peak RSS.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "| case | contender | median s | runs (s) | MiB/s | × pipe | % of ceiling | % of ceiling + snapshot | of which snapshot s | peak RSS MiB |\n\
             |---|---|---:|---|---:|---:|---:|---:|---:|---:|\n",
        );
        let mut cases: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !cases.contains(&row.case.as_str()) {
                cases.push(&row.case);
            }
        }
        let grouped = cases
            .iter()
            .flat_map(|c| self.rows.iter().filter(move |r| r.case == *c));
        for row in grouped {
            let m = row.median();
            // A verification's reference is the rbd CLI's way to compare: export and md5sum.
            let pipe = self
                .reference(&row.case, Contender::Pipe)
                .or_else(|| self.reference(&row.case, Contender::ExportMd5));
            let ceiling = self.reference(&row.case, Contender::Ceiling);
            let ceiling_snap = self.reference(&row.case, Contender::CeilingSnap);
            let snapshot = row.median_snapshot();
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {} | {:.0} | {} | {} | {} | {} | {} |",
                row.case,
                cell(&row.who.name()),
                m,
                row.runs(),
                row.bytes as f64 / MIB / m,
                pipe.map_or("–".into(), |p| format!("{:.2}", p / m)),
                ceiling.map_or("–".into(), |c| format!("{:.0}%", 100.0 * m / c)),
                ceiling_snap.map_or("–".into(), |c| format!("{:.0}%", 100.0 * m / c)),
                snapshot.map_or("–".into(), |s| format!("{s:.2}")),
                row.peak_rss_mib().map_or("–".into(), |r| format!("{r:.0}")),
            );
        }
        out
    }

    fn median_without_snapshot(&self, case: &str, who: Contender) -> Option<f64> {
        let row = self.rows.iter().find(|r| r.case == case && r.who == who)?;
        Some(median(
            row.samples
                .iter()
                .map(|s| s.secs - s.snapshot_secs.unwrap_or(0.0))
                .collect(),
        ))
    }

    /// The sweep: one line per setting, full and incremental side by side, with and without
    /// the end snapshot's creation (which waits for the monitor, up to about a second, however
    /// the data moved).
    pub fn render_sweep(&self) -> String {
        let mut out = String::from(
            "| setting | full median s | without snapshot | incremental median s | without snapshot | peak RSS MiB |\n\
             |---|---:|---:|---:|---:|---:|\n",
        );
        let mut seen: Vec<Contender> = Vec::new();
        for row in &self.rows {
            if seen.contains(&row.who) {
                continue;
            }
            seen.push(row.who);
            let full = self.reference("full", row.who);
            let full_data = self.median_without_snapshot("full", row.who);
            let incr = self.reference("incremental", row.who);
            let incr_data = self.median_without_snapshot("incremental", row.who);
            let rss = self
                .rows
                .iter()
                .filter(|r| r.who == row.who)
                .filter_map(Row::peak_rss_mib)
                .fold(0.0, f64::max);
            let f = |v: Option<f64>| v.map_or("–".into(), |s| format!("{s:.2}"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {rss:.0} |",
                cell(&row.who.name()),
                f(full),
                f(full_data),
                f(incr),
                f(incr_data)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Sample {
        Sample {
            secs,
            rss_kib: Some(2048),
            cpu_secs: Some(secs / 2.0),
            proxy_cpu_secs: Some(secs / 4.0),
            snapshot_secs: Some(secs / 10.0),
        }
    }

    #[test]
    fn latency_rows_are_compared_with_both_pipes_at_the_same_round_trip() {
        let mut t = Table::default();
        let ours = Contender::Ours {
            window: None,
            chunk_size: None,
        };
        for (rtt, pipe, no_cache, us) in [("0 ms", 2.0, 4.0, 1.0), ("1 ms", 3.0, 8.0, 2.0)] {
            t.add_at("incr", rtt, Contender::Pipe, 1 << 30, s(pipe));
            t.add_at("incr", rtt, Contender::PipeNoCache, 1 << 30, s(no_cache));
            t.add_at("incr", rtt, ours, 1 << 30, s(us));
        }
        let text = t.render_latency();
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[5],
            "| incr | 1 ms | DiffTransfer | 2.00 | 2.00 | 512 | 1.50 | 4.00 | 1.00 | 1.00 | 0.67 | 0.50 | 2 |"
        );
        assert!(lines[0].starts_with("| incr | 0 ms | rbd export-diff \\| rbd import-diff |"));
    }

    #[test]
    fn the_latency_sweep_compares_each_setting_with_the_best_at_each_round_trip() {
        let mut t = Table::default();
        let w = |window| Contender::Ours {
            window: Some(window),
            chunk_size: None,
        };
        t.add_at("incr", "0 ms", Contender::Pipe, 1 << 30, s(9.0));
        for (rtt, a, b) in [("0 ms", 1.0, 1.2), ("3 ms", 3.0, 2.0)] {
            t.add_at("incr", rtt, w(8), 1 << 30, s(a));
            t.add_at("incr", rtt, w(32), 1 << 30, s(b));
        }
        let text = t.render_latency_sweep();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "| setting | incr at 0 ms | incr at 3 ms | worst × best |"
        );
        assert_eq!(lines.len(), 4, "the pipe is no setting: {text}");
        assert_eq!(
            lines[2],
            "| DiffTransfer window 8 chunk default | 1.00 (1.00) | 3.00 (1.50) | 1.50 |"
        );
        assert_eq!(
            lines[3],
            "| DiffTransfer window 32 chunk default | 1.20 (1.20) | 2.00 (1.00) | 1.20 |"
        );
    }

    #[test]
    fn ratios_are_of_medians_in_the_same_case() {
        let mut t = Table::default();
        let ours = Contender::Ours {
            window: None,
            chunk_size: None,
        };
        for x in [3.0, 9.0, 3.2] {
            t.add("full", Contender::Pipe, 1 << 30, s(x));
        }
        for x in [2.0, 1.0, 1.6] {
            t.add("full", ours, 1 << 30, s(x));
        }
        t.add("full", Contender::Ceiling, 1 << 30, s(1.28));
        t.add("full", Contender::CeilingSnap, 1 << 30, s(1.6));
        t.add("other", Contender::Pipe, 1 << 30, s(100.0));
        t.add("full", Contender::DeepCp, 1 << 30, s(2.5));
        let text = t.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("| full | DiffTransfer |"))
            .unwrap();
        // Median 1.6 s: 640 MiB/s, 3.2 / 1.6 = 2x the pipe, 125% of the ceiling, 100% of the
        // ceiling with its snapshot, 0.16 s median snapshot, 2 MiB RSS.
        assert_eq!(
            line,
            "| full | DiffTransfer | 1.60 | 2.00 1.00 1.60 | 640 | 2.00 | 125% | 100% | 0.16 | 2 |"
        );
        // Rows of one case stay together, in the order they first appeared.
        let cases: Vec<&str> = text
            .lines()
            .skip(2)
            .map(|l| l.split('|').nth(1).unwrap().trim())
            .collect();
        assert_eq!(cases, ["full", "full", "full", "full", "full", "other"]);
        assert!(
            text.contains("| rbd export-diff \\| rbd import-diff |"),
            "{text}"
        );
    }

    #[test]
    fn a_verification_is_compared_with_export_and_md5sum() {
        let mut t = Table::default();
        t.add("verify", Contender::ExportMd5, 1 << 30, s(4.0));
        t.add("verify", Contender::Verify, 1 << 30, s(1.0));
        let text = t.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("| verify | rbd-diffsync verify |"))
            .unwrap();
        assert_eq!(
            line,
            "| verify | rbd-diffsync verify | 1.00 | 1.00 | 1024 | 4.00 | – | – | 0.10 | 2 |"
        );
    }

    #[test]
    fn the_sweep_shows_each_setting_once_with_and_without_the_snapshot() {
        let mut t = Table::default();
        let a = Contender::Ours {
            window: Some(8),
            chunk_size: Some(1 << 20),
        };
        let b = Contender::Ours {
            window: Some(16),
            chunk_size: Some(1 << 20),
        };
        for (who, full, incr) in [(a, 3.0, 2.0), (b, 2.0, 1.0), (a, 5.0, 4.0)] {
            t.add("full", who, 1 << 30, s(full));
            t.add("incremental", who, 1 << 20, s(incr));
        }
        let text = t.render_sweep();
        let lines: Vec<&str> = text.lines().skip(2).collect();
        // Medians of 3.0 and 5.0, and of 2.0 and 4.0; the snapshots took a tenth of each run.
        assert_eq!(
            lines,
            [
                "| DiffTransfer window 8 chunk 1024 KiB | 4.00 | 3.60 | 3.00 | 2.70 | 2 |",
                "| DiffTransfer window 16 chunk 1024 KiB | 2.00 | 1.80 | 1.00 | 0.90 | 2 |",
            ]
        );
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
