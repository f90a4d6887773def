//! Faults and bad credentials: each gives its own clear error within its time, no end
//! snapshot, no key material in any message, and a rerun that resumes once the fault is gone.
//!
//! The tests that stop the cluster's OSD are `#[ignore]`d: they would stall every other test
//! running beside them. `scripts/test.sh` runs them alone afterwards
//! (`cargo test --test faults -- --ignored --test-threads 1`).

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rbd_diffsync_tests::{assert_kind, cli, cluster, mib, rbd_diffsync, unique, TestCluster};

use rbd_diffsync::internals::RECORD_KEY;
use rbd_diffsync::{ClusterSpec, DiffTransfer, ErrorKind, Phase};

/// A source image of `size` with data in its first `data` bytes, at snapshot s1.
fn source(c: &TestCluster, name: &str, size: u64, data: u64) -> String {
    let src = c.new_image("rbd", name);
    c.create(&src, size, None);
    c.write(&src, 0, data as usize, 7);
    c.snap(&src, "s1");
    src
}

/// A keyring for `client.diffsync` holding a well-formed key that is not its key.
fn wrong_keyring(c: &TestCluster) -> (std::path::PathBuf, &'static str) {
    const KEY: &str = "AQBnpSxlAAAAABAAk1yQ8Z6ZpQ7B5xL5nF5Zxw==";
    let path = std::env::temp_dir().join(format!("{}.keyring", unique("wrong")));
    std::fs::write(&path, format!("[client.diffsync]\n\tkey = {KEY}\n")).unwrap();
    assert!(c.conf.is_file());
    (path, KEY)
}

#[test]
fn a_wrong_key_or_an_unknown_client_is_refused_as_such_within_seconds() {
    let c = cluster();
    let src = source(&c, "badkey", mib(4), mib(1));
    let dst = c.new_image("backups", "badkey");
    let (keyring, key) = wrong_keyring(&c);
    let specs = [
        ("client.diffsync", c.spec().id("diffsync").keyring(&keyring)),
        ("client.nobody", c.spec().id("nobody")),
    ];
    for (client, spec) in specs {
        let started = Instant::now();
        // librados alone would retry until this timeout and then say ETIMEDOUT.
        let err = DiffTransfer::new(format!("{src}@s1").parse().unwrap(), dst.parse().unwrap())
            .cluster(spec.connect_timeout(Duration::from_secs(60)))
            .run()
            .unwrap_err();
        assert_kind(&err, ErrorKind::PermissionDenied, libc::EACCES);
        let message = err.to_string();
        assert!(message.contains(client), "names the client: {message}");
        assert!(message.contains("refuse its key"), "{message}");
        assert!(!message.contains(key), "no key material: {message}");
        eprintln!("{client}: refused after {:?}", started.elapsed());
    }
    // The command line's JSON error says the same, without the key either.
    let out = cli()
        .args(["sync", "--json", "--no-progress", "-c"])
        .arg(&c.conf)
        .args(["--id", "diffsync", "-k"])
        .arg(&keyring)
        .args([&format!("{src}@s1"), &dst])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(libc::EACCES));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["kind"], "permission_denied", "{all}");
    assert!(!all.contains(key), "no key material: {all}");
    assert!(!c.exists(&dst));
    std::fs::remove_file(keyring).unwrap();
}

#[test]
fn a_monitor_that_does_not_answer_times_out_within_the_connect_timeout() {
    let c = cluster();
    // Nothing listens there: librados hunts for a monitor until the timeout.
    let err = DiffTransfer::new("rbd/x@s1".parse().unwrap(), "backups/x".parse().unwrap())
        .cluster(
            c.spec()
                .mon_host("127.0.0.1:1")
                .connect_timeout(Duration::from_secs(3)),
        )
        .run()
        .unwrap_err();
    assert_kind(&err, ErrorKind::Timeout, libc::ETIMEDOUT);
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    // The connect timeout given ended it (not librados' own 300 s).
    assert!(
        err.to_string()
            .contains("did not answer within the connect timeout (3 s)"),
        "{err}"
    );
}

#[test]
fn a_client_that_may_not_write_the_destination_pool_gets_a_permission_error() {
    let c = cluster();
    let src = source(&c, "nowrite", mib(8), mib(2));
    let dst = c.new_image("backups", "nowrite");
    let keyring = c.conf.with_file_name("client.rbd-readonly.keyring");
    let key = c.ceph(&[
        "auth",
        "get-or-create",
        "client.rbd-readonly",
        "mon",
        "profile rbd",
        "osd",
        "profile rbd pool=rbd, profile rbd-read-only pool=backups",
    ]);
    std::fs::write(&keyring, &key).unwrap();
    let spec = ClusterSpec::new()
        .conf(&c.conf)
        .id("rbd-readonly")
        .keyring(&keyring);
    let err = DiffTransfer::new(format!("{src}@s1").parse().unwrap(), dst.parse().unwrap())
        .cluster(spec)
        .run()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!([libc::EPERM, libc::EACCES].contains(&err.errno()), "{err}");
    assert!(err.to_string().contains(&dst), "names the image: {err}");
    assert!(!c.exists(&dst), "nothing written");
}

#[test]
fn a_pool_quota_reached_mid_transfer_fails_naming_the_pool_and_the_rerun_resumes() {
    let c = cluster();
    let src = source(&c, "quota", mib(128), mib(96));
    let pool = c.pool_with_quota(mib(24));
    let dst = format!("{pool}/{}", unique("quota"));
    let transfer = || {
        DiffTransfer::new(format!("{src}@s1").parse().unwrap(), dst.parse().unwrap())
            .cluster(c.spec().op_timeout(Duration::from_secs(5)))
            .window(1)
            .chunk_size(256 << 10)
    };
    // Slowed down (the callback runs on the copying thread), so that the monitors mark the
    // pool full while it copies: they learn the pool's usage every few seconds.
    let err = transfer()
        .progress_interval(Duration::ZERO)
        .on_progress(|p| {
            if p.phase == Phase::Copying {
                std::thread::sleep(Duration::from_millis(40));
            }
        })
        .run()
        .unwrap_err();
    assert_kind(&err, ErrorKind::NoSpace, libc::EDQUOT);
    let message = err.to_string();
    assert!(
        message.contains(&format!("pool {pool} has reached its quota")),
        "{message}"
    );
    assert_eq!(err.image(), Some(dst.as_str()), "{message}");
    assert!(c.snaps(&dst).is_empty(), "no end snapshot");
    c.ceph(&["osd", "pool", "set-quota", &pool, "max_bytes", "0"]);
    // The monitors lift the full flag with the next map.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        match transfer().run() {
            Ok(stats) => break stats,
            Err(e) if e.kind() == ErrorKind::NoSpace && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(1))
            }
            Err(e) => panic!("rerun after the quota was raised: {e}"),
        }
    };
    assert!(stats.continued_interrupted, "{stats:?}");
    assert!(stats.bytes_resumed > 0, "{stats:?}");
    c.assert_same(&format!("{src}@s1"), &format!("{dst}@s1"));
    assert_eq!(c.meta(&dst, RECORD_KEY), None);
}

/// Stops the cluster's OSD once a transfer has copied `at` of its work, for `pause`.
fn pause_osd_while_copying(
    c: &TestCluster,
    at: f64,
    pause: Duration,
) -> impl FnMut(&rbd_diffsync::Progress) + Send + 'static {
    let pid = c.osd_pid();
    let mut paused = false;
    move |p| {
        if !paused && p.phase == Phase::Copying && p.bytes_done as f64 >= at * p.bytes_total as f64
        {
            paused = true;
            // SAFETY: signals to the test cluster's own OSD process.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
            std::thread::spawn(move || {
                std::thread::sleep(pause);
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            });
        }
    }
}

#[test]
#[ignore = "stops the cluster's only OSD: run alone, as scripts/test.sh does"]
fn an_osd_paused_for_seconds_is_waited_for() {
    let c = cluster();
    let src = source(&c, "osd-pause", mib(64), mib(48));
    let dst = c.new_image("backups", "osd-pause");
    let stats = DiffTransfer::new(format!("{src}@s1").parse().unwrap(), dst.parse().unwrap())
        .cluster(c.spec().op_timeout(Duration::from_secs(20)))
        .window(2)
        .chunk_size(1 << 20)
        .on_progress(pause_osd_while_copying(&c, 0.3, Duration::from_secs(3)))
        .run()
        .expect("a pause shorter than the timeout is waited for");
    assert!(stats.elapsed >= Duration::from_secs(3), "{stats:?}");
    c.assert_same(&format!("{src}@s1"), &format!("{dst}@s1"));
}

#[test]
#[ignore = "stops the cluster's only OSD: run alone, as scripts/test.sh does"]
fn an_osd_stopped_past_the_op_timeout_fails_with_a_timeout_and_the_rerun_resumes() {
    let c = cluster();
    let src = source(&c, "osd-stop", mib(64), mib(48));
    let dst = c.new_image("backups", "osd-stop");
    let transfer = || {
        DiffTransfer::new(format!("{src}@s1").parse().unwrap(), dst.parse().unwrap())
            .cluster(c.spec().op_timeout(Duration::from_secs(4)))
            .window(1)
            .chunk_size(256 << 10)
    };
    // Stopped once a checkpoint is likely (the copy runs for seconds), for longer than the
    // timeout; the callback also reports when the copy started failing.
    let (failed_tx, failed) = mpsc::channel();
    let mut pause = pause_osd_while_copying(&c, 0.5, Duration::from_secs(12));
    let started = Instant::now();
    let err = transfer()
        .on_progress(move |p| {
            pause(p);
            if p.waiting_for.is_some() {
                let _ = failed_tx.send(());
            }
            ControlFlow::<()>::Continue(())
        })
        .run()
        .unwrap_err();
    // A timeout, so it came while the OSD was stopped: once the OSD is back, its requests
    // are answered and the transfer would complete.
    assert_kind(&err, ErrorKind::Timeout, libc::ETIMEDOUT);
    // The source and the destination share the stopped OSD: either may time out first.
    let image = err.image().unwrap_or_default().to_owned();
    assert!(image == dst || image == src, "names the image: {err}");
    assert!(
        err.to_string().contains("resumes"),
        "says what to do: {err}"
    );
    assert!(
        failed.try_recv().is_ok(),
        "progress said what it waited for while it waited"
    );
    // The OSD is back after its pause.
    std::thread::sleep(Duration::from_secs(13).saturating_sub(started.elapsed()));
    assert!(c.snaps(&dst).is_empty(), "no end snapshot");
    let stats = transfer().run().expect("the rerun completes");
    assert!(
        stats.continued_interrupted && stats.bytes_resumed > 0,
        "{stats:?}"
    );
    c.assert_same(&format!("{src}@s1"), &format!("{dst}@s1"));
}
