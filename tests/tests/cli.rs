//! The `rbd-diffsync sync` command line against the live cluster.

use rbd_diffsync_tests::{cli, cluster, mib};

#[test]
fn sync_full_then_incremental_with_json_stats() {
    let c = cluster();
    let src = c.new_image("rbd", "cli");
    let dst = c.new_image("backups", "cli");
    c.create(&src, mib(16), None);
    c.write(&src, 0, mib(3) as usize, 110);
    c.snap(&src, "s1");
    let out = cli()
        .args(["sync", "-c"])
        .arg(&c.conf)
        .args([&format!("{src}@s1"), &dst])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("written   3.0 MiB"), "{text}");
    assert!(text.contains(&format!("snapshot  {dst}@s1")), "{text}");

    c.write(&src, mib(8), 65536, 111);
    c.snap(&src, "s2");
    let out = cli()
        .args(["sync", "--json", "--conf"])
        .arg(&c.conf)
        .args([
            "--id",
            "admin",
            "--from-snap",
            "s1",
            &format!("{src}@s2"),
            &dst,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["bytes_written"], 65536);
    assert_eq!(v["end_snap"], "s2");
    assert_eq!(v["from_snap"], "s1");
    assert_eq!(v["created_destination"], false);
    assert_eq!(c.md5(&format!("{dst}@s2")), c.md5(&format!("{src}@s2")));
}

#[test]
fn failures_exit_non_zero_and_name_the_problem() {
    let c = cluster();
    let src = c.new_image("rbd", "clifail");
    c.create(&src, mib(4), None);
    c.snap(&src, "s1");
    let dst = c.new_image("backups", "clifail");
    let out = cli()
        .args(["sync", "-c"])
        .arg(&c.conf)
        .args(["--from-snap", "s0", &format!("{src}@s1"), &dst])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"s0\"") && stderr.contains(&src),
        "{stderr}"
    );
    assert!(!c.exists(&dst));

    let out = cli()
        .args(["sync", "--window", "0", "-c"])
        .arg(&c.conf)
        .args([&format!("{src}@s1"), &dst])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("window"));
    assert!(!c.exists(&dst));
}
