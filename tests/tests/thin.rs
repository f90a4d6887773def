//! Thin images: a 4 TiB image holding a few MiB is scanned from its object map (a scan whose
//! time follows what changed, not the image size: BENCHMARKS.md, "Thin image", has the
//! times), and the diff found that way is the exact diff (`rbd diff`), also for striped images
//! and clones; without a usable object map the scan is the single exact pass.

use rbd_diffsync_tests::rbd_diffsync::internals::{
    normalize, scan_diff, DiffExtent, Image, ScanMethod,
};
use rbd_diffsync_tests::rbd_diffsync::ImageSpec;
use rbd_diffsync_tests::{cluster, mib, pattern, TestCluster};

const TIB: u64 = 1 << 40;

fn open_at(c: &TestCluster, image: &str, snap: Option<&str>) -> Image {
    let spec = ImageSpec::parse(image).unwrap();
    Image::open_read_only(&c.pool(&spec), spec.image(), snap).unwrap()
}

/// What the transfer's scan finds of `image@snap` since `from`, and how.
fn scanned(
    c: &TestCluster,
    image: &str,
    snap: &str,
    from: Option<&str>,
) -> (ScanMethod, Vec<DiffExtent>) {
    let at = open_at(c, image, Some(snap));
    let base = from.map(|f| open_at(c, image, Some(f)));
    scan_diff(&at, base.as_ref(), from, false).unwrap()
}

/// librbd's exact diff of `image@snap` since `from`, asked for directly around each of
/// `writes` (two objects either side), for an image too large for `rbd diff`: nothing else
/// changed, which the caller checks with whole-object diffs.
fn exact_around(
    c: &TestCluster,
    image: &str,
    snap: &str,
    from: Option<&str>,
    writes: &[(u64, usize, u64)],
) -> Vec<DiffExtent> {
    let at = open_at(c, image, Some(snap));
    let size = at.size().unwrap();
    let object = mib(4);
    let near: Vec<DiffExtent> = writes
        .iter()
        .map(|&(offset, len, _)| {
            let start = (offset / object).saturating_sub(2) * object;
            let end = ((offset + len as u64).div_ceil(object) + 2) * object;
            DiffExtent {
                offset: start,
                len: end.min(size) - start,
                exists: true,
            }
        })
        .collect();
    let mut merged: Vec<DiffExtent> = Vec::new();
    for r in normalize(near) {
        match merged.last_mut() {
            Some(last) if r.offset <= last.offset + last.len => {
                last.len = last.len.max(r.offset + r.len - last.offset)
            }
            _ => merged.push(r),
        }
    }
    let mut exact = Vec::new();
    for r in merged {
        at.diff_iterate(from, r.offset, r.len, true, false, |e| {
            exact.push(e);
            true
        })
        .unwrap();
    }
    normalize(exact)
}

/// Data extents of written ranges, merged.
fn written(ranges: &[(u64, usize, u64)]) -> Vec<DiffExtent> {
    normalize(
        ranges
            .iter()
            .map(|&(offset, len, _)| DiffExtent {
                offset,
                len: len as u64,
                exists: true,
            })
            .collect(),
    )
}

/// Asserts that `a` and `b` read the same over `ranges`.
fn assert_same_over(a: &Image, b: &Image, ranges: &[DiffExtent]) {
    for r in ranges {
        let (mut x, mut y) = (vec![0u8; r.len as usize], vec![1u8; r.len as usize]);
        a.read(r.offset, &mut x).unwrap();
        b.read(r.offset, &mut y).unwrap();
        assert!(x == y, "they differ in [{}, +{})", r.offset, r.len);
    }
}

fn write_all(c: &TestCluster, image: &str, writes: &[(u64, usize, u64)]) {
    let img = c.open(image);
    for &(offset, len, seed) in writes {
        img.write(offset, &pattern(seed, len)).unwrap();
    }
}

#[test]
fn a_thin_four_tib_image_syncs_from_its_object_map() {
    let c = cluster();
    let src = c.new_image("rbd", "thin");
    let dst = c.new_image("backups", "thin");
    let size = 4 * TIB;
    c.create(&src, size, None);
    let first = [
        (0, 65536, 1),
        (mib(4) - 4096, 8192, 2), // across two objects
        (TIB + 12345, mib(1) as usize, 3),
        (2 * TIB, mib(2) as usize, 4),
        (3 * TIB + mib(64) + 512, 300_000, 5),
        (size - 65536, 65536, 6), // the last object
    ];
    write_all(&c, &src, &first);
    c.snap(&src, "s1");
    // The transfer's scan of these snapshots reads the object map (the old exact scan of
    // every object took about 11 s per TiB).
    let (method, extents) = scanned(&c, &src, "s1", None);
    assert_eq!(method, ScanMethod::Narrowed);
    assert_eq!(extents, exact_around(&c, &src, "s1", None, &first));

    let full = c.transfer(&format!("{src}@s1"), &dst, None).run().unwrap();
    assert_eq!(full.extents, extents.len() as u64, "{full:?}");
    assert_eq!(full.diff_bytes, extents.iter().map(|e| e.len).sum::<u64>());
    let (a, b) = (open_at(&c, &src, Some("s1")), open_at(&c, &dst, Some("s1")));
    assert_same_over(&a, &b, &extents);
    // Nothing else is allocated on the destination.
    let whole = |image: &Image| scan_diff(image, None, None, true).unwrap().1;
    assert_eq!(whole(&b), whole(&a));

    let second = [
        (mib(1), 4096, 7),
        (TIB + mib(1), mib(2) as usize, 8), // over the end of an earlier write
        (TIB / 2 + 1, 1000, 9),
        (3 * TIB + 7, mib(1) as usize, 10),
    ];
    write_all(&c, &src, &second);
    c.snap(&src, "s2");
    let (method, extents) = scanned(&c, &src, "s2", Some("s1"));
    assert_eq!(method, ScanMethod::Narrowed);
    assert_eq!(extents, exact_around(&c, &src, "s2", Some("s1"), &second));
    // Only what was written changed: whole objects tell nothing else did.
    let changed = |image: &Image| {
        scan_diff(
            image,
            Some(&open_at(&c, &src, Some("s1"))),
            Some("s1"),
            true,
        )
        .unwrap()
        .1
    };
    let objects: Vec<u64> = changed(&open_at(&c, &src, Some("s2")))
        .iter()
        .map(|e| e.offset / mib(4))
        .collect();
    let mut expected: Vec<u64> = second
        .iter()
        .flat_map(|&(o, l, _)| o / mib(4)..=(o + l as u64 - 1) / mib(4))
        .collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(objects, expected);
    let inc = c
        .transfer(&format!("{src}@s2"), &dst, Some("s1"))
        .run()
        .unwrap();
    assert_eq!(inc.diff_bytes, extents.iter().map(|e| e.len).sum::<u64>());
    let (a, b) = (open_at(&c, &src, Some("s2")), open_at(&c, &dst, Some("s2")));
    assert_same_over(&a, &b, &written(&[&first[..], &second[..]].concat()));
    assert_eq!(whole(&b), whole(&a));

    // A full transfer over an existing 4 TiB image holding other data: the destination's
    // allocated ranges are found from its object map too, and what it held is zeroed.
    let over = c.new_image("backups", "thin-over");
    c.create(&over, size, None);
    write_all(
        &c,
        &over,
        &[(TIB + mib(400), 65536, 11), (mib(4) - 4096, 4096, 12)],
    );
    let (method, _) = scan_diff(&open_at(&c, &over, None), None, None, false).unwrap();
    assert_eq!(
        method,
        ScanMethod::Narrowed,
        "what {over} holds, from its object map"
    );
    c.transfer(&format!("{src}@s2"), &over, None)
        .overwrite_existing(true)
        .run()
        .unwrap();
    let b = open_at(&c, &over, Some("s2"));
    assert_same_over(&a, &b, &written(&[&first[..], &second[..]].concat()));
    let mut stale = vec![1u8; 65536];
    b.read(TIB + mib(400), &mut stale).unwrap();
    assert!(stale.iter().all(|&x| x == 0), "stale data is zeroed");
    for image in [&src, &dst, &over] {
        c.rbd(&["snap", "purge", "--no-progress", image]);
        c.rbd(&["rm", "--no-progress", image]);
    }
}

#[test]
fn the_narrowed_scan_of_a_striped_image_is_the_exact_diff() {
    let c = cluster();
    let src = c.new_image("rbd", "thin-striped");
    let dst = c.new_image("backups", "thin-striped");
    c.rbd(&[
        "create",
        "--size",
        "96M",
        "--object-size",
        "1M",
        "--stripe-unit",
        "64K",
        "--stripe-count",
        "4",
        &src,
    ]);
    write_all(
        &c,
        &src,
        &[
            (100_000, 300_000, 1),
            (mib(20) + 7, 5000, 2),
            (mib(60), mib(3) as usize, 3),
            (mib(96) - 4096, 4096, 4),
        ],
    );
    c.snap(&src, "s1");
    let (method, extents) = scanned(&c, &src, "s1", None);
    assert_eq!(method, ScanMethod::Narrowed);
    assert_eq!(extents, c.diff_extents(&format!("{src}@s1"), None));
    c.sync_and_check(&format!("{src}@s1"), &dst, None);

    let img = c.open(&src);
    img.discard(mib(60), mib(1)).unwrap();
    img.discard(150_000, 8192).unwrap();
    img.write(mib(40) + 3, &pattern(5, 70_000)).unwrap();
    drop(img);
    c.snap(&src, "s2");
    let (method, extents) = scanned(&c, &src, "s2", Some("s1"));
    assert_eq!(method, ScanMethod::Narrowed);
    assert_eq!(extents, c.diff_extents(&format!("{src}@s2"), Some("s1")));
    c.sync_and_check(&format!("{src}@s2"), &dst, Some("s1"));
}

#[test]
fn the_narrowed_scan_of_a_clone_is_the_exact_diff_with_its_parent() {
    let c = cluster();
    let parent = c.new_image("rbd", "thin-parent");
    let child = c.new_image("rbd", "thin-child");
    let dst = c.new_image("backups", "thin-child");
    c.create(&parent, mib(64), None);
    write_all(
        &c,
        &parent,
        &[(0, mib(6) as usize, 1), (mib(30) + 5, 70_000, 2)],
    );
    c.snap(&parent, "base");
    c.rbd(&["snap", "protect", &format!("{parent}@base")]);
    c.rbd(&["clone", &format!("{parent}@base"), &child]);
    write_all(&c, &child, &[(mib(5), 200_000, 3), (mib(50), 4096, 4)]);
    c.snap(&child, "c1");
    let (method, extents) = scanned(&c, &child, "c1", None);
    assert_eq!(method, ScanMethod::Narrowed);
    assert_eq!(extents, c.diff_extents(&format!("{child}@c1"), None));
    assert!(
        extents.iter().any(|e| e.offset == 0),
        "parent data: {extents:?}"
    );
    c.sync_and_check(&format!("{child}@c1"), &dst, None);

    c.open(&child).discard(0, mib(4)).unwrap();
    write_all(&c, &child, &[(mib(30), 10_000, 5)]);
    c.snap(&child, "c2");
    let (method, extents) = scanned(&c, &child, "c2", Some("c1"));
    assert_eq!(method, ScanMethod::Narrowed);
    assert_eq!(extents, c.diff_extents(&format!("{child}@c2"), Some("c1")));
    c.sync_and_check(&format!("{child}@c2"), &dst, Some("c1"));
}

#[test]
fn without_a_usable_object_map_the_scan_is_the_exact_pass() {
    let c = cluster();
    // No fast-diff at all.
    let plain = c.new_image("rbd", "thin-nofd");
    let dst = c.new_image("backups", "thin-nofd");
    c.rbd(&[
        "create",
        "--size",
        "64M",
        "--image-feature",
        "layering,exclusive-lock",
        &plain,
    ]);
    write_all(
        &c,
        &plain,
        &[(12345, 100_000, 1), (mib(33), mib(1) as usize, 2)],
    );
    c.snap(&plain, "s1");
    let (method, extents) = scanned(&c, &plain, "s1", None);
    assert_eq!(method, ScanMethod::Exact);
    assert_eq!(extents, c.diff_extents(&format!("{plain}@s1"), None));
    c.sync_and_check(&format!("{plain}@s1"), &dst, None);

    // An object map flagged invalid at the base of an incremental, then at its end too.
    let src = c.new_image("rbd", "thin-badmap");
    c.create(&src, mib(64), None);
    write_all(&c, &src, &[(0, mib(2) as usize, 3)]);
    c.snap(&src, "s1");
    write_all(&c, &src, &[(mib(40) + 1, 5000, 4)]);
    c.snap(&src, "s2");
    assert_eq!(scanned(&c, &src, "s2", Some("s1")).0, ScanMethod::Narrowed);
    for snap in ["s1", "s2"] {
        lose_object_map(&c, &src, snap);
        let (method, extents) = scanned(&c, &src, "s2", Some("s1"));
        assert_eq!(method, ScanMethod::Exact, "object map of {snap} lost");
        assert_eq!(extents, c.diff_extents(&format!("{src}@s2"), Some("s1")));
    }
}

/// Removes the object map of `image@snap`; librbd flags it invalid when it next opens it.
fn lose_object_map(c: &TestCluster, image: &str, snap: &str) {
    let id = c.info(image)["id"].as_str().unwrap().to_owned();
    let list: serde_json::Value =
        serde_json::from_str(&c.rbd(&["snap", "ls", "--format", "json", image])).unwrap();
    let snap_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == snap)
        .and_then(|s| s["id"].as_u64())
        .unwrap();
    let pool = image.split('/').next().unwrap();
    let out = std::process::Command::new("rados")
        .arg("-c")
        .arg(&c.conf)
        .args([
            "-p",
            pool,
            "rm",
            &format!("rbd_object_map.{id}.{snap_id:016x}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flags = c.info(&format!("{image}@{snap}"))["flags"].to_string();
    assert!(flags.contains("object map invalid"), "{flags}");
}
