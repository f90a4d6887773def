//! Chains mixing our transfers with `rbd export-diff | rbd import-diff`: each must continue
//! the other's work exactly.

use rbd_diffsync_tests::{cluster, mib};

fn source_with_two_snapshots(name: &str) -> String {
    let c = cluster();
    let src = c.new_image("rbd", name);
    c.create(&src, mib(40), None);
    c.write(&src, 0, mib(6) as usize, 90);
    c.write(&src, mib(20) + 511, 70_000, 91);
    c.snap(&src, "s1");
    c.write(&src, mib(3), mib(2) as usize, 92);
    c.open(&src).discard(mib(20), mib(4)).unwrap();
    c.open(&src).write(mib(30), &vec![0u8; 1 << 20]).unwrap();
    c.rbd(&["resize", "--no-progress", "--size", "44M", &src]);
    c.write(&src, mib(42), 4096, 93);
    c.snap(&src, "s2");
    src
}

#[test]
fn our_full_then_the_pipes_incremental() {
    let c = cluster();
    let src = source_with_two_snapshots("ours-then-pipe");
    let dst = c.new_image("backups", "ours-then-pipe");
    c.sync_and_check(&format!("{src}@s1"), &dst, None);
    c.pipe(&format!("{src}@s2"), &dst, Some("s1"));
    assert_eq!(c.md5(&format!("{dst}@s2")), c.md5(&format!("{src}@s2")));
    assert_eq!(c.snaps(&dst), ["s1", "s2"]);
}

#[test]
fn the_pipes_full_then_our_incremental() {
    let c = cluster();
    let src = source_with_two_snapshots("pipe-then-ours");
    let dst = c.new_image("backups", "pipe-then-ours");
    // As cinder does: create the base image, then import the full diff into it.
    c.create(&dst, mib(40), None);
    c.pipe(&format!("{src}@s1"), &dst, None);
    assert_eq!(c.md5(&format!("{dst}@s1")), c.md5(&format!("{src}@s1")));
    c.sync_and_check(&format!("{src}@s2"), &dst, Some("s1"));
    assert_eq!(c.snaps(&dst), ["s1", "s2"]);
}

#[test]
fn same_result_as_the_pipe_on_the_same_chain() {
    let c = cluster();
    let src = source_with_two_snapshots("both");
    let ours = c.new_image("backups", "both-ours");
    let pipe = c.new_image("backups", "both-pipe");
    c.sync_and_check(&format!("{src}@s1"), &ours, None);
    c.sync_and_check(&format!("{src}@s2"), &ours, Some("s1"));
    c.create(&pipe, mib(40), None);
    c.pipe(&format!("{src}@s1"), &pipe, None);
    c.pipe(&format!("{src}@s2"), &pipe, Some("s1"));
    for snap in ["s1", "s2"] {
        assert_eq!(
            c.md5(&format!("{ours}@{snap}")),
            c.md5(&format!("{pipe}@{snap}")),
            "{snap}"
        );
    }
    assert_eq!(c.snaps(&ours), c.snaps(&pipe));
}
