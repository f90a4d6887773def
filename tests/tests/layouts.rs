//! Images of every shape: striped, without object map or fast-diff, with an invalid object map,
//! with many snapshots, data above 4 GiB, sizes that are no multiple of 4 KiB or of the object
//! size, and whole-object diffs. Each result is checked against the source with the oracle.

use std::thread;

use rbd_diffsync_tests::{cluster, mib, pattern, TestCluster};

/// The strings of `rbd info`'s list `key` (`features`, `flags`), sorted.
fn info_list(c: &TestCluster, image: &str, key: &str) -> Vec<String> {
    let mut list: Vec<String> = c.info(image)[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    list.sort();
    list
}

fn features(c: &TestCluster, image: &str) -> Vec<String> {
    info_list(c, image, "features")
}

fn flags(c: &TestCluster, image: &str) -> Vec<String> {
    info_list(c, image, "flags")
}

/// `rados -p POOL rm OBJECT`.
fn rados_rm(c: &TestCluster, pool: &str, object: &str) {
    let out = std::process::Command::new("rados")
        .arg("-c")
        .arg(&c.conf)
        .args(["-p", pool, "rm", object])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rados rm {object}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn snap_id(c: &TestCluster, image: &str, snap: &str) -> u64 {
    let list: serde_json::Value =
        serde_json::from_str(&c.rbd(&["snap", "ls", "--format", "json", image])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == snap)
        .and_then(|s| s["id"].as_u64())
        .unwrap()
}

#[test]
fn a_striped_source_gives_a_copy_with_its_layout_and_features() {
    let c = cluster();
    let src = c.new_image("rbd", "striped");
    let dst = c.new_image("backups", "striped");
    c.rbd(&[
        "create",
        "--size",
        "40M",
        "--object-size",
        "1M",
        "--stripe-unit",
        "64K",
        "--stripe-count",
        "4",
        &src,
    ]);
    c.write(&src, 100_000, mib(5) as usize, 1);
    c.write(&src, mib(30) + 7, 200_000, 2);
    c.snap(&src, "s1");
    c.sync_and_check(&format!("{src}@s1"), &dst, None);
    let (a, b) = (c.info(&src), c.info(&dst));
    for key in [
        "stripe_unit",
        "stripe_count",
        "object_size",
        "order",
        "size",
    ] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert_eq!(b["stripe_count"], 4);
    assert_eq!(features(&c, &src), features(&c, &dst));
    c.open(&src).discard(mib(1), mib(2)).unwrap();
    c.write(&src, mib(20) + 333, 70_000, 3);
    c.snap(&src, "s2");
    c.sync_and_check(&format!("{src}@s2"), &dst, Some("s1"));
}

#[test]
fn images_without_object_map_fast_diff_or_exclusive_lock() {
    let c = cluster();
    for feature_set in ["layering,exclusive-lock", "layering"] {
        let src = c.new_image("rbd", "features");
        let dst = c.new_image("backups", "features");
        c.rbd(&[
            "create",
            "--size",
            "24M",
            "--image-feature",
            feature_set,
            &src,
        ]);
        c.write(&src, 0, mib(3) as usize, 4);
        c.write(&src, mib(9), 4096, 5);
        c.snap(&src, "s1");
        c.sync_and_check(&format!("{src}@s1"), &dst, None);
        assert_eq!(features(&c, &dst), features(&c, &src), "{feature_set}");
        c.open(&src).discard(0, mib(1)).unwrap();
        c.write(&src, mib(20), 100_000, 6);
        c.snap(&src, "s2");
        c.sync_and_check(&format!("{src}@s2"), &dst, Some("s1"));
        assert_eq!(c.snaps(&dst), ["s1", "s2"]);
    }
}

#[test]
fn invalid_object_maps_on_the_source_and_the_destination() {
    let c = cluster();
    let src = c.new_image("rbd", "badmap");
    let dst = c.new_image("backups", "badmap");
    c.create(&src, mib(32), None);
    c.write(&src, 0, mib(6) as usize, 7);
    c.snap(&src, "s1");
    c.sync_and_check(&format!("{src}@s1"), &dst, None);
    c.write(&src, mib(12), mib(2) as usize, 8);
    c.open(&src).discard(mib(4), mib(2)).unwrap();
    c.snap(&src, "s2");
    // Losing the object maps of the source's end snapshot and of both HEADs makes librbd
    // flag them invalid: fast-diff cannot be trusted, and diffs take the slow path.
    let (src_id, dst_id) = (c.info(&src)["id"].clone(), c.info(&dst)["id"].clone());
    let (src_id, dst_id) = (src_id.as_str().unwrap(), dst_id.as_str().unwrap());
    let end = snap_id(&c, &src, "s2");
    rados_rm(&c, "rbd", &format!("rbd_object_map.{src_id}.{end:016x}"));
    rados_rm(&c, "rbd", &format!("rbd_object_map.{src_id}"));
    rados_rm(&c, "backups", &format!("rbd_object_map.{dst_id}"));
    c.write(&src, mib(30), 4096, 9); // opens HEAD, which notices
    assert!(flags(&c, &format!("{src}@s2")).contains(&"object map invalid".to_owned()));
    c.sync_and_check(&format!("{src}@s2"), &dst, Some("s1"));
    assert!(flags(&c, &dst).contains(&"object map invalid".to_owned()));
    c.snap(&src, "s3");
    c.sync_and_check(&format!("{src}@s3"), &dst, Some("s2"));
    assert_eq!(c.snaps(&dst), ["s1", "s2", "s3"]);
}

#[test]
fn more_than_sixteen_snapshots_on_both_images() {
    let c = cluster();
    let src = c.new_image("rbd", "manysnaps");
    let dst = c.new_image("backups", "manysnaps");
    c.create(&src, mib(16), None);
    for i in 1..=20u64 {
        c.write(&src, i * 512 * 1024, 5000, 10 + i);
        c.snap(&src, &format!("s{i}"));
    }
    c.sync_and_check(&format!("{src}@s18"), &dst, None);
    for i in 1..=17 {
        c.snap(&dst, &format!("x{i}"));
    }
    c.sync_and_check(&format!("{src}@s20"), &dst, Some("s18"));
    let snaps = c.snaps(&dst);
    assert_eq!(snaps.len(), 19);
    assert_eq!((snaps[0].as_str(), snaps[18].as_str()), ("s18", "s20"));
}

#[test]
fn data_above_4_gib() {
    let c = cluster();
    let src = c.new_image("rbd", "big");
    let dst = c.new_image("backups", "big");
    let gib4 = 4u64 << 30;
    c.create(&src, gib4 + mib(8), None);
    c.write(&src, 0, 4096, 30);
    c.write(&src, gib4 + 12_345, mib(1) as usize, 31);
    c.snap(&src, "s1");
    c.transfer(&format!("{src}@s1"), &dst, None).run().unwrap();
    c.write(&src, gib4 + mib(6) + 1, 700_000, 32);
    c.write(&src, gib4 - 4096, 8192, 33); // across the 4 GiB boundary
    c.snap(&src, "s2");
    c.transfer(&format!("{src}@s2"), &dst, Some("s1"))
        .run()
        .unwrap();
    // Both 4 GiB exports at once: each takes seconds.
    let (a, b) = (format!("{src}@s2"), format!("{dst}@s2"));
    let theirs = thread::spawn({
        let c = c.clone();
        move || c.md5(&a)
    });
    assert_eq!(c.md5(&b), theirs.join().unwrap());
}

#[test]
fn sizes_that_are_no_multiple_of_4_kib_or_of_the_object_size() {
    let c = cluster();
    let src = c.new_image("rbd", "oddsize");
    let dst = c.new_image("backups", "oddsize");
    let size = mib(38) + 12_345;
    c.rbd(&["create", "--size", &format!("{size}B"), &src]);
    let img = c.open(&src);
    img.write(size - 5000, &pattern(40, 5000)).unwrap();
    img.write(mib(3) + 1, &pattern(41, 9000)).unwrap();
    drop(img);
    c.snap(&src, "s1");
    c.sync_and_check(&format!("{src}@s1"), &dst, None);
    assert_eq!(c.info(&dst)["size"], size);
    let grown = size + mib(7) + 3;
    c.rbd(&[
        "resize",
        "--no-progress",
        "--size",
        &format!("{grown}B"),
        &src,
    ]);
    c.open(&src).write(grown - 777, &pattern(42, 777)).unwrap();
    c.snap(&src, "s2");
    c.sync_and_check(&format!("{src}@s2"), &dst, Some("s1"));
    assert_eq!(c.info(&dst)["size"], grown);
}

#[test]
fn whole_object_diffs() {
    let c = cluster();
    let src = c.new_image("rbd", "whole");
    let dst = c.new_image("backups", "whole");
    c.create(&src, mib(40), None);
    c.write(&src, mib(1) + 5, 300_000, 50);
    c.write(&src, mib(21), 4096, 51);
    c.snap(&src, "s1");
    let full = c
        .transfer(&format!("{src}@s1"), &dst, None)
        .whole_object(true)
        .run()
        .unwrap();
    c.assert_same(&format!("{src}@s1"), &format!("{dst}@s1"));
    assert_eq!(full.diff_bytes, mib(8), "two whole objects: {full:?}");
    assert!(
        full.bytes_written < mib(1),
        "zeros are not written: {full:?}"
    );
    c.open(&src).discard(mib(20), mib(4)).unwrap();
    c.write(&src, mib(33), 10_000, 52);
    c.snap(&src, "s2");
    let inc = c
        .transfer(&format!("{src}@s2"), &dst, Some("s1"))
        .whole_object(true)
        .run()
        .unwrap();
    c.assert_same(&format!("{src}@s2"), &format!("{dst}@s2"));
    assert!(inc.diff_bytes >= mib(8), "{inc:?}");
}
