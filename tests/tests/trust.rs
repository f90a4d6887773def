//! Trust: an end snapshot on the destination means "equal to the source", whatever happens
//! around the transfer (issue 19's proof, on a live cluster, through the command line):
//!
//! - a verification mismatch, then the rerun its message advises;
//! - a kill, a write below the checkpoint that bypasses librbd, then a verified rerun;
//! - a predecessor paused (SIGSTOP) or killed, with `rbd_blocklist_on_break_lock=false`: a
//!   paused one is refused as alive, never fenced; a killed one is fenced by an explicit
//!   blocklist;
//! - a batch and a plain rerun of one of its volumes: the batch is never fenced;
//! - the source's end snapshot removed while it is read;
//! - many refused runs in a row: each exits with its code, none by a signal;
//! - a full pool: a named error, with progress while it waits.
//!
//! What is asserted is behaviour (exit statuses, error kinds and codes, `rbd export | md5sum`
//! of both snapshots, snapshot lists, metadata keys, the blocklist, progress lines), never how
//! long something took: times are printed, for the record.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rbd_diffsync::internals::{HOLDER_KEY, RECORD_KEY};
use rbd_diffsync_tests::{cli, cluster, json_exit, mib, pattern, stderr, unique, TestCluster};
use serde_json::Value;

/// How long a test waits for a point of a run before it gives up: a guard against a hang, not
/// a bound on anything the tests check.
const HANG: Duration = Duration::from_secs(240);

/// The command line, started: a thread keeps reading its stderr (so that it never blocks on a
/// full pipe), timestamps every line, and passes the JSON ones (progress) on.
struct Running {
    child: Child,
    progress: mpsc::Receiver<Value>,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<JoinHandle<()>>,
    started: Instant,
}

/// What a run did, with when each stderr line came.
struct Finished {
    out: Output,
    lines: Vec<(Instant, String)>,
    started: Instant,
    ended: Instant,
}

impl Running {
    fn start(args: &[String]) -> Running {
        Running::start_with(args, None)
    }

    /// Starts `rbd-diffsync ARGS`, `input` on its stdin if given.
    fn start_with(args: &[String], input: Option<&str>) -> Running {
        let started = Instant::now();
        let mut child = cli()
            .env_remove("CEPH_ARGS")
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rbd-diffsync runs");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).unwrap();
        }
        let (tx, progress) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = lines.clone();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let reader = std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push((Instant::now(), line.clone()));
                if let Ok(p) = serde_json::from_str::<Value>(&line) {
                    if p.is_object() {
                        let _ = tx.send(p);
                    }
                }
            }
        });
        Running {
            child,
            progress,
            lines,
            reader: Some(reader),
            started,
        }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's, not
        // reaped yet.
        let ret = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(ret, 0, "kill {signal}");
    }

    fn stderr_text(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    /// Waits for the first progress report that `at` accepts, and returns it; fails if the
    /// process ends first.
    fn wait_for(&mut self, mut at: impl FnMut(&Value) -> bool) -> Value {
        loop {
            match self.progress.recv_timeout(HANG) {
                Ok(p) if at(&p) => return p,
                Ok(_) => {}
                Err(e) => panic!(
                    "the point was not reached ({e:?}; status {:?}): {}",
                    self.child.try_wait(),
                    self.stderr_text()
                ),
            }
        }
    }

    /// Whether it still runs.
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for its end.
    fn finish(mut self) -> Finished {
        let mut stdout = Vec::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        let ended = Instant::now();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        let stderr = lines
            .iter()
            .map(|(_, l)| format!("{l}\n"))
            .collect::<String>();
        Finished {
            out: Output {
                status,
                stdout,
                stderr: stderr.into_bytes(),
            },
            lines,
            started: self.started,
            ended,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test that failed half-way leaves no process behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Finished {
    /// The progress reports, with when each came.
    fn progress(&self) -> Vec<(Instant, Value)> {
        self.lines
            .iter()
            .filter_map(|(t, l)| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .filter(Value::is_object)
                    .map(|p| (*t, p))
            })
            .collect()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
}

/// `rbd-diffsync ARGS` to its end, reading nothing from stdin.
fn run(args: &[String]) -> Output {
    cli()
        .env_remove("CEPH_ARGS")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("rbd-diffsync runs")
}

/// `sync -c CONF --format json EXTRA [--from-snap FROM] SOURCE DEST`.
fn fast_args(
    c: &TestCluster,
    source: &str,
    dest: &str,
    from: Option<&str>,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "sync",
        "-c",
        &c.conf.display().to_string(),
        "--format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    if let Some(from) = from {
        args.extend(["--from-snap".to_owned(), from.to_owned()]);
    }
    args.extend([source.to_owned(), dest.to_owned()]);
    args
}

/// The same, slowed down (one 64 KiB request at a time) with a JSON progress line every
/// 20 ms on stderr; `extra` may cap its rate besides (`--max-rate`), which is what makes its
/// length predictable on a fast machine.
fn sync_args(
    c: &TestCluster,
    source: &str,
    dest: &str,
    from: Option<&str>,
    extra: &[&str],
) -> Vec<String> {
    let mut slowed = vec![
        "--progress-interval",
        "0.02",
        "--window",
        "1",
        "--chunk-size",
        "64K",
    ];
    slowed.extend(extra);
    fast_args(c, source, dest, from, &slowed)
}

/// The option that turns off librbd's own blocklisting when it breaks a lock.
const NO_LIBRBD_BLOCKLIST: [&str; 2] = ["-o", "rbd_blocklist_on_break_lock=false"];

/// Asserts that the run failed with exit status `status`, and that its JSON error is of
/// `kind` with `errno`; returns that error.
#[track_caller]
fn assert_error(out: &Output, status: i32, kind: &str, errno: i64) -> Value {
    assert_eq!(out.status.signal(), None, "ended by a signal: {out:?}");
    let v = json_exit(out, status);
    let e = v["error"].clone();
    assert_eq!(
        (e["kind"].as_str(), e["errno"].as_i64()),
        (Some(kind), Some(errno)),
        "{v}"
    );
    e
}

/// A progress report of the copy, once something was copied.
fn copying(p: &Value) -> bool {
    p["phase"] == "copying" && p["bytes_done"].as_u64().unwrap_or(0) > 0
}

/// The value of `key` in a claim or record (`key=value` fields).
fn field(text: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    text.split_whitespace()
        .find_map(|f| f.strip_prefix(&prefix).map(str::to_owned))
}

/// The checkpoint of the in-progress record on `dest`, 0 without one.
fn done_in_record(c: &TestCluster, dest: &str) -> u64 {
    c.meta(dest, RECORD_KEY)
        .and_then(|r| field(&r, "done"))
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// The claim on `dest`: its whole text.
fn claim(c: &TestCluster, dest: &str) -> String {
    c.meta(dest, HOLDER_KEY)
        .unwrap_or_else(|| panic!("no claim on {dest}"))
}

/// `ceph osd blocklist ls`.
fn blocklist(c: &TestCluster) -> String {
    c.ceph(&["osd", "blocklist", "ls"])
}

/// Whether the blocklist lists the client at `address` (its exact address, nonce included).
fn blocklisted(c: &TestCluster, address: &str) -> bool {
    blocklist(c)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(address))
}

/// Neither the claim nor the in-progress record is left on `dest`.
#[track_caller]
fn assert_no_transfer_keys(c: &TestCluster, dest: &str) {
    assert_eq!(c.meta(dest, HOLDER_KEY), None, "claim left on {dest}");
    assert_eq!(c.meta(dest, RECORD_KEY), None, "record left on {dest}");
}

/// Replaces the RADOS object `object` of `image`'s data with 1 MiB of junk, bypassing librbd
/// (`rados put`): its lock, its object map, its watchers see nothing.
fn overwrite_object(c: &TestCluster, image: &str, object: u64) {
    let prefix = c.info(image)["block_name_prefix"]
        .as_str()
        .expect("a block name prefix")
        .to_owned();
    let pool = image.split('/').next().unwrap();
    let junk = std::env::temp_dir().join(format!("{}.junk", unique("trust")));
    std::fs::write(&junk, pattern(0xbad, mib(1) as usize)).unwrap();
    let out = Command::new("rados")
        .arg("-c")
        .arg(&c.conf)
        .args(["-p", pool, "put", &format!("{prefix}.{object:016x}")])
        .arg(&junk)
        .output()
        .expect("the rados CLI runs");
    std::fs::remove_file(&junk).unwrap();
    assert!(
        out.status.success(),
        "rados put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a run's progress shows it waited (over a second) for the destination's lock.
fn waited_for_the_lock(f: &Finished) -> bool {
    f.progress().iter().any(|(_, p)| {
        p["waiting_for"]
            .as_str()
            .is_some_and(|w| w.starts_with("the exclusive lock"))
    })
}

/// A 32 MiB source with 16 MiB of data at `s1`, and a destination name.
fn full_source(c: &TestCluster, name: &str, seed: u64) -> (String, String) {
    let src = c.new_image("rbd", name);
    let dst = c.new_image("backups", name);
    c.create(&src, mib(32), None);
    c.write(&src, 0, mib(16) as usize, seed);
    c.snap(&src, "s1");
    (src, dst)
}

/// A 32 MiB source whose `s1` is on its destination already, and two later snapshots: `s2`
/// adds 8 MiB, `s3` 4 MiB more and overwrites 1 MiB of `s2`'s.
fn small_chain(name: &str) -> (TestCluster, String, String) {
    let c = cluster();
    let src = c.new_image("rbd", name);
    let dst = c.new_image("backups", name);
    c.create(&src, mib(32), None);
    c.write(&src, 0, mib(8) as usize, 61);
    c.snap(&src, "s1");
    c.transfer(&format!("{src}@s1"), &dst, None)
        .run()
        .unwrap_or_else(|e| panic!("full sync of {src}@s1: {e}"));
    c.write(&src, mib(12), mib(8) as usize, 62);
    c.snap(&src, "s2");
    c.write(&src, mib(24), mib(4) as usize, 63);
    c.write(&src, mib(13), mib(1) as usize, 64);
    c.snap(&src, "s3");
    (c, src, dst)
}

// 1. A verification mismatch, then the rerun its message advises.

#[test]
fn a_rerun_after_a_verification_mismatch_rewrites_what_differed() {
    let c = cluster();
    let (src, dst) = full_source(&c, "trust-mismatch", 51);
    let source = format!("{src}@s1");
    // 4 MiB/s: the copy lasts about 4 s, the overwrite comes at about 1 to 2 s, well before
    // the verification reads the first object back.
    let args = sync_args(&c, &source, &dst, None, &["--verify", "--max-rate", "4M"]);
    let mut first = Running::start(&args);
    // Once the whole first object is below the checkpoint, it is overwritten behind the
    // transfer's back.
    first.wait_for(|p| copying(p) && done_in_record(&c, &dst) >= mib(4));
    overwrite_object(&c, &dst, 0);
    let first = first.finish();
    let err = assert_error(&first.out, 201, "mismatch", 4297);
    let offset = err["offset"].as_u64().expect("the first differing offset");
    assert!(offset < mib(4), "in the overwritten object: {err}");
    assert!(c.snaps(&dst).is_empty(), "no end snapshot after a mismatch");
    let checkpoint = done_in_record(&c, &dst);

    // The same command again, as the message advises.
    let rerun = run(&args);
    let stats = if rerun.status.code() == Some(0) {
        json_exit(&rerun, 0)
    } else {
        // A failure is allowed only without the end snapshot; a further rerun completes.
        assert_eq!(rerun.status.signal(), None, "{rerun:?}");
        assert!(
            c.snaps(&dst).is_empty(),
            "end snapshot after a failure: {rerun:?}"
        );
        eprintln!("the rerun after the mismatch failed: {}", stderr(&rerun));
        json_exit(&run(&args), 0)
    };
    c.assert_same(&source, &format!("{dst}@s1"));
    assert_verified_everything(&stats);
    assert_eq!(c.snaps(&dst), ["s1"]);
    assert_no_transfer_keys(&c, &dst);
    // The mismatch took the checkpoint back below the difference (DESIGN 8), so that the
    // rerun rewrote it rather than trusting it.
    assert!(
        checkpoint <= offset,
        "checkpoint {checkpoint} left above the mismatch at {offset}"
    );
}

/// The verification of a committed run compared every byte the end snapshot is claimed to
/// equal: the whole diff, resumed ranges included.
#[track_caller]
fn assert_verified_everything(stats: &Value) {
    let verified = stats["bytes_verified"].as_u64().unwrap();
    let diff = stats["diff_bytes"].as_u64().unwrap();
    assert!(
        diff > 0 && verified >= diff,
        "verified {verified} of {diff}: {stats}"
    );
}

// 2. A kill, a write below the checkpoint that bypasses librbd, a verified rerun.

#[test]
fn a_verified_rerun_after_a_kill_and_a_write_below_the_checkpoint_never_commits_a_difference() {
    let c = cluster();
    let (src, dst) = full_source(&c, "trust-killed", 52);
    let source = format!("{src}@s1");
    let args = sync_args(&c, &source, &dst, None, &["--max-rate", "8M"]);
    let mut killed = Running::start(&args);
    killed.wait_for(|p| copying(p) && done_in_record(&c, &dst) >= mib(8));
    killed.signal(libc::SIGKILL);
    let killed = killed.finish();
    assert_eq!(killed.out.status.signal(), Some(libc::SIGKILL));
    let checkpoint = done_in_record(&c, &dst);
    assert!(checkpoint >= mib(8), "checkpoint {checkpoint}");
    assert!(c.snaps(&dst).is_empty());
    // The first object, wholly below the checkpoint, changed behind librbd's back.
    overwrite_object(&c, &dst, 0);

    let verified = sync_args(&c, &source, &dst, None, &["--verify"]);
    let rerun = run(&verified);
    let stats = if rerun.status.code() == Some(0) {
        json_exit(&rerun, 0)
    } else {
        // Allowed only without the end snapshot; then the rerun it advises completes.
        assert_eq!(rerun.status.signal(), None, "{rerun:?}");
        assert!(
            c.snaps(&dst).is_empty(),
            "end snapshot after a failure: {rerun:?}"
        );
        let e = json_exit(&rerun, rerun.status.code().unwrap())["error"].clone();
        eprintln!("the verified rerun failed (then rerun again): {e}");
        json_exit(&run(&verified), 0)
    };
    c.assert_same(&source, &format!("{dst}@s1"));
    assert_eq!(c.snaps(&dst), ["s1"]);
    // What the run trusted from its predecessor was compared too.
    assert_verified_everything(&stats);
    assert_no_transfer_keys(&c, &dst);
}

// 3. With librbd's own blocklisting off: a paused predecessor is refused as alive, a killed
//    one is fenced by an explicit blocklist.

/// Starts P1, the slowed incremental `s1..s2` into `dst`, and stops it (SIGSTOP) once it has
/// copied something (so it holds the lock and wrote its record); returns it, when it was
/// stopped, and its client's address as its claim names it.
fn stopped_p1(c: &TestCluster, args: &[String], dst: &str) -> (Running, Instant, String) {
    let mut p1 = Running::start(args);
    p1.wait_for(copying);
    p1.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let claim = claim(c, dst);
    assert_eq!(
        field(&claim, "pid"),
        Some(p1.pid().to_string()),
        "P1's claim: {claim}"
    );
    let address = field(&claim, "client").expect("the claim names a client");
    assert!(!blocklisted(c, &address), "P1 blocklisted already");
    (p1, stopped, address)
}

/// P2 was refused as Busy naming P1, which was not fenced; P1 stayed stopped for at least
/// 3 s in all (an operator's pause, an overloaded host), then completes once continued.
fn refused_then_p1_completes(
    c: &TestCluster,
    p2: &Output,
    (p1, stopped, address): (Running, Instant, String),
    src: &str,
    dst: &str,
) {
    let err = assert_error(p2, 16, "busy", 16);
    let message = err["message"].as_str().unwrap();
    eprintln!("P2 refused: {message}");
    assert!(message.contains(&address), "names P1's client: {message}");
    assert!(!blocklisted(c, &address), "P1 was fenced: {message}");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed()));
    assert!(!blocklisted(c, &address), "P1 was fenced");
    p1.signal(libc::SIGCONT);
    let p1 = p1.finish();
    let stats = json_exit(&p1.out, 0);
    assert_eq!(stats["broke_lock_of"], Value::Null, "{stats}");
    assert_eq!(c.snaps(dst), ["s1", "s2"]);
    c.assert_same(&format!("{src}@s2"), &format!("{dst}@s2"));
    assert_no_transfer_keys(c, dst);
    assert!(!blocklisted(c, &address), "P1 was fenced");
}

#[test]
fn a_stopped_predecessor_is_not_fenced_by_a_later_transfer_and_completes_its_own_snapshot() {
    let (c, src, dst) = small_chain("trust-stop-later");
    let mut extra = NO_LIBRBD_BLOCKLIST.to_vec();
    extra.extend(["--max-rate", "2M"]);
    let p1_args = sync_args(&c, &format!("{src}@s2"), &dst, Some("s1"), &extra);
    let p1 = stopped_p1(&c, &p1_args, &dst);
    // P2: the incremental up to s3, into the destination P1 holds.
    let p2_args = fast_args(
        &c,
        &format!("{src}@s3"),
        &dst,
        Some("s1"),
        &NO_LIBRBD_BLOCKLIST,
    );
    let p2 = run(&p2_args);
    refused_then_p1_completes(&c, &p2, p1, &src, &dst);
}

#[test]
fn a_stopped_predecessor_is_not_fenced_by_its_own_rerun_and_the_chain_goes_on() {
    let (c, src, dst) = small_chain("trust-stop-same");
    let mut extra = NO_LIBRBD_BLOCKLIST.to_vec();
    extra.extend(["--max-rate", "2M"]);
    let p1_args = sync_args(&c, &format!("{src}@s2"), &dst, Some("s1"), &extra);
    let p1 = stopped_p1(&c, &p1_args, &dst);
    // P2: the very same command.
    let p2 = run(&p1_args);
    refused_then_p1_completes(&c, &p2, p1, &src, &dst);
    // The next incremental works: nothing of P2 or P1 is left in its way.
    let next = fast_args(
        &c,
        &format!("{src}@s3"),
        &dst,
        Some("s2"),
        &NO_LIBRBD_BLOCKLIST,
    );
    json_exit(&run(&next), 0);
    assert_eq!(c.snaps(&dst), ["s1", "s2", "s3"]);
    c.assert_same(&format!("{src}@s3"), &format!("{dst}@s3"));
    assert_no_transfer_keys(&c, &dst);
}

#[test]
fn a_killed_predecessor_is_fenced_by_an_explicit_blocklist_even_with_librbds_off() {
    let (c, src, dst) = small_chain("trust-kill-fence");
    let mut extra = NO_LIBRBD_BLOCKLIST.to_vec();
    extra.extend(["--max-rate", "2M"]);
    let args = sync_args(&c, &format!("{src}@s2"), &dst, Some("s1"), &extra);
    let mut p1 = Running::start(&args);
    p1.wait_for(copying);
    let address = field(&claim(&c, &dst), "client").expect("the claim names a client");
    p1.signal(libc::SIGKILL);
    let p1 = p1.finish();
    assert_eq!(p1.out.status.signal(), Some(libc::SIGKILL));
    assert!(!blocklisted(&c, &address));
    assert_eq!(c.snaps(&dst), ["s1"]);
    // P2: the same command.
    let p2 = Running::start(&args).finish();
    let stats = json_exit(&p2.out, 0);
    assert_eq!(stats["broke_lock_of"].as_str(), Some(&*address), "{stats}");
    assert!(
        blocklisted(&c, &address),
        "the fence is a blocklist, whatever rbd_blocklist_on_break_lock says: {}",
        blocklist(&c)
    );
    assert!(
        !waited_for_the_lock(&p2),
        "the rerun waited for the dead client's lock: {}",
        p2.stderr()
    );
    assert_eq!(c.snaps(&dst), ["s1", "s2"]);
    c.assert_same(&format!("{src}@s2"), &format!("{dst}@s2"));
    assert_no_transfer_keys(&c, &dst);
}

// 4. A batch is never fenced by a rerun of one of its volumes.

#[test]
fn a_batch_is_never_fenced_by_a_plain_sync_of_one_of_its_volumes() {
    let c = cluster();
    let volumes: Vec<(String, String)> = (0..2)
        .map(|k| {
            let src = c.new_image("rbd", "trust-batch");
            let dst = c.new_image("backups", "trust-batch");
            c.create(&src, mib(16), None);
            c.write(&src, 0, mib(6) as usize, 70 + k);
            c.snap(&src, "s1");
            (src, dst)
        })
        .collect();
    let job: String = volumes
        .iter()
        .map(|(src, dst)| format!("{src}@s1 {dst}\n"))
        .collect();
    let conf = c.conf.display().to_string();
    let args: Vec<String> = [
        "sync-many",
        "-c",
        &conf,
        "--format",
        "json",
        "--progress-interval",
        "0.05",
        "--parallel",
        "2",
        "--window",
        "4",
        "--chunk-size",
        "64K",
        "--max-rate",
        "2M",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut batch = Running::start_with(&args, Some(&job));
    // Both volumes copy, over the batch's one connection.
    batch.wait_for(|p| {
        p["volumes"]
            .as_array()
            .is_some_and(|v| v.len() == 2 && v.iter().all(copying))
    });
    let (src, dst) = &volumes[0];
    let claim = claim(&c, dst);
    assert_eq!(field(&claim, "shared").as_deref(), Some("1"), "{claim}");
    let address = field(&claim, "client").unwrap();
    // The plain sync of that volume: the batch's line for it, as a command.
    let plain = run(&fast_args(&c, &format!("{src}@s1"), dst, None, &[]));
    let err = assert_error(&plain, 16, "busy", 16);
    eprintln!("plain sync refused: {}", err["message"]);
    assert!(
        err["message"].as_str().unwrap().contains(&address),
        "names the batch's client: {err}"
    );
    assert!(!blocklisted(&c, &address), "the batch was fenced");
    let batch = batch.finish();
    let result = json_exit(&batch.out, 0);
    assert_eq!(
        (result["succeeded"].as_u64(), result["failed"].as_u64()),
        (Some(2), Some(0)),
        "{result}"
    );
    for (src, dst) in &volumes {
        assert_eq!(c.snaps(dst), ["s1"]);
        c.assert_same(&format!("{src}@s1"), &format!("{dst}@s1"));
        assert_no_transfer_keys(&c, dst);
    }
    assert!(!blocklisted(&c, &address), "the batch was fenced");
}

// 5. The source's end snapshot removed while it is read.

#[test]
fn the_source_snapshot_removed_mid_copy_fails_naming_it_without_an_end_snapshot() {
    let c = cluster();
    let (src, dst) = full_source(&c, "trust-snap-rm", 53);
    let args = sync_args(&c, &format!("{src}@s1"), &dst, None, &["--max-rate", "4M"]);
    let mut running = Running::start(&args);
    running.wait_for(copying);
    c.rbd(&["snap", "rm", "--no-progress", &format!("{src}@s1")]);
    let finished = running.finish();
    let err = assert_error(&finished.out, 2, "not_found", 2);
    assert_eq!(err["snap"], "s1", "{err}");
    assert_eq!(err["image"].as_str(), Some(src.as_str()), "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("removed"), "{message}");
    eprintln!("snapshot removed mid-copy: {message}");
    assert!(
        !c.exists(&dst) || c.snaps(&dst).is_empty(),
        "an end snapshot of a source snapshot that is gone"
    );
}

// 6. Many refused runs in a row: each exits with its code, none by a signal.

/// How many refused runs in a row.
const REFUSED_RUNS: usize = 200;

#[test]
fn refused_runs_while_another_transfer_holds_the_destination_exit_with_their_code() {
    let c = cluster();
    let src = c.new_image("rbd", "trust-refused");
    let dst = c.new_image("backups", "trust-refused");
    c.create(&src, mib(16), None);
    c.write(&src, 0, mib(8) as usize, 54);
    c.snap(&src, "s1");
    // The holder: long enough to outlast the refused runs (it is cancelled afterwards).
    let args = sync_args(&c, &format!("{src}@s1"), &dst, None, &["--max-rate", "64K"]);
    let mut holder = Running::start(&args);
    holder.wait_for(copying);
    let started = Instant::now();
    let mut wrong = Vec::new();
    for run_no in 0..REFUSED_RUNS {
        // The same command: its scan of the source is under way when it is refused.
        let out = run(&args);
        if out.status.signal().is_some() || out.status.code() != Some(libc::EBUSY) {
            wrong.push(format!(
                "run {run_no}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .filter(|l| !l.starts_with('{'))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
    }
    eprintln!(
        "{REFUSED_RUNS} refused runs took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        holder.running(),
        "the holder ended before the refused runs did"
    );
    assert!(
        wrong.is_empty(),
        "{} of {REFUSED_RUNS} runs did not exit with 16: {wrong:#?}",
        wrong.len()
    );
    holder.signal(libc::SIGTERM);
    let holder = holder.finish();
    assert_error(&holder.out, 125, "cancelled", libc::ECANCELED.into());
    assert!(c.snaps(&dst).is_empty());
}

// 7. A full pool.

#[test]
fn a_full_pool_fails_naming_it_and_reports_the_wait_while_it_lasts() {
    let c = cluster();
    let src = c.new_image("rbd", "trust-full");
    c.create(&src, mib(48), None);
    c.write(&src, 0, mib(40) as usize, 55);
    c.snap(&src, "s1");
    let pool = c.pool_with_quota(mib(4));
    let dst = format!("{pool}/{}", unique("trust-full"));
    // Slowed, so that the monitors mark the pool full while it copies (they learn the pool's
    // usage every few seconds).
    let extra = ["--op-timeout", "10", "--max-rate", "2M"];
    let args = sync_args(&c, &format!("{src}@s1"), &dst, None, &extra);
    let finished = Running::start(&args).finish();
    let err = assert_error(&finished.out, 122, "no_space", libc::EDQUOT.into());
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("pool {pool} has reached its quota")),
        "{message}"
    );
    assert_eq!(err["image"].as_str(), Some(dst.as_str()), "{err}");
    assert!(c.snaps(&dst).is_empty(), "no end snapshot");
    // The wait was reported while it lasted: after the last report with bytes advancing,
    // reports that say what the transfer waits for.
    let progress = finished.progress();
    let mut last_advance = None;
    let mut most = 0;
    for (k, (_, p)) in progress.iter().enumerate() {
        let done = p["bytes_done"].as_u64().unwrap_or(0);
        if done > most {
            most = done;
            last_advance = Some(k);
        }
    }
    let last_advance = last_advance.expect("the copy advanced before the pool filled");
    let waits: Vec<&Value> = progress[last_advance + 1..]
        .iter()
        .map(|(_, p)| p)
        .filter(|p| !p["waiting_for"].is_null())
        .collect();
    assert!(
        !waits.is_empty(),
        "no report of the wait after the copy stopped advancing: {}",
        finished.stderr()
    );
    // For the record, not asserted: how long the error took, and the longest silence on
    // stderr meanwhile.
    let (at, _) = progress[last_advance];
    let silence = finished
        .lines
        .windows(2)
        .filter(|w| w[1].0 >= at)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64())
        .fold(0.0, f64::max);
    eprintln!(
        "full pool, --op-timeout 10: error {:.1} s after the last report with bytes \
         advancing, {:.1} s in all; longest silence on stderr after it {silence:.1} s; {} \
         reports of the wait, the last waiting for {}",
        (finished.ended - at).as_secs_f64(),
        (finished.ended - finished.started).as_secs_f64(),
        waits.len(),
        waits.last().unwrap()["waiting_for"]
    );
    c.ceph(&[
        "osd",
        "pool",
        "delete",
        &pool,
        &pool,
        "--yes-i-really-really-mean-it",
    ]);
}
