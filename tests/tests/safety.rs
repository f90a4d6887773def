//! The safety rules on a live cluster: what is refused before anything is written, what an
//! interrupted transfer leaves and how a rerun completes it, and who may write meanwhile.

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::Duration;

use rbd_diffsync_tests::{assert_kind, chain, cluster, mib, pattern, rbd_diffsync, Chain};

use rbd_diffsync::error::CODE_DESTINATION_CHANGED;
use rbd_diffsync::internals::RECORD_KEY;
use rbd_diffsync::{DiffTransfer, Error, ErrorKind, Phase};

/// Refused as changed since its snapshot `s1`: the library's own code, naming both.
fn assert_changed_since_s1(err: &Error, dst: &str) {
    assert_kind(err, ErrorKind::DestinationChanged, CODE_DESTINATION_CHANGED);
    assert_eq!((err.image(), err.snap()), (Some(dst), Some("s1")), "{err}");
}

/// A slow transfer (one 64 KiB request at a time) from `s1` to `end`.
fn slow(ch: &Chain, end: &str) -> DiffTransfer {
    ch.c.transfer(&format!("{}@{end}", ch.src), &ch.dst, Some("s1"))
        .window(1)
        .chunk_size(65536)
        .progress_interval(Duration::ZERO)
}

/// Runs it, stopped from its progress callback once `stop_at` of the copy is done (or in
/// the scan, with `None`); checks that it was cancelled and left no end snapshot.
fn interrupt(ch: &Chain, end: &str, stop_at: Option<f64>) {
    let err = slow(ch, end)
        .on_progress(move |p| match stop_at {
            None if p.phase == Phase::Scanning => ControlFlow::Break(()),
            Some(f)
                if p.phase == Phase::Copying && p.bytes_done as f64 >= f * p.bytes_total as f64 =>
            {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        })
        .run()
        .unwrap_err();
    assert_kind(&err, ErrorKind::Cancelled, libc::ECANCELED);
    assert_eq!(err.image(), Some(ch.dst.as_str()));
    assert_eq!(
        ch.c.snaps(&ch.dst),
        ["s1"],
        "no end snapshot after {stop_at:?}"
    );
}

fn finish(ch: &Chain, end: &str, continued: bool) {
    let stats =
        ch.c.transfer(&format!("{}@{end}", ch.src), &ch.dst, Some("s1"))
            .run()
            .unwrap_or_else(|e| panic!("rerun up to {end}: {e}"));
    assert_eq!(stats.continued_interrupted, continued, "{stats:?}");
    ch.c.assert_same(&format!("{}@{end}", ch.src), &format!("{}@{end}", ch.dst));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1", end]);
    assert_eq!(ch.c.meta(&ch.dst, RECORD_KEY), None, "the record is gone");
}

#[test]
fn cancelled_incrementals_are_completed_by_a_rerun_with_a_later_end_snapshot() {
    let ch = chain("cancel-later");
    interrupt(&ch, "s2", None);
    assert_eq!(
        ch.c.diff(&ch.dst, Some("s1")),
        [],
        "stopped in the scan: nothing written"
    );
    interrupt(&ch, "s2", Some(0.3));
    let record =
        ch.c.meta(&ch.dst, RECORD_KEY)
            .expect("an in-progress record");
    assert!(record.contains("end=") && record.contains("s2"), "{record}");
    interrupt(&ch, "s2", Some(0.8));
    // cinder retries with a new snapshot: s3 zeroes much of what the interrupted runs wrote.
    finish(&ch, "s3", true);
}

#[test]
fn a_cancelled_incremental_is_completed_by_a_rerun_of_the_same_diff() {
    let ch = chain("cancel-same");
    interrupt(&ch, "s3", Some(0.5));
    finish(&ch, "s3", true);
}

#[test]
fn an_interrupted_incremental_is_not_continued_with_an_older_end_snapshot() {
    let ch = chain("cancel-older");
    interrupt(&ch, "s3", Some(0.5));
    let err =
        ch.c.transfer(&format!("{}@s2", ch.src), &ch.dst, Some("s1"))
            .run()
            .unwrap_err();
    assert_changed_since_s1(&err, &ch.dst);
    assert!(
        err.to_string().contains("\"s3\""),
        "names the interrupted end: {err}"
    );
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    finish(&ch, "s3", true);
}

#[test]
fn a_destination_changed_by_another_client_is_refused_unless_forced() {
    let ch = chain("foreign");
    ch.c.write(&ch.dst, mib(60), 8192, 9);
    let err =
        ch.c.transfer(&format!("{}@s2", ch.src), &ch.dst, Some("s1"))
            .run()
            .unwrap_err();
    assert_changed_since_s1(&err, &ch.dst);
    assert!(
        err.to_string().contains("--force"),
        "says how to override: {err}"
    );
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    // Forced, the changed ranges are rewritten from the source: no trace of the foreign write.
    let stats =
        ch.c.transfer(&format!("{}@s2", ch.src), &ch.dst, Some("s1"))
            .overwrite_existing(true)
            .run()
            .unwrap();
    assert!(!stats.continued_interrupted);
    ch.c.assert_same(&format!("{}@s2", ch.src), &format!("{}@s2", ch.dst));
}

#[test]
fn base_snapshots_of_different_sizes_are_not_the_same_snapshot() {
    let c = cluster();
    let src = c.new_image("rbd", "basesize");
    let dst = c.new_image("backups", "basesize");
    c.create(&src, mib(8), None);
    c.snap(&src, "s1");
    c.write(&src, 0, 4096, 10);
    c.snap(&src, "s2");
    c.create(&dst, mib(12), None);
    c.snap(&dst, "s1");
    for force in [false, true] {
        let err = c
            .transfer(&format!("{src}@s2"), &dst, Some("s1"))
            .overwrite_existing(force)
            .run()
            .unwrap_err();
        assert_changed_since_s1(&err, &dst);
        assert!(err.to_string().contains(&mib(12).to_string()), "{err}");
    }
    assert_eq!(c.snaps(&dst), ["s1"]);
}

#[test]
fn an_incremental_from_a_snapshot_of_size_zero() {
    let c = cluster();
    let src = c.new_image("rbd", "from-empty");
    let dst = c.new_image("backups", "from-empty");
    c.create(&src, 0, None);
    c.snap(&src, "s0");
    c.sync_and_check(&format!("{src}@s0"), &dst, None);
    c.rbd(&["resize", "--no-progress", "--size", "16M", &src]);
    c.write(&src, mib(3), 70_000, 11);
    c.snap(&src, "s1");
    c.sync_and_check(&format!("{src}@s1"), &dst, Some("s0"));
    assert_eq!(c.snaps(&dst), ["s0", "s1"]);
}

#[test]
fn a_full_transfer_writes_only_into_an_empty_image_unless_forced() {
    let c = cluster();
    let src = c.new_image("rbd", "owner");
    c.create(&src, mib(16), None);
    c.write(&src, mib(1), mib(2) as usize, 12);
    c.snap(&src, "s1");
    let source = format!("{src}@s1");

    // Created empty, as cinder creates its base image: accepted as it is.
    let empty = c.new_image("backups", "owner-empty");
    c.create(&empty, mib(16), None);
    let stats = c.sync_and_check(&source, &empty, None);
    assert!(!stats.created_destination);

    // With a snapshot but no data: refused, then forced.
    let snapped = c.new_image("backups", "owner-snap");
    c.create(&snapped, mib(16), None);
    c.snap(&snapped, "old");
    let err = c.transfer(&source, &snapped, None).run().unwrap_err();
    assert_kind(&err, ErrorKind::Exists, libc::EEXIST);
    assert_eq!(err.image(), Some(snapped.as_str()));
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(c.snaps(&snapped), ["old"]);
    c.transfer(&source, &snapped, None)
        .overwrite_existing(true)
        .run()
        .unwrap();
    c.assert_same(&source, &format!("{snapped}@s1"));

    // Open by another client: refused while it is, then accepted.
    let opened = c.new_image("backups", "owner-open");
    c.create(&opened, mib(16), None);
    let other = c.open(&opened);
    let err = c.transfer(&source, &opened, None).run().unwrap_err();
    assert_kind(&err, ErrorKind::Busy, libc::EBUSY);
    assert_eq!(err.image(), Some(opened.as_str()));
    assert!(c.snaps(&opened).is_empty());
    drop(other);
    c.sync_and_check(&source, &opened, None);
}

#[test]
fn a_cancelled_full_transfer_is_completed_by_a_rerun() {
    let c = cluster();
    let src = c.new_image("rbd", "full-cancel");
    let dst = c.new_image("backups", "full-cancel");
    c.create(&src, mib(32), None);
    c.write(&src, 0, mib(24) as usize, 13);
    c.snap(&src, "s1");
    let err = c
        .transfer(&format!("{src}@s1"), &dst, None)
        .window(1)
        .chunk_size(65536)
        .progress_interval(Duration::ZERO)
        .on_progress(|p| {
            if p.phase == Phase::Copying && p.bytes_done * 2 >= p.bytes_total {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .run()
        .unwrap_err();
    assert_kind(&err, ErrorKind::Cancelled, libc::ECANCELED);
    assert!(c.exists(&dst) && c.snaps(&dst).is_empty());
    // The destination holds data now, and the record says whose: no --force needed.
    let stats = c.sync_and_check(&format!("{src}@s1"), &dst, None);
    assert!(
        stats.continued_interrupted && !stats.created_destination,
        "{stats:?}"
    );
}

#[test]
fn a_destination_locked_by_a_live_client_is_refused_naming_it() {
    let ch = chain("locked");
    let holder = ch.c.open(&ch.dst);
    // Writing takes the exclusive lock, as a VM or `rbd import-diff` would; it writes zeros
    // where the destination reads zeros, so that its content stays as it was at s1.
    holder.write(mib(90), &[0u8; 4096]).unwrap();
    let err =
        ch.c.transfer(&format!("{}@s2", ch.src), &ch.dst, Some("s1"))
            .run()
            .unwrap_err();
    assert_kind(&err, ErrorKind::Busy, libc::EBUSY);
    assert_eq!(err.image(), Some(ch.dst.as_str()));
    assert!(
        err.to_string().contains("127.0.0.1:"),
        "names the owner: {err}"
    );
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    drop(holder);
    // That client wrote after s1: the destination has changed, by someone else.
    let err =
        ch.c.transfer(&format!("{}@s2", ch.src), &ch.dst, Some("s1"))
            .run()
            .unwrap_err();
    assert_changed_since_s1(&err, &ch.dst);
}

/// Starts the slow transfer up to s2 on another thread; returns once it copies.
fn copying_in_the_background(
    ch: &Chain,
) -> std::thread::JoinHandle<rbd_diffsync::Result<rbd_diffsync::TransferStats>> {
    let (copying_tx, copying) = mpsc::channel();
    let transfer = slow(ch, "s2").on_progress(move |p| {
        if p.phase == Phase::Copying && p.bytes_done > 0 {
            let _ = copying_tx.send(());
        }
    });
    let running = std::thread::spawn(move || transfer.run());
    copying.recv().expect("the transfer reaches the copy");
    running
}

#[test]
fn no_other_client_writes_while_a_transfer_holds_the_lock() {
    let ch = chain("second-writer");
    let running = copying_in_the_background(&ch);
    let writer = ch.c.open(&ch.dst);
    let err = writer.write(mib(60), &pattern(20, 4096)).unwrap_err();
    assert_eq!(err.errno(), libc::EROFS, "{err}");
    drop(writer);
    running.join().unwrap().expect("the transfer completes");
    ch.c.assert_same(&format!("{}@s2", ch.src), &format!("{}@s2", ch.dst));
}

#[test]
fn a_rerun_while_the_first_run_is_alive_is_refused_and_its_lock_left_alone() {
    let ch = chain("alive");
    let running = copying_in_the_background(&ch);
    // The same transfer again: its predecessor by the record, but it answers.
    let err =
        ch.c.transfer(&format!("{}@s2", ch.src), &ch.dst, Some("s1"))
            .run()
            .unwrap_err();
    assert_kind(&err, ErrorKind::Busy, libc::EBUSY);
    assert!(err.to_string().contains("still running"), "{err}");
    let stats = running.join().unwrap().expect("the first run completes");
    assert_eq!(stats.broke_lock_of, None);
    ch.c.assert_same(&format!("{}@s2", ch.src), &format!("{}@s2", ch.dst));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1", "s2"]);
}

#[test]
fn of_two_incrementals_started_at_once_into_one_destination_one_is_refused() {
    let ch = chain("twice");
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let t = slow(&ch, "s2");
            std::thread::spawn(move || t.run())
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    let refused: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 1, "{results:?}");
    assert_kind(refused[0], ErrorKind::Busy, libc::EBUSY);
    ch.c.assert_same(&format!("{}@s2", ch.src), &format!("{}@s2", ch.dst));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1", "s2"]);
}

#[test]
fn plan_checks_everything_and_writes_nothing() {
    let ch = chain("plan");
    let fresh = ch.c.new_image("backups", "plan-new");
    let plan =
        ch.c.transfer(&format!("{}@s1", ch.src), &fresh, None)
            .plan()
            .unwrap();
    assert!(plan.create_destination && plan.dest_size.is_none());
    assert_eq!((plan.source_size, plan.data_bytes), (mib(96), mib(16)));
    assert!(!ch.c.exists(&fresh), "a plan creates nothing");

    let plan =
        ch.c.transfer(&format!("{}@s2", ch.src), &ch.dst, Some("s1"))
            .plan()
            .unwrap();
    assert_eq!(plan.dest_size, Some(mib(96)));
    assert!(!plan.create_destination && !plan.continues_interrupted);
    assert_eq!(plan.from_snap.as_deref(), Some("s1"));
    assert!(plan.diff_bytes >= mib(24) && plan.extents > 0, "{plan:?}");
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    assert_eq!(ch.c.meta(&ch.dst, RECORD_KEY), None);

    // A plan is refused where the run would be.
    let err =
        ch.c.transfer(&format!("{}@s1", ch.src), &ch.dst, None)
            .plan()
            .unwrap_err();
    assert_kind(&err, ErrorKind::Exists, libc::EEXIST);
}
