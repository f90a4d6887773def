//! Bad input: each refused with its own error naming what is wrong, the destination untouched
//! (no new snapshot, nothing written since its last snapshot according to `rbd diff`).

use rbd_diffsync_tests::{assert_kind, cluster, mib, rbd_diffsync, TestCluster};

use rbd_diffsync::internals::{HOLDER_KEY, RECORD_KEY};
use rbd_diffsync::{DiffTransfer, Error, ErrorKind, ImageSpec};

struct Setup {
    c: TestCluster,
    src: String,
    dst: String,
}

/// A source with snapshots s1, s1b, s2 and a destination holding s1 only.
fn setup(name: &str) -> Setup {
    let c = cluster();
    let src = c.new_image("rbd", name);
    let dst = c.new_image("backups", name);
    c.create(&src, mib(8), None);
    c.write(&src, 0, 100_000, 100);
    c.snap(&src, "s1");
    c.write(&src, mib(1), 100_000, 101);
    c.snap(&src, "s1b");
    c.write(&src, mib(2), 100_000, 102);
    c.snap(&src, "s2");
    c.sync_and_check(&format!("{src}@s1"), &dst, None);
    Setup { c, src, dst }
}

impl Setup {
    fn run(&self, source: &str, dest: &str, from: Option<&str>) -> Error {
        let t = DiffTransfer::new(source.parse().unwrap(), dest.parse().unwrap())
            .cluster(self.c.spec());
        let t = match from {
            Some(from) => t.from_snap(from),
            None => t,
        };
        match t.run() {
            Ok(stats) => panic!("{source} -> {dest} from {from:?} succeeded: {stats:?}"),
            Err(e) => e,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(
            self.c.snaps(&self.dst),
            ["s1"],
            "no snapshot was added to {}",
            self.dst
        );
        assert_eq!(
            self.c.diff(&self.dst, Some("s1")),
            [],
            "nothing was written to {}",
            self.dst
        );
        for key in [HOLDER_KEY, RECORD_KEY] {
            assert_eq!(self.c.meta(&self.dst, key), None, "{key} on {}", self.dst);
        }
    }
}

/// A "does not exist" error naming exactly this image and snapshot.
fn assert_not_found(err: &Error, image: &str, snap: Option<&str>) {
    assert_kind(err, ErrorKind::NotFound, libc::ENOENT);
    assert_eq!((err.image(), err.snap()), (Some(image), snap), "{err}");
    assert!(err.to_string().contains(image), "{err}");
}

#[test]
fn missing_source_pool() {
    let s = setup("bad-pool");
    let err = s.run("no-such-pool/img@s2", &s.dst, Some("s1"));
    assert_kind(&err, ErrorKind::NotFound, libc::ENOENT);
    assert!(err.to_string().contains("\"no-such-pool\""), "{err}");
    s.assert_untouched();
}

#[test]
fn missing_destination_pool() {
    let s = setup("bad-dpool");
    let err = s.run(&format!("{}@s2", s.src), "no-such-pool/copy", Some("s1"));
    assert_kind(&err, ErrorKind::NotFound, libc::ENOENT);
    assert!(err.to_string().contains("\"no-such-pool\""), "{err}");
    let err = s.run(&format!("{}@s2", s.src), "no-such-pool/copy", None);
    assert_eq!(
        (err.kind(), err.errno()),
        (ErrorKind::NotFound, libc::ENOENT),
        "a full transfer creates no pool: {err}"
    );
}

#[test]
fn missing_source_image() {
    let s = setup("bad-image");
    let err = s.run("rbd/no-such-image@s2", &s.dst, Some("s1"));
    assert_not_found(&err, "rbd/no-such-image", None);
    assert!(err.to_string().contains("rbd/no-such-image"), "{err}");
    s.assert_untouched();
}

#[test]
fn missing_end_snapshot() {
    let s = setup("bad-end");
    let err = s.run(&format!("{}@nope", s.src), &s.dst, Some("s1"));
    assert_not_found(&err, &s.src, Some("nope"));
    assert!(
        err.to_string().contains("nope") && err.to_string().contains(&s.src),
        "{err}"
    );
    s.assert_untouched();
}

#[test]
fn from_snap_missing_on_the_source() {
    let s = setup("bad-from-src");
    let err = s.run(&format!("{}@s2", s.src), &s.dst, Some("gone"));
    assert_not_found(&err, &s.src, Some("gone"));
    s.assert_untouched();
}

#[test]
fn from_snap_missing_on_the_destination() {
    let s = setup("bad-from-dst");
    let err = s.run(&format!("{}@s2", s.src), &s.dst, Some("s1b"));
    assert_not_found(&err, &s.dst, Some("s1b"));
    assert!(err.to_string().contains(&s.dst), "{err}");
    s.assert_untouched();
}

#[test]
fn end_snapshot_already_on_the_destination() {
    let s = setup("bad-exists");
    let err = s.run(&format!("{}@s1", s.src), &s.dst, None);
    assert_kind(&err, ErrorKind::Exists, libc::EEXIST);
    assert_eq!(
        (err.image(), err.snap()),
        (Some(s.dst.as_str()), Some("s1"))
    );
    s.assert_untouched();
}

#[test]
fn from_snap_newer_than_the_end_snapshot() {
    let s = setup("bad-order");
    let err = s.run(&format!("{}@s1b", s.src), &s.dst, Some("s2"));
    assert_kind(&err, ErrorKind::InvalidArgument, libc::EINVAL);
    assert_eq!(
        (err.image(), err.snap()),
        (Some(s.src.as_str()), Some("s2"))
    );
    s.assert_untouched();
}

#[test]
fn incremental_into_a_missing_destination_creates_nothing() {
    let s = setup("bad-missing-dst");
    let dst = s.c.new_image("backups", "never");
    let err = s.run(&format!("{}@s2", s.src), &dst, Some("s1"));
    assert_not_found(&err, &dst, None);
    assert!(!s.c.exists(&dst));
}

#[test]
fn malformed_image_specs() {
    let s = setup("bad-spec");
    for bad in [
        "",
        "rbd/",
        "/img",
        "rbd//img@s1",
        "rbd/img@",
        "rbd/img@a@b",
        "a/b/c/d",
        "rbd/im\0g@s1",
    ] {
        let err = ImageSpec::parse(bad).unwrap_err();
        assert_eq!(
            (err.kind(), err.errno()),
            (ErrorKind::InvalidArgument, libc::EINVAL),
            "{bad:?}: {err}"
        );
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "names the spec: {err}"
        );
    }
    // Through the command line: refused with a message, nothing written.
    for bad in ["rbd//x@s2", &format!("{}@s2@s3", s.src)] {
        let out = rbd_diffsync_tests::cli()
            .args(["sync", "-c"])
            .arg(&s.c.conf)
            .args(["--from-snap", "s1", bad, &s.dst])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("invalid image spec"), "{stderr}");
    }
    s.assert_untouched();
}

#[test]
fn destination_written_since_from_snap() {
    let s = setup("bad-changed");
    s.c.write(&s.dst, mib(3), 4096, 103);
    let err = s.run(&format!("{}@s2", s.src), &s.dst, Some("s1"));
    assert_eq!(
        (err.kind(), err.errno()),
        (
            ErrorKind::DestinationChanged,
            rbd_diffsync::error::CODE_DESTINATION_CHANGED
        ),
        "{err}"
    );
    assert_eq!(
        (err.image(), err.snap()),
        (Some(s.dst.as_str()), Some("s1"))
    );
    assert!(err.to_string().contains(&s.dst), "{err}");
    assert_eq!(s.c.snaps(&s.dst), ["s1"], "no snapshot was added");
    // Nothing but the foreign write: rbd diff reports nothing past its end.
    let diff = s.c.diff(&s.dst, Some("s1"));
    assert!(!diff.is_empty());
    assert!(
        diff.iter().all(|&(o, l, _)| o + l <= mib(3) + 4096),
        "{diff:?}"
    );
}

#[test]
fn destination_resized_since_from_snap() {
    let s = setup("bad-resized");
    s.c.rbd(&["resize", "--no-progress", "--size", "9M", &s.dst]);
    let err = s.run(&format!("{}@s2", s.src), &s.dst, Some("s1"));
    assert_eq!(err.kind(), ErrorKind::DestinationChanged, "{err}");
    assert_eq!(s.c.snaps(&s.dst), ["s1"]);
}
