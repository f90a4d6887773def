//! The results on stdout, as plain text or one JSON object: a sync's, a dry run's, a
//! verification's and a batch's; and the figures they share.

use std::io::Write;
use std::time::Duration;

use rbd_diffsync::error::code_name;
use rbd_diffsync::{Error, Plan, TransferStats, VerifyStats};
use serde_json::json;

use crate::failure::error_value;
use crate::jobs::JobLine;

/// Bytes in a MiB, to divide by.
pub(crate) const MIB: f64 = (1u64 << 20) as f64;

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

/// Writes the result on stdout; a closed stdout is no reason to fail a finished transfer.
pub(crate) fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// "full", or "incremental from" the snapshot a transfer starts from.
fn diff_kind(from_snap: Option<&str>) -> String {
    match from_snap {
        Some(from) => format!("incremental from {from}"),
        None => "full".to_owned(),
    }
}

/// The size of a diff and its number of extents.
fn diff_line(diff_bytes: u64, extents: u64) -> String {
    format!("  diff      {} in {} extents", mib(diff_bytes), extents)
}

/// The time a run took and its throughput, in bytes per second.
fn elapsed_line(elapsed: Duration, throughput: f64) -> String {
    format!(
        "  elapsed   {:.2} s ({:.1} MiB/s)",
        elapsed.as_secs_f64(),
        throughput / MIB
    )
}

/// The figures of a transfer as a JSON object, its throughput included.
fn stats_json(stats: &TransferStats) -> serde_json::Value {
    let mut value = serde_json::to_value(stats).expect("stats serialise");
    value["throughput_bytes_per_sec"] = stats.throughput().into();
    value
}

/// The result: the "synced" block, or one JSON object.
pub(crate) fn stats_text(json: bool, stats: &TransferStats) -> String {
    if json {
        let value = stats_json(stats);
        return format!("{value}\n");
    }
    let (source, dest) = (&stats.source, &stats.dest);
    let kind = diff_kind(stats.from_snap.as_deref());
    let mut lines = vec![format!("synced {source} -> {dest} ({kind})")];
    lines.extend(interrupted_lines(stats));
    lines.extend([
        diff_line(stats.diff_bytes, stats.extents),
        format!("  read      {}", mib(stats.bytes_read)),
        format!("  written   {}", mib(stats.bytes_written)),
        format!("  zeroed    {}", mib(stats.bytes_zeroed)),
        format!(
            "  skipped   {} (destination reads zeros there already)",
            mib(stats.bytes_skipped)
        ),
    ]);
    if stats.bytes_verified > 0 {
        lines.push(format!(
            "  verified  {} read back from both images, equal",
            mib(stats.bytes_verified)
        ));
    }
    lines.push(elapsed_line(stats.elapsed, stats.throughput()));
    if stats.created_destination {
        lines.push(format!("  created   {dest} ({})", mib(stats.image_size)));
    }
    lines.push(match &stats.end_snap {
        Some(snap) => format!(
            "  snapshot  {dest}@{snap} ({:.2} s)",
            stats.snapshot_elapsed.as_secs_f64()
        ),
        None => "  snapshot  none (the source was read at HEAD)".to_owned(),
    });
    lines.join("\n") + "\n"
}

/// What a sync took over from an interrupted transfer of the same diff, if anything.
fn interrupted_lines(stats: &TransferStats) -> Vec<String> {
    let mut lines = Vec::new();
    if stats.continued_interrupted {
        lines.push("  continued an interrupted transfer of this diff, now complete".to_owned());
    }
    if let Some(client) = &stats.broke_lock_of {
        lines.push(format!(
            "  fenced    the killed client {client} of the interrupted transfer (blocklisted, \
             its lock broken)"
        ));
    }
    if stats.bytes_resumed > 0 {
        lines.push(format!(
            "  resumed   {} done by the interrupted transfer, not done again",
            mib(stats.bytes_resumed)
        ));
    }
    if stats.bytes_rechecked > 0 {
        lines.push(format!(
            "  rechecked {} below its checkpoint compared with the source, not trusted: the \
             interrupted transfer had let go of the destination",
            mib(stats.bytes_rechecked)
        ));
    }
    lines
}

/// The result of a verification that found the images equal: a block of lines, or one JSON
/// object.
pub(crate) fn verify_text(json: bool, stats: &VerifyStats) -> String {
    if json {
        let mut value = serde_json::to_value(stats).expect("stats serialise");
        value["equal"] = true.into();
        value["throughput_bytes_per_sec"] = stats.throughput().into();
        return format!("{value}\n");
    }
    [
        format!("equal: {} and {}", stats.source, stats.dest),
        format!("  size      {}", mib(stats.image_size)),
        format!("  compared  {}", mib(stats.bytes_compared)),
        format!(
            "  skipped   {} (allocated on neither image)",
            mib(stats.bytes_skipped)
        ),
        elapsed_line(stats.elapsed, stats.throughput()),
    ]
    .join("\n")
        + "\n"
}

/// What a dry run found the sync would do: a block of lines, or one JSON object.
pub(crate) fn plan_text(plan: &Plan, json: bool) -> String {
    if json {
        let mut value = serde_json::to_value(plan).expect("plan serialises");
        value["dry_run"] = true.into();
        return format!("{value}\n");
    }
    let kind = diff_kind(plan.from_snap.as_deref());
    let dest = &plan.dest;
    let mut lines = vec![format!(
        "would sync {} -> {dest} ({kind}); dry run, nothing written",
        plan.source
    )];
    if plan.continues_interrupted {
        lines.push("  continues an interrupted transfer of this diff".to_owned());
    }
    if plan.bytes_resumed > 0 {
        lines.push(format!(
            "  resumes   at offset {}: {} done by the interrupted transfer",
            plan.resume_from,
            mib(plan.bytes_resumed)
        ));
    }
    if plan.overwrites_destination {
        lines.push("  overwrites what the destination holds (--force)".to_owned());
    }
    lines.push(match plan.dest_size {
        None => format!("  create    {dest} ({})", mib(plan.source_size)),
        Some(size) => format!("  create    no: {dest} exists ({})", mib(size)),
    });
    lines.push(match plan.dest_size {
        Some(size) if size != plan.source_size => {
            format!("  resize    {} -> {}", mib(size), mib(plan.source_size))
        }
        _ => "  resize    no".to_owned(),
    });
    lines.extend([
        diff_line(plan.diff_bytes, plan.extents),
        format!("  data      {} to read and write", mib(plan.data_bytes)),
        format!("  zeros     {} to make read as zeros", mib(plan.zero_bytes)),
    ]);
    lines.push(match &plan.end_snap {
        Some(snap) => format!("  snapshot  {dest}@{snap}"),
        None => "  snapshot  none (the source is read at HEAD)".to_owned(),
    });
    lines.join("\n") + "\n"
}

/// The figures of a batch: of the volumes that succeeded, added up.
struct BatchTotals {
    succeeded: usize,
    failed: usize,
    read: u64,
    written: u64,
    zeroed: u64,
    diff: u64,
    verified: u64,
    /// Seconds the batch took.
    secs: f64,
    /// Diff bytes per second of the batch.
    per_sec: f64,
}

impl BatchTotals {
    fn of(results: &[Result<TransferStats, Error>], elapsed: Duration) -> BatchTotals {
        let ok: Vec<&TransferStats> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let sum = |f: fn(&TransferStats) -> u64| ok.iter().map(|s| f(s)).sum::<u64>();
        let diff = sum(|s| s.diff_bytes);
        let secs = elapsed.as_secs_f64();
        BatchTotals {
            succeeded: ok.len(),
            failed: results.len() - ok.len(),
            read: sum(|s| s.bytes_read),
            written: sum(|s| s.bytes_written),
            zeroed: sum(|s| s.bytes_zeroed),
            diff,
            verified: sum(|s| s.bytes_verified),
            secs,
            per_sec: if secs > 0.0 { diff as f64 / secs } else { 0.0 },
        }
    }
}

/// The result of a batch: a line per volume and a summary, or one JSON object.
pub(crate) fn many_text(
    json: bool,
    jobs: &[JobLine],
    results: &[Result<TransferStats, Error>],
    elapsed: Duration,
) -> String {
    let totals = BatchTotals::of(results, elapsed);
    if json {
        return many_json(jobs, results, &totals);
    }
    let mut lines: Vec<String> = jobs
        .iter()
        .zip(results)
        .map(|(job, r)| volume_line(job, r))
        .collect();
    let (failed, secs) = (totals.failed, totals.secs);
    lines.push(format!(
        "synced {} of {} volumes, {failed} failed: diff {}, read {}, written {}, zeroed {} in \
         {secs:.2} s ({:.1} MiB/s)",
        totals.succeeded,
        results.len(),
        mib(totals.diff),
        mib(totals.read),
        mib(totals.written),
        mib(totals.zeroed),
        totals.per_sec / MIB
    ));
    lines.join("\n") + "\n"
}

/// The result of a batch as one JSON object: the "volumes" array and the totals.
fn many_json(
    jobs: &[JobLine],
    results: &[Result<TransferStats, Error>],
    totals: &BatchTotals,
) -> String {
    let volumes: Vec<serde_json::Value> = jobs
        .iter()
        .zip(results)
        .map(|(job, r)| volume_json(job, r))
        .collect();
    let value = json!({
        "volumes": volumes,
        "succeeded": totals.succeeded,
        "failed": totals.failed,
        "bytes_read": totals.read,
        "bytes_written": totals.written,
        "bytes_zeroed": totals.zeroed,
        "diff_bytes": totals.diff,
        "bytes_verified": totals.verified,
        "elapsed": totals.secs,
        "throughput_bytes_per_sec": totals.per_sec,
    });
    format!("{value}\n")
}

/// One volume of a batch as a JSON object: its job, and its figures or its error.
fn volume_json(job: &JobLine, r: &Result<TransferStats, Error>) -> serde_json::Value {
    let mut v = json!({
        "source": job.source,
        "dest": job.dest,
        "from_snap": job.from_snap,
        "ok": r.is_ok(),
    });
    match r {
        Ok(stats) => v["stats"] = stats_json(stats),
        Err(e) => v["error"] = error_value(e)["error"].clone(),
    }
    v
}

/// One volume of a batch as a line: what it wrote, or why it failed.
fn volume_line(job: &JobLine, r: &Result<TransferStats, Error>) -> String {
    let kind = diff_kind(job.from_snap.as_deref());
    match r {
        Ok(s) => format!(
            "ok      {} -> {} ({kind}): {} written, {} zeroed{} in {:.2} s",
            s.source,
            s.dest,
            mib(s.bytes_written),
            mib(s.bytes_zeroed),
            if job.verify {
                format!(", {} verified", mib(s.bytes_verified))
            } else {
                String::new()
            },
            s.elapsed.as_secs_f64()
        ),
        Err(e) => format!(
            "FAILED  {} -> {} ({kind}): {e} ({})",
            job.source,
            job.dest,
            code_name(e.errno()).unwrap_or("error")
        ),
    }
}
