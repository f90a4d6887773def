//! Verification on one live cluster: `DiffTransfer::verify` / `sync --verify`, and
//! `Verify` / `rbd-diffsync verify`, each checked against a known difference or
//! `rbd export | md5sum`.

use std::ops::ControlFlow;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use rbd_diffsync::error::CODE_MISMATCH;
use rbd_diffsync::{ErrorKind, Phase, Progress, Verify};
use rbd_diffsync_tests::{cli, cluster, json_exit, mib, pattern, stderr, TestCluster};

/// `rbd-diffsync SUBCOMMAND --no-progress -c CONF ARGS...`, CEPH_ARGS cleared.
fn command(c: &TestCluster, subcommand: &str, args: &[&str]) -> Output {
    cli()
        .env_remove("CEPH_ARGS")
        .args([subcommand, "--no-progress", "-c"])
        .arg(&c.conf)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("rbd-diffsync runs")
}

fn verify(c: &TestCluster, a: &str, b: &str) -> Verify {
    Verify::new(a.parse().unwrap(), b.parse().unwrap()).cluster(c.spec())
}

/// Writes at `offset` of `image` (HEAD) a byte other than `was`.
fn corrupt(c: &TestCluster, image: &str, offset: u64, was: u8) {
    c.open(image).write(offset, &[!was]).unwrap();
}

/// A 64 MiB source with data at 0..6 MiB and 40 MiB + 12345.., snapshot s1, and its full copy
/// `dst@s1` made with verification.
fn synced(name: &str) -> (TestCluster, String, String) {
    let c = cluster();
    let src = c.new_image("rbd", name);
    let dst = c.new_image("backups", name);
    c.create(&src, mib(64), None);
    c.write(&src, 0, mib(6) as usize, 1);
    c.write(&src, mib(40) + 12345, 300_000, 2);
    c.snap(&src, "s1");
    let stats = c
        .transfer(&format!("{src}@s1"), &dst, None)
        .verify(true)
        .run()
        .unwrap();
    // Into a new image, the transfer's ranges are the diff's.
    assert_eq!(
        stats.bytes_verified, stats.diff_bytes,
        "every range of the transfer is compared: {stats:?}"
    );
    assert!(stats.bytes_verified >= mib(6) + 300_000, "{stats:?}");
    (c, src, dst)
}

#[test]
fn verified_syncs_full_then_incremental_on_the_command_line() {
    let (c, src, dst) = synced("verified");
    c.write(&src, mib(20), 100_000, 3);
    c.open(&src).discard(0, mib(4)).unwrap();
    c.snap(&src, "s2");
    let out = command(
        &c,
        "sync",
        &[
            "--verify",
            "--json",
            "--from-snap",
            "s1",
            &format!("{src}@s2"),
            &dst,
        ],
    );
    let v = json_exit(&out, 0);
    assert!(
        v["bytes_verified"].as_u64().unwrap() >= mib(4) + 100_000,
        "{v}"
    );
    assert_eq!(v["end_snap"], "s2");
    assert_eq!(c.md5(&format!("{dst}@s2")), c.md5(&format!("{src}@s2")));

    c.write(&src, mib(50), 8192, 4);
    c.snap(&src, "s3");
    let out = cli()
        .args(["sync", "--verify", "-c"])
        .arg(&c.conf)
        .args(["--from-snap", "s2", &format!("{src}@s3"), &dst])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verified  "), "{text}");
    assert!(
        stderr(&out).contains("progress: verifying"),
        "{}",
        stderr(&out)
    );
    assert_eq!(c.snaps(&dst), ["s1", "s2", "s3"]);
}

#[test]
fn equal_images_verify_with_figures() {
    let (c, src, dst) = synced("equal");
    let phases = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let log = phases.clone();
    let stats = verify(&c, &format!("{src}@s1"), &format!("{dst}@s1"))
        .chunk_size(mib(1))
        .window(8)
        .on_progress(move |p| log.lock().unwrap().push(p.clone()))
        .run()
        .unwrap();
    assert_eq!(stats.image_size, mib(64));
    assert_eq!(stats.bytes_compared + stats.bytes_skipped, mib(64));
    // Whole objects (4 MiB) of what either image has allocated: 0..8 MiB and 40..44 MiB.
    assert_eq!(stats.bytes_compared, mib(12), "{stats:?}");
    let log = phases.lock().unwrap();
    let last = log.last().unwrap();
    assert_eq!(last.phase, Phase::Verifying);
    assert_eq!((last.bytes_done, last.bytes_total), (mib(12), mib(12)));

    let out = command(
        &c,
        "verify",
        &[
            "--format",
            "json",
            &format!("{src}@s1"),
            &format!("{dst}@s1"),
        ],
    );
    let v = json_exit(&out, 0);
    assert_eq!(v["equal"], true);
    assert_eq!(v["bytes_compared"], mib(12));
    assert_eq!(v["bytes_skipped"], mib(52));
    assert_eq!(v["source"], format!("{src}@s1"));
    assert_eq!(v["dest"], format!("{dst}@s1"));
    // The second image through a connection of its own, as on another cluster.
    let conf = c.conf.to_str().unwrap();
    let (a, b) = (format!("{src}@s1"), format!("{dst}@s1"));
    let args = ["--dest-conf", conf, "--dest-id", "admin", "--json", &a, &b];
    let out = command(&c, "verify", &args);
    assert_eq!(json_exit(&out, 0)["bytes_compared"], mib(12));
    let out = command(&c, "verify", &[&format!("{src}@s1"), &format!("{dst}@s1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("equal: {src}@s1 and {dst}@s1")),
        "{text}"
    );
    assert!(text.contains("compared  12.0 MiB"), "{text}");
}

#[test]
fn verify_names_the_first_differing_offset() {
    let (c, src, dst) = synced("differ");
    let data = pattern(1, mib(6) as usize);
    // In a range only the destination has allocated: read as zeros on the source.
    let zeros_at = mib(30) + 777;
    corrupt(&c, &dst, zeros_at, 0);
    c.snap(&dst, "bad1");
    // Then also before it, in the data, and after it.
    let data_at = mib(5) + 4095;
    corrupt(&c, &dst, data_at, data[data_at as usize]);
    corrupt(&c, &dst, mib(41), 0);
    c.snap(&dst, "bad2");
    let src_s1 = format!("{src}@s1");

    for (snap, first) in [("bad1", zeros_at), ("bad2", data_at)] {
        let err = verify(&c, &src_s1, &format!("{dst}@{snap}"))
            .chunk_size(65536)
            .run()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Mismatch, "{err}");
        assert_eq!(err.errno(), CODE_MISMATCH);
        assert_eq!(err.offset(), Some(first), "{err}");
        assert_eq!(err.image(), Some(dst.as_str()));

        let out = command(&c, "verify", &["--json", &src_s1, &format!("{dst}@{snap}")]);
        let v = json_exit(&out, 201);
        let e = &v["error"];
        assert_eq!(e["kind"], "mismatch", "{v}");
        assert_eq!(e["code"], "EMISMATCH", "{v}");
        assert_eq!(e["errno"], CODE_MISMATCH, "{v}");
        assert_eq!(e["offset"], first, "{v}");
        let message = format!("differ at offset {first}");
        assert!(e["message"].as_str().unwrap().contains(&message), "{v}");
        assert!(stderr(&out).contains(&message), "{}", stderr(&out));
    }
    // HEAD of the destination holds the same differences.
    let out = command(&c, "verify", &[&src_s1, &dst]);
    assert_eq!(out.status.code(), Some(201), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn images_of_different_sizes_differ() {
    let c = cluster();
    let a = c.new_image("rbd", "size-a");
    let b = c.new_image("backups", "size-b");
    c.create(&a, mib(16), None);
    c.create(&b, mib(32), None);
    let err = verify(&c, &a, &b).run().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch, "{err}");
    assert_eq!(err.offset(), Some(mib(16)));
    assert!(err.to_string().contains("sizes differ"), "{err}");
    let out = command(&c, "verify", &["--json", &a, &b]);
    let v = json_exit(&out, 201);
    assert_eq!(v["error"]["offset"], mib(16), "{v}");
    assert!(
        stderr(&out).contains(&format!("({} and {} bytes)", mib(16), mib(32))),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_snapshot_or_image_is_not_found() {
    let (c, src, dst) = synced("missing");
    let err = verify(&c, &format!("{src}@nope"), &format!("{dst}@s1"))
        .run()
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.errno(), err.snap()),
        (ErrorKind::NotFound, libc::ENOENT, Some("nope")),
        "{err}"
    );
    let out = command(
        &c,
        "verify",
        &["--json", &format!("{src}@s1"), "backups/none@s1"],
    );
    let v = json_exit(&out, 2);
    assert_eq!(v["error"]["kind"], "not_found", "{v}");
    assert_eq!(v["error"]["code"], "ENOENT", "{v}");
    assert_eq!(v["error"]["image"], "backups/none", "{v}");
}

#[test]
fn a_verification_stops_when_asked() {
    let (c, src, dst) = synced("stop");
    let err = verify(&c, &format!("{src}@s1"), &format!("{dst}@s1"))
        .on_progress(|p: &Progress| {
            if p.phase == Phase::Verifying {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .run()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(err.to_string().starts_with("verification of "), "{err}");
}

/// The destination changes under the transfer between its writes and its verification: it
/// has no exclusive-lock feature, so the transfer holds no lock another writer would respect,
/// and the progress callback, called as the verification starts, writes into it. The
/// transfer fails naming that offset, creates no end snapshot, and a rerun completes it.
#[test]
fn a_verified_sync_refuses_to_commit_a_destination_that_differs() {
    let c = cluster();
    let src = c.new_image("rbd", "commit");
    let dst = c.new_image("backups", "commit");
    c.create(&src, mib(32), None);
    c.write(&src, mib(1), mib(8) as usize, 5);
    c.snap(&src, "s1");
    let out = Command::new("rbd")
        .arg("-c")
        .arg(&c.conf)
        .args([
            "create",
            "--size",
            "32M",
            "--image-feature",
            "layering",
            &dst,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let at = mib(6) + 4321;
    let was = pattern(5, mib(8) as usize)[(at - mib(1)) as usize];
    let writer = c.clone();
    let target = dst.clone();
    let mut corrupted = false;
    let err = c
        .transfer(&format!("{src}@s1"), &dst, None)
        .verify(true)
        .on_progress(move |p: &Progress| {
            if p.phase == Phase::Verifying && !corrupted {
                corrupted = true;
                corrupt(&writer, &target, at, was);
            }
        })
        .run()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch, "{err}");
    assert_eq!(err.offset(), Some(at), "{err}");
    assert!(
        err.to_string().contains("no end snapshot was created"),
        "{err}"
    );
    assert!(c.snaps(&dst).is_empty(), "no end snapshot");

    let stats = c.sync_and_check(&format!("{src}@s1"), &dst, None);
    assert!(stats.continued_interrupted, "{stats:?}");
    assert_eq!(c.snaps(&dst), ["s1"]);
}
