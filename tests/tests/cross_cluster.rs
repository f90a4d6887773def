//! Source and destination on two clusters, as different clients.

use rbd_diffsync_tests::{cluster, cluster2, mib, rbd_diffsync};

use rbd_diffsync::DiffTransfer;

#[test]
fn full_and_incremental_across_clusters_with_different_clients() {
    let (a, b) = (cluster(), cluster2());
    let src = a.new_image("rbd", "xsrc");
    let dst = b.new_image("backups", "xdst");
    a.create(&src, mib(48), None);
    a.write(&src, mib(1), mib(9) as usize, 80);
    a.snap(&src, "s1");
    let run = |snap: &str, from: Option<&str>| {
        let mut t = DiffTransfer::new(
            format!("{src}@{snap}").parse().unwrap(),
            dst.parse().unwrap(),
        )
        .cluster(a.spec())
        .dest_cluster(b.restricted_spec());
        if let Some(from) = from {
            t = t.from_snap(from);
        }
        t.run().unwrap_or_else(|e| panic!("{snap}: {e}"))
    };
    let full = run("s1", None);
    assert!(full.created_destination);
    assert!(!a.exists(&dst), "nothing is created on the source cluster");
    assert_eq!(b.md5(&format!("{dst}@s1")), a.md5(&format!("{src}@s1")));

    a.write(&src, mib(30), 123_457, 81);
    a.open(&src).discard(mib(4), mib(4)).unwrap();
    a.snap(&src, "s2");
    run("s2", Some("s1"));
    assert_eq!(b.md5(&format!("{dst}@s2")), a.md5(&format!("{src}@s2")));
    assert_eq!(b.snaps(&dst), ["s1", "s2"]);
}

#[test]
fn a_wrong_keyring_is_refused_before_anything_is_written() {
    let (a, b) = (cluster(), cluster2());
    let src = a.new_image("rbd", "xkey");
    let dst = b.new_image("backups", "xkey");
    a.create(&src, mib(4), None);
    a.snap(&src, "s1");
    // cluster A's admin keyring is no key of cluster B's.
    let wrong = b
        .spec()
        .keyring(a.conf.with_file_name("client.admin.keyring"))
        .connect_timeout(std::time::Duration::from_secs(30));
    let err = DiffTransfer::new(format!("{src}@s1").parse().unwrap(), dst.parse().unwrap())
        .cluster(a.spec())
        .dest_cluster(wrong)
        .run()
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.errno()),
        (rbd_diffsync::ErrorKind::PermissionDenied, libc::EACCES),
        "a refused key, not a timeout: {err}"
    );
    assert!(
        err.to_string().contains(&b.conf.display().to_string()),
        "names the cluster: {err}"
    );
    assert!(!b.exists(&dst));
}
