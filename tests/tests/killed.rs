//! The command line killed (SIGKILL) at several points of a transfer, then run again: the end
//! snapshot never exists after a kill unless the destination is complete, and the rerun, with
//! the same or a later end snapshot, completes it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rbd_diffsync::internals::{Image, HOLDER_KEY, RECORD_KEY};
use rbd_diffsync::ImageSpec;
use rbd_diffsync_tests::{chain, cli, cluster, mib, Chain, TestCluster};

fn copying(fraction: f64) -> impl Fn(&serde_json::Value) -> bool {
    move |p| {
        let (done, total) = (p["bytes_done"].as_u64(), p["bytes_total"].as_u64());
        p["phase"] == "copying"
            && total.is_some_and(|t| t > 0 && done.unwrap_or(0) as f64 >= fraction * t as f64)
    }
}

/// Once the copy has recorded a checkpoint in the destination's in-progress record.
fn checkpointed<'a>(c: &'a TestCluster, dest: &'a str) -> impl Fn(&serde_json::Value) -> bool + 'a {
    let copying = copying(0.0);
    move |p| copying(p) && done_in_record(c, dest) > 0
}

/// The checkpoint of the in-progress record on `dest`, 0 without one.
fn done_in_record(c: &TestCluster, dest: &str) -> u64 {
    c.meta(dest, RECORD_KEY)
        .and_then(|r| {
            r.split_whitespace()
                .find_map(|f| f.strip_prefix("done=").map(str::to_owned))
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
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

/// A rerun after a kill under the lock breaks the dead client's lock at once (instead of
/// waiting for its watch to expire) and says so.
fn assert_broke_the_lock(stats: &serde_json::Value) {
    let client = stats["broke_lock_of"].as_str().unwrap_or_default();
    assert!(client.contains('/'), "the dead client's address: {stats}");
}

/// A rerun after a kill in the copy resumes from the checkpoint: it did not do again what
/// the killed run had recorded as done.
fn assert_resumed(stats: &serde_json::Value) {
    let resumed = stats["bytes_resumed"].as_u64().unwrap();
    assert!(resumed > 0, "{stats}");
    let diff = stats["diff_bytes"].as_u64().unwrap();
    let read = stats["bytes_read"].as_u64().unwrap();
    assert!(read + resumed <= diff + (4 << 20), "{stats}");
}

#[test]
fn killed_in_the_scan_then_in_the_copy_then_rerun_with_the_same_end() {
    let ch = chain("kill-same");
    let args = sync_args(&ch.c, &source(&ch, "s2"), &ch.dst, Some("s1"));
    kill_at(&args, phase("scanning"));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    kill_at(&args, checkpointed(&ch.c, &ch.dst));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    let (stats, _) = rerun(&args);
    assert_eq!(stats["continued_interrupted"], true, "{stats}");
    assert_broke_the_lock(&stats);
    assert_resumed(&stats);
    ch.c.assert_same(&source(&ch, "s2"), &format!("{}@s2", ch.dst));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1", "s2"]);
}

#[test]
fn killed_in_the_scan_before_the_lock_the_rerun_fences_off_the_dead_watcher() {
    let ch = chain("kill-scan");
    let args = sync_args(&ch.c, &source(&ch, "s2"), &ch.dst, Some("s1"));
    // Once the destination is open (its watch registered): before the lock and the record.
    kill_at(&args, phase("scanning"));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    let watchers = watchers(&ch.c, &ch.dst);
    assert_eq!(watchers.len(), 1, "the killed run's watch: {watchers:?}");
    let (stats, stderr) = rerun(&args);
    // Fenced off at once: neither the lock nor librbd's notifications (the record, the end
    // snapshot) waited for the dead client's watch to expire (10 s on the test clusters).
    assert_fenced(&ch.c, &stats, &watchers[0]);
    assert_no_lock_wait(&stderr);
    ch.c.assert_same(&source(&ch, "s2"), &format!("{}@s2", ch.dst));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1", "s2"]);
}

/// The addresses of the clients watching `image`.
fn watchers(c: &TestCluster, image: &str) -> Vec<String> {
    let spec = ImageSpec::parse(image).unwrap();
    // Read-only: it registers no watch of its own.
    let image = Image::open_read_only(&c.pool(&spec), spec.image(), None).unwrap();
    image
        .watchers()
        .unwrap()
        .into_iter()
        .map(|w| w.address)
        .collect()
}

/// The rerun fenced off the killed client at `address` instead of waiting for its watch to
/// expire: it says so, and the OSD map lists it as blocklisted (its watch is gone with it, so
/// that no notification of librbd's waits for it).
fn assert_fenced(c: &TestCluster, stats: &serde_json::Value, address: &str) {
    assert_eq!(stats["broke_lock_of"].as_str(), Some(address), "{stats}");
    let blocklist = c.ceph(&["osd", "blocklist", "ls"]);
    assert!(
        blocklist
            .lines()
            .any(|l| l.split_whitespace().next() == Some(address)),
        "{address} is not blocklisted: {blocklist}"
    );
}

/// No progress report of the run says it waited for the destination's exclusive lock (a
/// wait is reported once it lasts a second): the lock did not wait for a dead client's watch
/// to expire.
fn assert_no_lock_wait(stderr: &str) {
    let waits: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|p| {
            p["waiting_for"]
                .as_str()
                .is_some_and(|w| w.starts_with("the exclusive lock"))
        })
        .collect();
    assert!(waits.is_empty(), "waited for the lock: {waits:?}");
}

#[test]
fn killed_as_soon_as_it_watches_the_destination_the_rerun_fences_it_off_at_once() {
    let ch = chain("kill-open");
    let args = sync_args(&ch.c, &source(&ch, "s2"), &ch.dst, Some("s1"));
    let spec = ImageSpec::parse(&ch.dst).unwrap();
    // Read-only: it registers no watch of its own.
    let dest = Image::open_read_only(&ch.c.pool(&spec), spec.image(), None).unwrap();
    assert!(dest.watchers().unwrap().is_empty());
    let mut child = cli()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed the moment its watch shows: librbd's open of the destination for writing has
    // registered it, and nothing else of the transfer has happened yet.
    let started = Instant::now();
    let watcher = loop {
        if let Some(w) = dest.watchers().unwrap().into_iter().next() {
            child.kill().unwrap();
            break w.address;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no watch");
    };
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    // No moment exists where it watched the destination without being named as its writer
    // to be: its rerun recognises it.
    let claim = ch.c.meta(&ch.dst, HOLDER_KEY).unwrap_or_default();
    let claimant = claim
        .split_whitespace()
        .find_map(|f| f.strip_prefix("client="));
    assert_eq!(claimant, Some(&*watcher), "{claim}");
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    let (stats, stderr) = rerun(&args);
    // Fenced off instead of waited for: no notification of librbd's (the record, the end
    // snapshot) waited for it, nor the lock for its watch to expire.
    assert_fenced(&ch.c, &stats, &watcher);
    assert_no_lock_wait(&stderr);
    ch.c.assert_same(&source(&ch, "s2"), &format!("{}@s2", ch.dst));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1", "s2"]);
    assert!(ch.c.meta(&ch.dst, RECORD_KEY).is_none());
}

#[test]
fn killed_in_the_copy_then_rerun_with_a_later_end_that_zeroes_what_it_wrote() {
    let ch = chain("kill-later");
    let args = sync_args(&ch.c, &source(&ch, "s2"), &ch.dst, Some("s1"));
    kill_at(&args, copying(0.7));
    assert_eq!(ch.c.snaps(&ch.dst), ["s1"]);
    let later = sync_args(&ch.c, &source(&ch, "s3"), &ch.dst, Some("s1"));
    let (stats, _) = rerun(&later);
    assert_eq!(stats["continued_interrupted"], true, "{stats}");
    assert_broke_the_lock(&stats);
    // Another end snapshot: the checkpoint of the diff up to s2 is not used.
    assert_eq!(stats["bytes_resumed"], 0, "{stats}");
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
    kill_at(&args, checkpointed(&c, &dst));
    assert!(c.exists(&dst) && c.snaps(&dst).is_empty());
    let (stats, _) = rerun(&args);
    assert_eq!(stats["continued_interrupted"], true, "{stats}");
    assert_eq!(stats["created_destination"], false, "{stats}");
    assert_broke_the_lock(&stats);
    assert_resumed(&stats);
    c.assert_same(&format!("{src}@s1"), &format!("{dst}@s1"));
}

/// A small deterministic generator, so that a failing kill point can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs the command line and SIGKILLs it at the first progress report at or after `at`
/// seconds, or in its commit if `in_commit`; returns whether it was killed (it may have
/// finished first).
fn kill_after(args: &[String], at: f64, in_commit: bool) -> bool {
    let mut child = cli()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    for line in stderr.lines() {
        let Ok(p) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
            continue;
        };
        let elapsed = p["elapsed"].as_f64().unwrap_or(0.0);
        if (in_commit && p["phase"] == "committing") || (!in_commit && elapsed >= at) {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap().signal() == Some(libc::SIGKILL)
}

#[test]
fn killed_at_ten_seeded_points_then_rerun_resumes_without_waiting_for_the_lock() {
    // How long each kind takes uninterrupted, on the same inputs.
    let base = chain("kill-point-base");
    let full_dest = base.c.new_image("backups", "kill-point-base-full");
    let baseline_of = |args: Vec<String>| rerun(&args).0["elapsed"].as_f64().unwrap();
    let baseline = [
        baseline_of(sync_args(&base.c, &source(&base, "s2"), &full_dest, None)),
        baseline_of(sync_args(
            &base.c,
            &source(&base, "s2"),
            &base.dst,
            Some("s1"),
        )),
    ];
    let mut rng = Rng(0x5eed_2026);
    let mut finished_first = 0;
    for point in 0..10u64 {
        let incremental = point % 2 == 1;
        let ch = chain(&format!("kill-point-{point}"));
        let (source, dest, from, end) = if incremental {
            (source(&ch, "s2"), ch.dst.clone(), Some("s1"), "s2")
        } else {
            let dest =
                ch.c.new_image("backups", &format!("kill-point-full-{point}"));
            (source(&ch, "s2"), dest, None, "s2")
        };
        let args = sync_args(&ch.c, &source, &dest, from);
        // Points anywhere in the uninterrupted run's time, and one in the commit.
        let uninterrupted = baseline[usize::from(incremental)];
        let at = uninterrupted * (20 + rng.next() % 830) as f64 / 1000.0;
        let in_commit = point == 9;
        let what = format!("point {point}: killed at {at:.2} s (commit: {in_commit}) of {args:?}");
        let killed = kill_after(&args, at, in_commit);
        let before: Vec<String> = from.iter().map(|s| s.to_string()).collect();
        let snaps = if ch.c.exists(&dest) {
            ch.c.snaps(&dest)
        } else {
            Vec::new()
        };
        if snaps.last().map(String::as_str) == Some(end) {
            // The commit marker made it before the kill (or the run ended before the point,
            // on a machine faster than when the baseline ran): it marks a complete copy.
            assert!(
                in_commit || !killed,
                "{what}: end snapshot after a kill outside the commit"
            );
            finished_first += u32::from(!killed);
            ch.c.assert_same(&source, &format!("{dest}@{end}"));
            continue;
        }
        assert_eq!(snaps, before, "{what}: snapshots after the kill");
        let (checkpoint, watchers) = if ch.c.exists(&dest) {
            (done_in_record(&ch.c, &dest), watchers(&ch.c, &dest))
        } else {
            (0, Vec::new())
        };
        let (stats, stderr) = rerun(&args);
        ch.c.assert_same(&source, &format!("{dest}@{end}"));
        let mut want = before.clone();
        want.push(end.to_owned());
        assert_eq!(ch.c.snaps(&dest), want, "{what}");
        assert!(
            ch.c.meta(&dest, RECORD_KEY).is_none(),
            "{what}: record left"
        );
        // No wait for the dead client's lock or watch (its watch lasts 10 s on the test
        // clusters, 30 s by default): the client the kill left watching the destination was
        // fenced off, and the lock was not waited for.
        if let [watcher] = &watchers[..] {
            assert_fenced(&ch.c, &stats, watcher);
        }
        assert_no_lock_wait(&stderr);
        // What the checkpoint recorded was not done again.
        let resumed = stats["bytes_resumed"].as_u64().unwrap();
        assert_eq!(
            resumed > 0,
            checkpoint > 0,
            "{what}: checkpoint {checkpoint}: {stats}"
        );
        eprintln!(
            "{what}: rerun {:.2} s, resumed {resumed} bytes, broke lock: {}",
            stats["elapsed"], stats["broke_lock_of"]
        );
    }
    assert!(
        finished_first <= 2,
        "{finished_first} of 10 runs ended before their kill point"
    );
}

/// The cephx caps the README documents, exactly: the source's user reads its pool only, the
/// destination's user writes its pool only, and both have `mon 'profile rbd'` (which lets a
/// client blocklist another, to fence off a dead predecessor, and read the OSD map).
const SOURCE_CAPS: [&str; 4] = [
    "mon",
    "profile rbd",
    "osd",
    "profile rbd-read-only pool=rbd",
];
const DEST_CAPS: [&str; 4] = ["mon", "profile rbd", "osd", "profile rbd pool=backups"];

/// A user `client.NAME` with `caps`, and the path of its keyring.
fn user(c: &TestCluster, name: &str, caps: &[&str]) -> (String, String) {
    let keyring = c.conf.with_file_name(format!("client.{name}.keyring"));
    let mut args = vec!["auth", "get-or-create"];
    let entity = format!("client.{name}");
    args.push(&entity);
    args.extend_from_slice(caps);
    std::fs::write(&keyring, c.ceph(&args)).unwrap();
    (name.to_owned(), keyring.display().to_string())
}

#[test]
fn with_exactly_the_documented_caps_full_incremental_kill_rerun_and_verify_work() {
    let ch = chain("kill-caps");
    let tag = std::process::id();
    let (src_id, src_keyring) = user(&ch.c, &format!("caps-src-{tag}"), &SOURCE_CAPS);
    let (dst_id, dst_keyring) = user(&ch.c, &format!("caps-dst-{tag}"), &DEST_CAPS);
    let users = [
        "--id".to_owned(),
        src_id,
        "--keyring".to_owned(),
        src_keyring,
        "--dest-id".to_owned(),
        dst_id,
        "--dest-keyring".to_owned(),
        dst_keyring,
    ];
    let with_users = |mut args: Vec<String>| {
        let at = args.len() - 2;
        args.splice(at..at, users.iter().cloned());
        args
    };
    // Full, into a new image.
    let dst = ch.c.new_image("backups", "kill-caps-full");
    let (stats, _) = rerun(&with_users(sync_args(
        &ch.c,
        &source(&ch, "s1"),
        &dst,
        None,
    )));
    assert_eq!(stats["created_destination"], true, "{stats}");
    ch.c.assert_same(&source(&ch, "s1"), &format!("{dst}@s1"));
    // Incremental, killed in the copy, then run again: the dead client is fenced off with the
    // destination user's caps, and the rerun completes.
    let args = with_users(sync_args(&ch.c, &source(&ch, "s2"), &dst, Some("s1")));
    kill_at(&args, checkpointed(&ch.c, &dst));
    assert_eq!(ch.c.snaps(&dst), ["s1"]);
    let (stats, stderr) = rerun(&args);
    assert_broke_the_lock(&stats);
    let address = stats["broke_lock_of"].as_str().unwrap().to_owned();
    assert_fenced(&ch.c, &stats, &address);
    assert_no_lock_wait(&stderr);
    ch.c.assert_same(&source(&ch, "s2"), &format!("{dst}@s2"));
    assert_eq!(ch.c.snaps(&dst), ["s1", "s2"]);
    // Verify, with the same users.
    let mut verify = vec![
        "verify".to_owned(),
        "-c".to_owned(),
        ch.c.conf.display().to_string(),
        "--format".to_owned(),
        "json".to_owned(),
    ];
    verify.extend(users.iter().cloned());
    verify.extend([source(&ch, "s2"), format!("{dst}@s2")]);
    let out = cli().args(&verify).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And no more than that: the source's user cannot write the destination pool.
    let src_user = &users[0..4];
    let mut wrong = vec![
        "sync".to_owned(),
        "-c".to_owned(),
        ch.c.conf.display().to_string(),
    ];
    wrong.extend(src_user.iter().cloned());
    let refused = ch.c.new_image("backups", "kill-caps-refused");
    wrong.extend([
        "--dest-id".to_owned(),
        src_user[1].clone(),
        "--dest-keyring".to_owned(),
        src_user[3].clone(),
        source(&ch, "s1"),
        refused.clone(),
    ]);
    let out = cli().args(&wrong).output().unwrap();
    // The OSDs refuse its first read of the destination pool: EPERM (PermissionDenied), the
    // message naming the image and the caps it lacks.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(libc::EPERM), "{stderr}");
    assert!(
        stderr.contains(&format!("for image {refused}"))
            && stderr.contains("osd 'profile rbd pool=backups'"),
        "{stderr}"
    );
    assert!(!ch.c.exists(&refused));
}
