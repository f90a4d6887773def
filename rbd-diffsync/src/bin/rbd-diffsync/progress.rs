//! Progress on stderr: a bar redrawn in place, lines, or JSON objects, for a transfer or a
//! verification and for a batch of `sync-many`; and the bar's open line, which anything else
//! printed ends first.

use std::io::{StderrLock, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbd_diffsync::{BatchProgress, Phase, Progress, VolumeState};
use serde_json::json;

use crate::output::{mib, MIB};

/// The width of the terminal on stderr, if it is one that says.
fn terminal_width() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the valid pointer it is given.
    let ret = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) };
    (ret == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// The width a bar is cut to: the terminal's, 80 when it does not say, at least 20.
fn bar_width() -> usize {
    terminal_width().unwrap_or(80).max(20)
}

/// How progress is shown on stderr.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProgressMode {
    /// A bar redrawn in place (stderr is a terminal).
    Bar,
    /// A line at each change of phase, at the start of a wait and every 5 s.
    Lines,
    /// One JSON object per report.
    Json,
}

/// Whether the bar has a line open on the terminal, which anything else printed must end or
/// clear first.
#[derive(Clone, Default)]
pub(crate) struct OpenLine(Arc<AtomicBool>);

impl OpenLine {
    /// Ends the bar's line, if one is open, so that what follows starts on a line of its own.
    /// The bar is drawn and marked open under the lock of stderr, which `err` holds.
    pub(crate) fn end(&self, err: &mut std::io::StderrLock<'_>) {
        if self.0.swap(false, Ordering::SeqCst) {
            let _ = writeln!(err);
        }
    }

    /// [`OpenLine::end`], taking the lock of stderr: before the result or an error is printed.
    pub(crate) fn end_on_stderr(&self) {
        self.end(&mut std::io::stderr().lock());
    }

    /// Redraws the bar as `line`, cut to `width` less one character, and marks it open.
    fn draw(&self, err: &mut StderrLock<'_>, line: &str, width: usize) {
        let line: String = line.chars().take(width - 1).collect();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
        self.0.store(true, Ordering::SeqCst);
    }
}

const LINE_EVERY: Duration = Duration::from_secs(5);

/// Whether a periodic line is due: none printed yet, or the last [`LINE_EVERY`] ago.
fn line_due(last_line: Option<Instant>) -> bool {
    last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY)
}

/// The progress callback: see [`ProgressMode`].
pub(crate) fn progress_printer(
    mode: ProgressMode,
    open: OpenLine,
) -> impl FnMut(&Progress) + Send + 'static {
    let mut printer = ProgressPrinter {
        mode,
        open,
        width: bar_width(),
        last_line: None,
        last_phase: None,
        last_wait: None,
        copy_started: None,
    };
    move |p: &Progress| printer.report(p)
}

/// What the progress callback of a transfer or a verification keeps between reports.
struct ProgressPrinter {
    mode: ProgressMode,
    open: OpenLine,
    width: usize,
    last_line: Option<Instant>,
    last_phase: Option<Phase>,
    last_wait: Option<String>,
    /// The phase that counts bytes (copying or verifying) and when it started.
    copy_started: Option<(Phase, Duration)>,
}

/// What a report says besides its phase.
struct Details {
    /// Percent of the bytes done (100 while the total is not known).
    pct: f64,
    /// The percentage, the bytes done and in all, and the rate, once the total is known.
    figures: Option<String>,
    /// What the transfer has been waiting for, and how long.
    waiting: Option<String>,
}

impl ProgressPrinter {
    fn report(&mut self, p: &Progress) {
        let counting = matches!(p.phase, Phase::Copying | Phase::Verifying);
        if counting && self.copy_started.is_none_or(|(phase, _)| phase != p.phase) {
            self.copy_started = Some((p.phase, p.elapsed));
        }
        let mut err = std::io::stderr().lock();
        if self.mode == ProgressMode::Json {
            write_json(&mut err, p);
            return;
        }
        let details = self.details(p);
        if self.mode == ProgressMode::Bar {
            self.open.draw(&mut err, &bar_line(p, &details), self.width);
            return;
        }
        self.write_line(&mut err, p, &details);
    }

    /// What `p` says besides its phase, its rate counted from the start of the phase that
    /// counts bytes.
    fn details(&self, p: &Progress) -> Details {
        let rate = self.copy_started.map(|(_, start)| {
            let secs = p.elapsed.saturating_sub(start).as_secs_f64().max(1e-3);
            p.bytes_done as f64 / secs / MIB
        });
        let pct = if p.bytes_total > 0 {
            p.bytes_done as f64 * 100.0 / p.bytes_total as f64
        } else {
            100.0
        };
        // The total is known once copying has started.
        let figures = (p.bytes_total > 0).then(|| {
            format!(
                "{pct:5.1}% {} of {}, {:.1} MiB/s",
                mib(p.bytes_done),
                mib(p.bytes_total),
                rate.unwrap_or(0.0)
            )
        });
        let waiting = p
            .waiting_for
            .as_ref()
            .map(|what| format!("waiting for {what} ({} s)", p.waited.as_secs()));
        Details {
            pct,
            figures,
            waiting,
        }
    }

    /// A line at a change of phase, at the start of a wait, and every [`LINE_EVERY`].
    fn write_line(&mut self, err: &mut StderrLock<'_>, p: &Progress, details: &Details) {
        let new_wait = p.waiting_for.is_some() && p.waiting_for != self.last_wait;
        self.last_wait.clone_from(&p.waiting_for);
        let due = line_due(self.last_line);
        if self.last_phase != Some(p.phase) || new_wait || due {
            self.last_phase = Some(p.phase);
            self.last_line = Some(Instant::now());
            let mut line = format!("progress: {}", p.phase.name());
            if let Some(figures) = &details.figures {
                line.push(' ');
                line.push_str(figures.trim_start());
            }
            line.push_str(&format!(", {:.1} s", p.elapsed.as_secs_f64()));
            if let Some(waiting) = &details.waiting {
                line.push_str("; ");
                line.push_str(waiting);
            }
            let _ = writeln!(err, "{line}");
        }
    }
}

/// One report as a JSON object on a line of its own.
fn write_json(err: &mut StderrLock<'_>, p: &Progress) {
    // By hand, to keep the order of the fields; the only string is escaped by serde.
    let waiting_for = serde_json::to_string(&p.waiting_for).unwrap_or_else(|_| "null".to_owned());
    let _ = writeln!(
        err,
        "{{\"phase\":\"{}\",\"bytes_done\":{},\"bytes_total\":{},\"elapsed\":{:.3},\
         \"waiting_for\":{waiting_for},\"waited\":{:.3}}}",
        p.phase.name(),
        p.bytes_done,
        p.bytes_total,
        p.elapsed.as_secs_f64(),
        p.waited.as_secs_f64(),
    );
}

/// The bar of one report, before it is cut to the terminal's width.
fn bar_line(p: &Progress, details: &Details) -> String {
    let mut line = format!("{:<10}", p.phase.name());
    if let Some(figures) = &details.figures {
        let bar = 24;
        let filled = ((details.pct / 100.0) * bar as f64) as usize;
        line.push_str(&format!(
            " [{}{}] {figures}",
            "#".repeat(filled.min(bar)),
            "-".repeat(bar - filled.min(bar))
        ));
    }
    if let Some(waiting) = &details.waiting {
        line.push_str("  ");
        line.push_str(waiting);
    }
    line
}

/// The progress of a batch on stderr: a line when a volume starts or ends and every 5 s (a
/// bar on a terminal), or one JSON object per report.
pub(crate) fn batch_printer(
    mode: ProgressMode,
    open: OpenLine,
) -> impl FnMut(&BatchProgress) + Send + 'static {
    let width = bar_width();
    let mut states: Vec<VolumeState> = Vec::new();
    let mut last_line: Option<Instant> = None;
    move |p: &BatchProgress| {
        let mut err = std::io::stderr().lock();
        if mode == ProgressMode::Json {
            let value = batch_json(p);
            let _ = writeln!(err, "{value}");
            return;
        }
        let total = batch_total(p);
        if mode == ProgressMode::Bar {
            open.draw(&mut err, &format!("volumes: {total}"), width);
            return;
        }
        write_state_changes(&mut err, p, &mut states);
        if line_due(last_line) {
            last_line = Some(Instant::now());
            let _ = writeln!(err, "progress: {total}, {:.1} s", p.elapsed.as_secs_f64());
        }
    }
}

/// A report of a batch as one JSON object.
fn batch_json(p: &BatchProgress) -> serde_json::Value {
    let volumes: Vec<serde_json::Value> = p
        .volumes
        .iter()
        .map(|v| {
            json!({
                "dest": v.dest,
                "state": v.state.name(),
                "phase": v.phase.map(Phase::name),
                "bytes_done": v.bytes_done,
                "bytes_total": v.bytes_total,
                "waiting_for": v.waiting_for,
            })
        })
        .collect();
    json!({
        "bytes_done": p.bytes_done,
        "bytes_total": p.bytes_total,
        "queued": p.queued,
        "running": p.running,
        "succeeded": p.succeeded,
        "failed": p.failed,
        "elapsed": (p.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "volumes": volumes,
    })
}

/// The volumes in each state, the bytes done and in all, and the rate of a batch.
fn batch_total(p: &BatchProgress) -> String {
    let rate = p.bytes_done as f64 / p.elapsed.as_secs_f64().max(1e-3) / MIB;
    format!(
        "{} running, {} done, {} failed, {} queued; {} of {}, {rate:.1} MiB/s",
        p.running,
        p.succeeded,
        p.failed,
        p.queued,
        mib(p.bytes_done),
        mib(p.bytes_total)
    )
}

/// A line for each volume whose state changed since `states`, which it updates.
fn write_state_changes(err: &mut StderrLock<'_>, p: &BatchProgress, states: &mut Vec<VolumeState>) {
    states.resize(p.volumes.len(), VolumeState::Queued);
    for (k, v) in p.volumes.iter().enumerate() {
        if v.state != states[k] {
            states[k] = v.state;
            let _ = writeln!(
                err,
                "progress: [{}/{}] {} {}",
                k + 1,
                p.volumes.len(),
                v.dest,
                v.state.name()
            );
        }
    }
}
