//! The command line killed (SIGKILL) at several points of a transfer, then run again: the end
//! snapshot never exists after a kill unless the destination is complete, and the rerun, with
//! the same or a later end snapshot, completes it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};

use rbd_diffsync_tests::{chain, cli, cluster, mib, Chain, TestCluster};

fn copying(fraction: f64) -> impl Fn(&serde_json::Value) -> bool {
    move |p| {
        let (done, total) = (p["bytes_done"].as_u64(), p["bytes_total"].as_u64());
        p["phase"] == "copying"
            && total.is_some_and(|t| t > 0 && done.unwrap_or(0) as f64 >= fraction * t as f64)
    }
}

fn phase(name: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |p| p["phase"] == name
}

/// `rbd-diffsync sync` slowed down (one 64 KiB request at a time), with a JSON progress line
/// every 20 ms on stderr.
fn sync_args(c: &TestCluster, source: &str, dest: &str, from: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "sync".to_owned(),
        "-c".to_owned(),
        c.conf.display().to_string(),
        "--format".to_owned(),
        "json".to_owned(),
        "--progress-interval".to_owned(),
        "0.02".to_owned(),
        "--window".to_owned(),
        "1".to_owned(),
        "--chunk-size".to_owned(),
        "64K".to_owned(),
    ];
    if let Some(from) = from {
        args.extend(["--from-snap".to_owned(), from.to_owned()]);
    }
    args.extend([source.to_owned(), dest.to_owned()]);
    args
}

/// Runs the command line and SIGKILLs it at the first progress report `at` accepts; fails if
/// it ended before.
fn kill_at(args: &[String], at: impl Fn(&serde_json::Value) -> bool) {
    let mut child = cli()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let Ok(report) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if at(&report) {
            child.kill().unwrap();
            break;
        }
        seen.push(line);
    }
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the point was not reached before the end ({status}); seen: {seen:?}"
    );
}

/// Runs the command line to its end.
fn rerun(args: &[String]) -> (serde_json::Value, String) {
    let out: Output = cli().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "rerun failed: {stderr}");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr)
}

fn source(ch: &Chain, snap: &str) -> String {
    format!("{}@{snap}", ch.src)
}

/// A rerun after a kill under the lock waits for the dead client's lock and says so.
fn assert_waited_for_the_lock(stderr: &str) {
    assert!(
        stderr.contains("left by an interrupted transfer"),
        "the rerun says what it waits for: {stderr}"
    );
}

#[test]
fn killed_in_the_scan_then_in_the_copy_then_rerun_with_the_same_end() {
    let ch = chain("kill-same");
    let args = sync_args(&ch.c, &source(&ch, "s2"), &ch.dst, Some("s1"));
    kill_at(&args, phase("scanning"));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    kill_at(&args, copying(0.3));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    let (stats, stderr) = rerun(&args);
    assert_eq!(stats["continued_interrupted"], true, "{stats}");
    assert_waited_for_the_lock(&stderr);
    ch.c.assert_same(&source(&ch, "s2"), &format!("{}@s2", ch.dst));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1", "s2"]);
}

#[test]
fn killed_in_the_copy_then_rerun_with_a_later_end_that_zeroes_what_it_wrote() {
    let ch = chain("kill-later");
    let args = sync_args(&ch.c, &source(&ch, "s2"), &ch.dst, Some("s1"));
    kill_at(&args, copying(0.7));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    let later = sync_args(&ch.c, &source(&ch, "s3"), &ch.dst, Some("s1"));
    let (stats, stderr) = rerun(&later);
    assert_eq!(stats["continued_interrupted"], true, "{stats}");
    assert_waited_for_the_lock(&stderr);
    ch.c.assert_same(&source(&ch, "s3"), &format!("{}@s3", ch.dst));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1", "s3"]);
}

#[test]
fn killed_while_committing_leaves_a_complete_snapshot_or_none() {
    let ch = chain("kill-commit");
    let args = sync_args(&ch.c, &source(&ch, "s2"), &ch.dst, Some("s1"));
    kill_at(&args, phase("committing"));
    let snaps = ch.c.snaps(&ch.dst);
    if snaps == ["s1", "s2"] {
        // The commit marker made it before the kill: it must mark a complete copy.
        ch.c.assert_same(&source(&ch, "s2"), &format!("{}@s2", ch.dst));
    } else {
        assert_eq!(snaps, ["s1"]);
        rerun(&args);
        ch.c.assert_same(&source(&ch, "s2"), &format!("{}@s2", ch.dst));
    }
    // Either way the chain goes on.
    let next = sync_args(&ch.c, &source(&ch, "s3"), &ch.dst, Some("s2"));
    rerun(&next);
    ch.c.assert_same(&source(&ch, "s3"), &format!("{}@s3", ch.dst));
}

#[test]
fn a_killed_full_sync_is_completed_by_a_rerun() {
    let c = cluster();
    let src = c.new_image("rbd", "kill-full");
    let dst = c.new_image("backups", "kill-full");
    c.create(&src, mib(48), None);
    c.write(&src, mib(2), mib(30) as usize, 40);
    c.snap(&src, "s1");
    let args = sync_args(&c, &format!("{src}@s1"), &dst, None);
    kill_at(&args, copying(0.5));
    assert!(c.exists(&dst) && c.snaps(&dst).is_empty());
    let (stats, stderr) = rerun(&args);
    assert_eq!(stats["continued_interrupted"], true, "{stats}");
    assert_eq!(stats["created_destination"], false, "{stats}");
    assert_waited_for_the_lock(&stderr);
    c.assert_same(&format!("{src}@s1"), &format!("{dst}@s1"));
}
