//! Transfers on one live cluster, each checked against `rbd export | md5sum` and the
//! destination's snapshot list.

use rbd_diffsync_tests::{assert_kind, cluster, mib, pattern, rbd_diffsync};

use std::ops::ControlFlow;
use std::time::Duration;

use rbd_diffsync::{CancelToken, ErrorKind, Phase};

#[test]
fn full_sync_then_a_chain_of_incrementals() {
    let c = cluster();
    let src = c.new_image("rbd", "chain");
    let dst = c.new_image("backups", "chain");
    c.create(&src, mib(64), None);
    c.write(&src, 0, mib(10) as usize, 1);
    c.write(&src, mib(40) + 12345, 300_000, 2);
    c.snap(&src, "s1");
    let full = c.sync_and_check(&format!("{src}@s1"), &dst, None);
    assert!(full.created_destination);
    // Extents come at 4 KiB granularity: the unaligned write's partial blocks are copied whole.
    let data = mib(10) + 300_000;
    assert!(
        (data..=data + 8192).contains(&full.bytes_written),
        "only the data is written: {full:?}"
    );
    assert_eq!(
        full.bytes_zeroed, 0,
        "a created destination needs no zeroing"
    );
    assert_eq!(c.snaps(&dst), ["s1"]);

    for (i, snap) in ["s2", "s3", "s4"].into_iter().enumerate() {
        let seed = 10 + i as u64;
        c.write(&src, mib(5) * (i as u64 + 1) + 777, 200_000, seed);
        c.write(&src, mib(60) + 4096 * i as u64, 8192, seed + 100);
        c.snap(&src, snap);
        let prev = ["s1", "s2", "s3"][i];
        let stats = c.sync_and_check(&format!("{src}@{snap}"), &dst, Some(prev));
        assert!(!stats.created_destination);
        assert!(stats.bytes_written >= 200_000 + 8192, "{stats:?}");
        assert!(
            stats.bytes_written < mib(10),
            "an incremental writes only changes: {stats:?}"
        );
    }
    assert_eq!(c.snaps(&dst), ["s1", "s2", "s3", "s4"]);
    for snap in ["s1", "s2", "s3"] {
        assert_eq!(
            c.md5(&format!("{dst}@{snap}")),
            c.md5(&format!("{src}@{snap}")),
            "{snap} kept"
        );
    }
}

#[test]
fn sparse_image_with_discards_and_written_zeros() {
    let c = cluster();
    let src = c.new_image("rbd", "sparse");
    let dst = c.new_image("backups", "sparse");
    c.create(&src, 1 << 30, None);
    c.write(&src, 0, mib(2) as usize, 3);
    c.write(&src, mib(300), mib(8) as usize, 4);
    c.write(&src, (1 << 30) - mib(1), mib(1) as usize, 5);
    // Written zeros between data: never written as data.
    c.open(&src)
        .write(mib(500), &vec![0u8; mib(4) as usize])
        .unwrap();
    c.snap(&src, "s1");
    let full = c.sync_and_check(&format!("{src}@s1"), &dst, None);
    assert_eq!(full.bytes_written, mib(11), "{full:?}");

    let img = c.open(&src);
    img.discard(mib(300), mib(4)).unwrap(); // a whole object
    img.discard(mib(306) + 4096, 8192).unwrap(); // inside an object
    img.write_zeroes(0, mib(1)).unwrap();
    img.write(mib(1), &vec![0u8; 65536]).unwrap(); // zeros written as data
    img.write(mib(700), &pattern(6, 4096)).unwrap();
    drop(img);
    c.snap(&src, "s2");
    let inc = c.sync_and_check(&format!("{src}@s2"), &dst, Some("s1"));
    assert!(inc.bytes_zeroed >= mib(4) + mib(1) + 65536, "{inc:?}");
    assert!(
        inc.bytes_written < mib(5),
        "zeros are not written as data: {inc:?}"
    );
    assert_eq!(c.snaps(&dst), ["s1", "s2"]);
    // The destination holds nothing where the source is a hole.
    let allocated: u64 = c
        .diff(&format!("{dst}@s2"), None)
        .iter()
        .filter(|e| e.2)
        .map(|e| e.1)
        .sum();
    assert!(
        allocated <= mib(16),
        "destination allocated {allocated} bytes for 11 MiB of data"
    );
}

#[test]
fn image_growing_and_shrinking_between_snapshots() {
    let c = cluster();
    let src = c.new_image("rbd", "resize");
    let dst = c.new_image("backups", "resize");
    c.create(&src, mib(32), None);
    c.write(&src, mib(30), mib(2) as usize, 7);
    c.snap(&src, "s1");
    c.sync_and_check(&format!("{src}@s1"), &dst, None);

    c.rbd(&["resize", "--no-progress", "--size", "72M", &src]);
    c.write(&src, mib(70), mib(2) as usize, 8);
    c.snap(&src, "grown");
    c.sync_and_check(&format!("{src}@grown"), &dst, Some("s1"));

    c.rbd(&[
        "resize",
        "--no-progress",
        "--allow-shrink",
        "--size",
        "20M",
        &src,
    ]);
    c.snap(&src, "shrunk");
    c.sync_and_check(&format!("{src}@shrunk"), &dst, Some("grown"));

    // Growing again after a shrink must read zeros where the old data was.
    c.rbd(&["resize", "--no-progress", "--size", "40M", &src]);
    c.write(&src, mib(21), 5000, 9);
    c.snap(&src, "regrown");
    c.sync_and_check(&format!("{src}@regrown"), &dst, Some("shrunk"));
    assert_eq!(c.snaps(&dst), ["s1", "grown", "shrunk", "regrown"]);
    let info = c.rbd(&["info", "--format", "json", &dst]);
    assert!(info.contains(&format!("\"size\":{}", mib(40))), "{info}");
}

#[test]
fn object_sizes_other_than_4_mib() {
    let c = cluster();
    for (order, object_size) in [(20u8, mib(1)), (25, mib(32))] {
        let src = c.new_image("rbd", &format!("order{order}"));
        let dst = c.new_image("backups", &format!("order{order}"));
        c.create(&src, mib(100), Some(object_size));
        c.write(&src, object_size - 1000, 3 * object_size as usize / 2, 20);
        c.write(&src, mib(97), 100_000, 21);
        c.snap(&src, "s1");
        c.sync_and_check(&format!("{src}@s1"), &dst, None);
        let info = c.rbd(&["info", "--format", "json", &dst]);
        assert!(
            info.contains(&format!("\"order\":{order}")),
            "created with the source's object size: {info}"
        );
        c.open(&src).discard(object_size, object_size).unwrap();
        c.write(&src, 2 * object_size + 5, 70_000, 22);
        c.snap(&src, "s2");
        c.sync_and_check(&format!("{src}@s2"), &dst, Some("s1"));
        assert_eq!(c.snaps(&dst), ["s1", "s2"]);
    }
}

#[test]
fn clone_with_data_partly_in_its_parent() {
    let c = cluster();
    let parent = c.new_image("rbd", "parent");
    let child = c.new_image("rbd", "child");
    let dst = c.new_image("backups", "child");
    c.create(&parent, mib(48), None);
    c.write(&parent, 0, mib(20) as usize, 30);
    c.snap(&parent, "base");
    c.rbd(&["snap", "protect", &format!("{parent}@base")]);
    c.rbd(&["clone", &format!("{parent}@base"), &child]);
    c.write(&child, mib(6) + 100, mib(3) as usize, 31); // over parent data
    c.write(&child, mib(40), 4096, 32); // beyond the parent's data
    c.snap(&child, "c1");
    let full = c.sync_and_check(&format!("{child}@c1"), &dst, None);
    assert!(
        full.bytes_written >= mib(20),
        "parent data is copied: {full:?}"
    );
    c.open(&child).discard(0, mib(4)).unwrap();
    c.write(&child, mib(12), 10_000, 33);
    c.snap(&child, "c2");
    c.sync_and_check(&format!("{child}@c2"), &dst, Some("c1"));
    assert_eq!(c.snaps(&dst), ["c1", "c2"]);
}

#[test]
fn source_at_head_creates_no_snapshot() {
    let c = cluster();
    let src = c.new_image("rbd", "head");
    let dst = c.new_image("backups", "head");
    c.create(&src, mib(16), None);
    c.write(&src, 4096, 100_000, 40);
    let stats = c.transfer(&src, &dst, None).run().unwrap();
    assert_eq!(stats.end_snap, None);
    assert!(c.snaps(&dst).is_empty());
    assert_eq!(c.md5(&dst), c.md5(&src));
}

#[test]
fn full_sync_over_an_image_with_data_needs_overwrite_existing() {
    let c = cluster();
    let src = c.new_image("rbd", "over");
    let dst = c.new_image("backups", "over");
    c.create(&src, mib(24), None);
    c.write(&src, mib(8), mib(1) as usize, 50);
    c.snap(&src, "s1");
    // The destination is bigger and holds data where the source has none.
    c.create(&dst, mib(40), None);
    c.write(&dst, 0, mib(6) as usize, 51);
    c.write(&dst, mib(8) + mib(1), 4096, 52);
    c.write(&dst, mib(30), 4096, 53);
    let before = c.md5(&dst);
    let err = c
        .transfer(&format!("{src}@s1"), &dst, None)
        .run()
        .unwrap_err();
    assert_kind(&err, ErrorKind::Exists, libc::EEXIST);
    assert_eq!(err.image(), Some(dst.as_str()));
    assert_eq!(c.md5(&dst), before, "refused before writing anything");
    let stats = c
        .transfer(&format!("{src}@s1"), &dst, None)
        .overwrite_existing(true)
        .run()
        .unwrap();
    assert!(!stats.created_destination);
    assert_eq!(c.md5(&format!("{dst}@s1")), c.md5(&format!("{src}@s1")));
    assert_eq!(c.snaps(&dst), ["s1"]);
}

#[test]
fn image_in_a_namespace() {
    let c = cluster();
    let ns = rbd_diffsync_tests::unique("ns");
    c.rbd(&["namespace", "create", &format!("backups/{ns}")]);
    let src = c.new_image("rbd", "nsrc");
    let dst = format!("backups/{ns}/copy");
    c.create(&src, mib(8), None);
    c.write(&src, 0, 50_000, 60);
    c.snap(&src, "s1");
    c.sync_and_check(&format!("{src}@s1"), &dst, None);
    assert_eq!(c.snaps(&dst), ["s1"]);
}

#[test]
fn progress_reaches_the_total_and_cancel_leaves_no_snapshot() {
    let c = cluster();
    let src = c.new_image("rbd", "cancel");
    c.create(&src, mib(32), None);
    c.write(&src, 0, mib(32) as usize, 70);
    c.snap(&src, "s1");

    let dst = c.new_image("backups", "progress");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    c.transfer(&format!("{src}@s1"), &dst, None)
        .on_progress(move |p| log.lock().unwrap().push((p.bytes_done, p.bytes_total)))
        .run()
        .unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress only grows: {seen:?}"
    );
    assert_eq!(*seen.last().unwrap(), (mib(32), mib(32)));

    // Cancelled from the progress callback once some data is done.
    let dst = c.new_image("backups", "cancel");
    let token = CancelToken::new();
    let trigger = token.clone();
    let err = c
        .transfer(&format!("{src}@s1"), &dst, None)
        .chunk_size(65536)
        .window(2)
        .progress_interval(std::time::Duration::ZERO)
        .cancel_token(token)
        .on_progress(move |p| {
            if p.bytes_done > 0 {
                trigger.cancel()
            }
        })
        .run()
        .unwrap_err();
    assert_kind(&err, ErrorKind::Cancelled, libc::ECANCELED);
    assert!(err.to_string().contains(&dst), "{err}");
    assert!(
        c.snaps(&dst).is_empty(),
        "a cancelled transfer creates no snapshot"
    );
}

#[test]
fn incremental_needs_no_zeroing_where_the_destination_was_empty() {
    let c = cluster();
    let src = c.new_image("rbd", "fresh-objects");
    let dst = c.new_image("backups", "fresh-objects");
    c.create(&src, mib(64), None);
    c.write(&src, 0, mib(4) as usize, 120);
    c.snap(&src, "s1");
    c.sync_and_check(&format!("{src}@s1"), &dst, None);
    // Small writes into objects that did not exist at s1: with fast-diff the diff reports
    // whole objects, mostly zeros.
    for i in 0..8u64 {
        c.write(&src, mib(8) + i * mib(6) + 65536, 65536, 121 + i);
    }
    c.snap(&src, "s2");
    let stats = c.sync_and_check(&format!("{src}@s2"), &dst, Some("s1"));
    assert_eq!(stats.bytes_written, 8 * 65536, "{stats:?}");
    assert_eq!(
        stats.bytes_zeroed, 0,
        "the destination read zeros there already: {stats:?}"
    );
    assert_eq!(
        stats.bytes_skipped + stats.bytes_written,
        stats.diff_bytes,
        "{stats:?}"
    );
}

#[test]
fn diff_scans_run_many_object_listings_at_once_unless_the_user_says_otherwise() {
    use rbd_diffsync::internals::Cluster;
    let c = cluster();
    let ours = Cluster::connect(&c.spec()).unwrap();
    assert_eq!(ours.config("rbd_concurrent_management_ops").unwrap(), "128");
    let theirs = Cluster::connect(&c.spec().option("rbd_concurrent_management_ops", "7")).unwrap();
    assert_eq!(theirs.config("rbd_concurrent_management_ops").unwrap(), "7");
}

/// The planning's cells are 256 MiB: a 1.25 GiB image has five.
const CELL: u64 = 256 << 20;

/// `rbd diff` of `image` since `from`, merged as the transfer counts it: (ranges, bytes).
fn diff_counts(c: &rbd_diffsync_tests::TestCluster, image: &str, from: Option<&str>) -> (u64, u64) {
    let merged = c.diff_extents(image, from);
    (merged.len() as u64, merged.iter().map(|e| e.len).sum())
}

#[test]
fn a_diff_across_many_cells_is_copied_while_it_is_scanned() {
    let c = cluster();
    // With fast-diff the cells' exact scans cover what the object map names; without, every
    // cell is scanned.
    for features in [
        "layering,exclusive-lock,object-map,fast-diff",
        "layering,exclusive-lock",
    ] {
        let src = c.new_image("rbd", "cells");
        let dst = c.new_image("backups", "cells");
        c.rbd(&[
            "create",
            "--size",
            "1280M",
            "--image-feature",
            features,
            &src,
        ]);
        // Writes across cell boundaries, and many small ones between.
        for k in 1..5u64 {
            c.write(&src, k * CELL - 40_000, 100_000, k);
        }
        for i in 0..150u64 {
            c.write(&src, i * mib(8) + 4096 * (i % 7), 4096, 100 + i);
        }
        c.snap(&src, "s1");
        let source = format!("{src}@s1");
        let (extents, bytes) = diff_counts(&c, &source, None);
        let plan = c.transfer(&source, &dst, None).plan().unwrap();
        assert_eq!(
            (plan.extents, plan.diff_bytes),
            (extents, bytes),
            "{features}"
        );
        let full = c.sync_and_check(&source, &dst, None);
        assert_eq!(
            (full.extents, full.diff_bytes),
            (extents, bytes),
            "{features}"
        );

        for k in 1..5u64 {
            c.write(&src, k * CELL - 4096, 8192, 10 + k);
        }
        c.write(&src, 3 * CELL + mib(100), mib(9) as usize, 20);
        c.snap(&src, "s2");
        let source = format!("{src}@s2");
        let (extents, bytes) = diff_counts(&c, &source, Some("s1"));
        let plan = c.transfer(&source, &dst, Some("s1")).plan().unwrap();
        assert_eq!(
            (plan.extents, plan.diff_bytes),
            (extents, bytes),
            "{features}"
        );
        let incr = c.sync_and_check(&source, &dst, Some("s1"));
        assert_eq!(
            (incr.extents, incr.diff_bytes),
            (extents, bytes),
            "{features}"
        );
        assert_eq!(
            incr.bytes_written,
            4 * 8192 + mib(9),
            "{features}: {incr:?}"
        );
        assert_eq!(c.snaps(&dst), ["s1", "s2"]);
    }
}

#[test]
fn a_transfer_cancelled_while_its_scan_is_ahead_is_completed_by_a_rerun() {
    let c = cluster();
    let src = c.new_image("rbd", "cells-cancel");
    let dst = c.new_image("backups", "cells-cancel");
    // Without an object map every cell is scanned; data in each of the five.
    c.rbd(&[
        "create",
        "--size",
        "1280M",
        "--image-feature",
        "layering,exclusive-lock",
        &src,
    ]);
    for k in 0..5u64 {
        c.write(&src, k * CELL + 12_345, mib(3) as usize, 300 + k);
    }
    c.snap(&src, "s1");
    let source = format!("{src}@s1");
    // Stopped at the first bytes copied: the scan of the later cells is still ahead.
    let err = c
        .transfer(&source, &dst, None)
        .chunk_size(mib(1))
        .window(1)
        .progress_interval(Duration::from_millis(1))
        .on_progress(|p| {
            if p.phase == Phase::Copying && p.bytes_done > 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .run()
        .unwrap_err();
    assert_kind(&err, ErrorKind::Cancelled, libc::ECANCELED);
    assert_eq!(err.image(), Some(dst.as_str()));
    assert!(c.snaps(&dst).is_empty(), "no end snapshot");
    let stats = c.sync_and_check(&source, &dst, None);
    assert!(stats.continued_interrupted, "{stats:?}");
    assert_eq!(c.snaps(&dst), ["s1"]);
}
