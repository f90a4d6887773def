//! `SyncMany` and `rbd-diffsync sync-many` against the live cluster: many volumes at once,
//! one failing without stopping the others, and the rate limit.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rbd_diffsync::{DiffTransfer, ErrorKind, SyncMany, VolumeState};
use rbd_diffsync_tests::{assert_kind, cli, cluster, json_exit, mib, stderr, TestCluster};

/// `n` source images of 8 MiB with data at s1 and more at s2; their destination names.
fn volumes(c: &TestCluster, n: u64, seed: u64) -> Vec<(String, String)> {
    (0..n)
        .map(|k| {
            let src = c.new_image("rbd", "many");
            let dst = c.new_image("backups", "many");
            c.create(&src, mib(8), None);
            c.write(&src, k * 65536, mib(2) as usize, seed + k);
            c.snap(&src, "s1");
            c.write(&src, mib(5) + k * 4096, 200_000, seed + 100 + k);
            c.snap(&src, "s2");
            (src, dst)
        })
        .collect()
}

/// `rbd-diffsync sync-many --json --no-progress -c CONF ARGS -`, `job` on its stdin.
fn sync_many(c: &TestCluster, args: &[&str], job: &str) -> Output {
    let mut child = cli()
        .env_remove("CEPH_ARGS")
        .args(["sync-many", "--json", "--no-progress", "-c"])
        .arg(&c.conf)
        .args(args)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn many_volumes_full_then_incremental_give_identical_copies_verified() {
    let c = cluster();
    let vols = volumes(&c, 4, 900);
    let full: Vec<DiffTransfer> = vols
        .iter()
        .map(|(src, dst)| c.transfer(&format!("{src}@s1"), dst, None).verify(true))
        .collect();
    let mut seen = Vec::new();
    let results = SyncMany::new(full)
        .parallel(3)
        .memory_budget(mib(4) as usize)
        .progress_interval(Duration::from_millis(20))
        .on_progress(move |p| seen.push((p.running, p.volumes.len())))
        .run();
    for r in &results {
        let stats = r.as_ref().expect("full synced");
        // Into a new image, every range of the diff is compared.
        assert_eq!(stats.bytes_verified, stats.diff_bytes, "{stats:?}");
        assert!(stats.bytes_verified >= mib(2), "{stats:?}");
    }
    // The incrementals on the command line: the first two with a job line that asks for
    // verification and one that does not, the last two with --verify, within a budget of
    // 4 MiB that each verification's two 1 MiB chunks (of both images) fill.
    let line = |(src, dst): &(String, String)| format!("{src}@s2 {dst} s1\n");
    let (src, dst) = &vols[0];
    let job = format!(
        "{{\"source\": \"{src}@s2\", \"dest\": \"{dst}\", \"from_snap\": \"s1\", \
         \"verify\": true}}\n{}",
        line(&vols[1])
    );
    let out = sync_many(&c, &["--parallel", "2"], &job);
    let first = json_exit(&out, 0);
    let job = format!("{}{}", line(&vols[2]), line(&vols[3]));
    let args = [
        "--verify",
        "--parallel",
        "2",
        "--chunk-size",
        "1M",
        "--window",
        "4",
    ];
    let out = sync_many(&c, &args, &job);
    let second = json_exit(&out, 0);
    let volumes: Vec<&serde_json::Value> = [&first, &second]
        .iter()
        .flat_map(|v| v["volumes"].as_array().unwrap())
        .collect();
    let verified: Vec<u64> = volumes
        .iter()
        .map(|vol| vol["stats"]["bytes_verified"].as_u64().unwrap())
        .collect();
    assert_eq!(verified[1], 0, "not asked: {first}");
    for k in [0, 2, 3] {
        // What the incremental wrote: the 200 000 bytes written since s1.
        let diff = volumes[k]["stats"]["diff_bytes"].as_u64().unwrap();
        assert_eq!(verified[k], diff, "{first} {second}");
        assert!(verified[k] >= 200_000, "{first} {second}");
    }
    assert_eq!(
        second["bytes_verified"].as_u64(),
        Some(verified[2] + verified[3])
    );
    for ((src, dst), vol) in vols.iter().zip(volumes) {
        assert_eq!(vol["stats"]["from_snap"], "s1");
        assert_eq!(c.snaps(dst), ["s1", "s2"]);
        for snap in ["s1", "s2"] {
            assert_eq!(
                c.md5(&format!("{dst}@{snap}")),
                c.md5(&format!("{src}@{snap}")),
                "{dst}@{snap}"
            );
        }
    }
}

#[test]
fn one_failing_volume_does_not_stop_the_others() {
    let c = cluster();
    let vols = volumes(&c, 3, 950);
    // The second: its destination exists and holds data (EEXIST without force); the third:
    // its source snapshot is missing (ENOENT).
    c.create(&vols[1].1, mib(8), None);
    c.write(&vols[1].1, 0, 4096, 1);
    let transfers = vec![
        c.transfer(&format!("{}@s1", vols[0].0), &vols[0].1, None),
        c.transfer(&format!("{}@s1", vols[1].0), &vols[1].1, None),
        c.transfer(&format!("{}@nosuch", vols[2].0), &vols[2].1, None),
    ];
    let states = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = states.clone();
    let results = SyncMany::new(transfers)
        .on_progress(move |p| {
            *seen.lock().unwrap() = p.volumes.iter().map(|v| v.state).collect();
        })
        .run();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert_eq!(
        c.md5(&format!("{}@s1", vols[0].1)),
        c.md5(&format!("{}@s1", vols[0].0))
    );
    let e = results[1].as_ref().unwrap_err();
    assert_kind(e, ErrorKind::Exists, libc::EEXIST);
    let e = results[2].as_ref().unwrap_err();
    assert_kind(e, ErrorKind::NotFound, libc::ENOENT);
    assert_eq!(e.snap(), Some("nosuch"));
    assert!(!c.exists(&vols[2].1));
    assert_eq!(
        *states.lock().unwrap(),
        [
            VolumeState::Succeeded,
            VolumeState::Failed,
            VolumeState::Failed
        ]
    );

    // The command line says the same: which volume failed, its errno, exit status of the
    // first failure.
    let dst = c.new_image("backups", "many");
    let job = format!(
        "# a job\n{src}@s2 {dst}\n{{\"source\": \"{src}@nosuch\", \"dest\": \"{other}\"}}\n",
        src = vols[2].0,
        other = c.new_image("backups", "many"),
    );
    let out = sync_many(&c, &["--parallel", "2"], &job);
    let v = json_exit(&out, libc::ENOENT);
    assert_eq!(
        (v["succeeded"].as_u64(), v["failed"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let vols_json = v["volumes"].as_array().unwrap();
    assert_eq!(vols_json[0]["ok"], true);
    assert_eq!(vols_json[0]["stats"]["end_snap"], "s2");
    let e = &vols_json[1]["error"];
    assert_eq!(vols_json[1]["ok"], false);
    assert_eq!(
        (e["errno"].as_i64(), e["code"].as_str()),
        (Some(2), Some("ENOENT")),
        "{v}"
    );
    assert_eq!(e["snap"], "nosuch");
    assert!(stderr(&out).is_empty() || !stderr(&out).contains("panicked"));
    assert_eq!(
        c.md5(&format!("{dst}@s2")),
        c.md5(&format!("{}@s2", vols[2].0))
    );
}

#[test]
fn one_image_named_with_and_without_its_default_pool_is_one_destination() {
    let c = cluster();
    let vols = volumes(&c, 2, 1200);
    // `rbd/NAME` and `NAME`: the same image, rbd being the cluster's default pool.
    let dst = c.new_image("rbd", "many-twice");
    let bare = dst.strip_prefix("rbd/").unwrap();
    let job = format!("{}@s1 {dst}\n{}@s1 {bare}\n", vols[0].0, vols[1].0);
    let out = sync_many(&c, &[], &job);
    let v = json_exit(&out, libc::EINVAL);
    let volumes = v["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["ok"], true, "{v}");
    let e = &volumes[1]["error"];
    assert_eq!(
        (e["kind"].as_str(), e["errno"].as_i64()),
        (Some("invalid_argument"), Some(22)),
        "{v}"
    );
    assert_eq!(
        e["message"].as_str(),
        Some(&*format!(
            "the destination {bare} is that of transfer 1 of the batch too"
        )),
        "{v}"
    );
    assert_eq!(c.snaps(&dst), ["s1"]);
    assert_eq!(
        c.md5(&format!("{dst}@s1")),
        c.md5(&format!("{}@s1", vols[0].0)),
        "the first one's copy, not the second's"
    );

    // With another default pool, the bare name is another image: both are synced.
    let dst = c.new_image("rbd", "many-twice");
    let bare = dst.strip_prefix("rbd/").unwrap();
    let job = format!("{}@s1 {dst}\n{}@s1 {bare}\n", vols[0].0, vols[1].0);
    let out = sync_many(&c, &["-o", "rbd_default_pool=backups"], &job);
    let v = json_exit(&out, 0);
    assert_eq!(
        v["volumes"][1]["stats"]["dest"],
        format!("backups/{bare}"),
        "{v}"
    );
    for (src, dst) in [
        (&vols[0].0, dst.clone()),
        (&vols[1].0, format!("backups/{bare}")),
    ] {
        assert_eq!(
            c.md5(&format!("{dst}@s1")),
            c.md5(&format!("{src}@s1")),
            "{dst}"
        );
    }
}

#[test]
fn a_rate_limited_sync_takes_at_least_its_time() {
    let c = cluster();
    let src = c.new_image("rbd", "many-rate");
    let dst = c.new_image("backups", "many-rate");
    c.create(&src, mib(8), None);
    c.write(&src, 0, mib(4) as usize, 990);
    c.snap(&src, "s1");
    // 4 MiB copied, then read again by the verification, at 2 MiB/s: the last 2 MiB chunk of
    // the source may not be read before 3 s (6 MiB, less the 100 KiB burst, at the rate),
    // whatever else is slow.
    let started = Instant::now();
    let out = cli()
        .env_remove("CEPH_ARGS")
        .args([
            "sync",
            "--json",
            "--no-progress",
            "--verify",
            "--max-rate",
            "2M",
            "-c",
        ])
        .arg(&c.conf)
        .args([&format!("{src}@s1"), &dst])
        .output()
        .unwrap();
    let took = started.elapsed();
    let v = json_exit(&out, 0);
    assert_eq!(v["bytes_verified"].as_u64(), Some(mib(4)), "{v}");
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    assert_eq!(c.md5(&format!("{dst}@s1")), c.md5(&format!("{src}@s1")));
}

#[test]
fn a_cancelled_batch_is_completed_by_running_it_again() {
    let c = cluster();
    let vols: Vec<(String, String)> = (0..4u64)
        .map(|k| {
            let src = c.new_image("rbd", "many-rerun");
            c.create(&src, mib(16), None);
            c.write(&src, 0, mib(6) as usize, 1000 + k);
            c.write(&src, mib(10) + k * 4096, mib(3) as usize, 1100 + k);
            c.snap(&src, "s1");
            (src, c.new_image("backups", "many-rerun"))
        })
        .collect();
    let batch = || -> Vec<DiffTransfer> {
        vols.iter()
            .map(|(src, dst)| {
                c.transfer(&format!("{src}@s1"), dst, None)
                    .chunk_size(mib(1))
            })
            .collect()
    };
    // Slowed down by the rate limit, and cancelled once a third of it is copied.
    let token = rbd_diffsync::CancelToken::new();
    let cancel = token.clone();
    let first = SyncMany::new(batch())
        .parallel(2)
        .rate_limit(mib(12))
        .cancel_token(token)
        .progress_interval(Duration::from_millis(10))
        .on_progress(move |p| {
            if p.bytes_total > 0 && p.bytes_done * 3 >= mib(36) {
                cancel.cancel();
            }
        })
        .run();
    let cancelled = first
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Cancelled))
        .count();
    assert!(cancelled >= 2, "{first:?}");
    for ((_, dst), r) in vols.iter().zip(&first) {
        match r {
            Ok(_) => assert_eq!(c.snaps(dst), ["s1"]),
            Err(e) => {
                assert_eq!(
                    (e.errno(), e.image()),
                    (libc::ECANCELED, Some(dst.as_str()))
                );
                assert!(
                    !c.exists(dst) || c.snaps(dst).is_empty(),
                    "{dst}: no end snapshot"
                );
            }
        }
    }

    // The same batch again: what was cancelled completes (continuing what it wrote); what was
    // done says so.
    let second = SyncMany::new(batch()).parallel(2).run();
    assert!(
        second
            .iter()
            .any(|r| r.as_ref().is_ok_and(|s| s.continued_interrupted)),
        "{second:?}"
    );
    for (((src, dst), before), after) in vols.iter().zip(&first).zip(&second) {
        match (before, after) {
            (Ok(_), Err(e)) => assert_eq!((e.kind(), e.errno()), (ErrorKind::Exists, libc::EEXIST)),
            (Err(_), Ok(_)) => {}
            _ => panic!("{dst}: {before:?} then {after:?}"),
        }
        assert_eq!(c.snaps(dst), ["s1"]);
        assert_eq!(
            c.md5(&format!("{dst}@s1")),
            c.md5(&format!("{src}@s1")),
            "{dst}"
        );
    }
}
