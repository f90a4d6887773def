//! The `rbd-diffsync sync` command line against the live cluster: outputs, exit statuses as the
//! rbd CLI's (the error's code modulo 256), CEPH_ARGS, the default pool and signals.

use std::borrow::BorrowMut;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use rbd_diffsync_tests::rbd_diffsync::internals::RECORD_KEY;
use rbd_diffsync_tests::{cli, cluster, example, json_exit, mib, stderr, unique, TestCluster};
use serde_json::Value;

/// `rbd-diffsync sync -c CONF --no-progress ARGS...`, CEPH_ARGS cleared.
fn sync(c: &TestCluster, args: &[&str]) -> Command {
    let mut cmd = cli();
    cmd.env_remove("CEPH_ARGS")
        .args(["sync", "--no-progress", "-c"])
        .arg(&c.conf)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: impl BorrowMut<Command>) -> Output {
    cmd.borrow_mut().output().expect("rbd-diffsync runs")
}

/// Asserts the exit status and the JSON error object; returns it.
fn json_error(out: &Output, status: i32, kind: &str, errno: i64, code: &str) -> Value {
    let v = json_exit(out, status);
    let e = &v["error"];
    assert_eq!(
        (e["kind"].as_str(), e["errno"].as_i64(), e["code"].as_str()),
        (Some(kind), Some(errno), Some(code)),
        "{v}"
    );
    let message = e["message"].as_str().expect("a message");
    // Also on stderr: after "rbd-diffsync: error: ", or clap's "error: " for usage errors.
    assert!(
        stderr(out).contains(&format!("error: {message}")),
        "{}",
        stderr(out)
    );
    e.clone()
}

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
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("written   3.0 MiB"), "{text}");
    assert!(text.contains(&format!("snapshot  {dst}@s1")), "{text}");
    // Not a terminal: a plain line at each change of phase.
    assert!(
        stderr(&out).contains("progress: copying"),
        "{}",
        stderr(&out)
    );

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
    let v = json_exit(&out, 0);
    assert_eq!(v["bytes_written"], 65536);
    assert_eq!(v["end_snap"], "s2");
    assert_eq!(v["from_snap"], "s1");
    assert_eq!(v["source"], format!("{src}@s2"));
    assert_eq!(v["dest"], dst);
    assert_eq!(v["created_destination"], false);
    assert_eq!(v["continued_interrupted"], false);
    assert!(v["throughput_bytes_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    // --json means progress as JSON objects on stderr, one a line.
    let phases: Vec<String> = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|p| p["phase"].as_str().unwrap().to_owned())
        .collect();
    assert!(phases.iter().any(|p| p == "copying"), "{phases:?}");
    assert_eq!(c.md5(&format!("{dst}@s2")), c.md5(&format!("{src}@s2")));
}

#[test]
fn failures_exit_non_zero_and_name_the_problem() {
    let c = cluster();
    let src = c.new_image("rbd", "clifail");
    c.create(&src, mib(4), None);
    c.snap(&src, "s1");
    let dst = c.new_image("backups", "clifail");
    let out = run(sync(&c, &["--from-snap", "s0", &format!("{src}@s1"), &dst]));
    assert_eq!(out.status.code(), Some(libc::ENOENT), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("\"s0\"") && err.contains(&src), "{err}");
    assert!(!c.exists(&dst));

    let out = run(sync(&c, &["--window", "0", &format!("{src}@s1"), &dst]));
    assert_eq!(out.status.code(), Some(libc::EINVAL), "{}", stderr(&out));
    assert!(stderr(&out).contains("window"));
    assert!(!c.exists(&dst));

    // The core's check of the settings, the one every front door has: a connect timeout of 0
    // is refused before connecting, for the source and for the destination.
    for option in ["--connect-timeout", "--dest-connect-timeout"] {
        let out = run(sync(&c, &[option, "0", &format!("{src}@s1"), &dst]));
        assert_eq!(out.status.code(), Some(libc::EINVAL), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("connect timeout 0"),
            "{}",
            stderr(&out)
        );
        assert!(!c.exists(&dst));
    }
}

#[test]
fn errors_as_json_with_their_exit_statuses() {
    let c = cluster();
    let src = c.new_image("rbd", "clierr");
    let dst = c.new_image("backups", "clierr");
    c.create(&src, mib(4), None);
    c.write(&src, 0, 65536, 120);
    c.snap(&src, "s1");

    let out = run(sync(&c, &["--json", &format!("{src}@nosuch"), &dst]));
    let e = json_error(&out, 2, "not_found", 2, "ENOENT");
    assert_eq!(
        (e["image"].as_str(), e["snap"].as_str()),
        (Some(&*src), Some("nosuch"))
    );

    let out = run(sync(&c, &["--format", "json", &format!("{src}@s1"), &dst]));
    assert_eq!(json_exit(&out, 0)["end_snap"], "s1");
    let out = run(sync(&c, &["--json", &format!("{src}@s1"), &dst]));
    let e = json_error(&out, 17, "exists", 17, "EEXIST");
    assert_eq!(
        (e["image"].as_str(), e["snap"].as_str()),
        (Some(&*dst), Some("s1"))
    );

    // Someone wrote to the destination after its s1: the chain would mix that in.
    c.write(&dst, 0, 4096, 121);
    c.write(&src, mib(1), 4096, 122);
    c.snap(&src, "s2");
    let args = ["--json", "--from-snap", "s1", &format!("{src}@s2"), &dst];
    let out = run(sync(&c, &args));
    let e = json_error(&out, 200, "destination_changed", 4296, "EDESTCHANGED");
    assert_eq!(e["image"].as_str(), Some(&*dst), "{e}");
    assert_eq!(c.snaps(&dst), ["s1"]);

    // Usage errors are EINVAL too, with clap's message.
    let out = run(sync(
        &c,
        &["--json", "--window", "x", &format!("{src}@s2"), &dst],
    ));
    let e = json_error(&out, 22, "invalid_argument", 22, "EINVAL");
    assert_eq!(
        (e["image"].clone(), e["snap"].clone()),
        (Value::Null, Value::Null)
    );
    assert!(stderr(&out).contains("--window"), "{}", stderr(&out));
    let out = run(sync(&c, &["--format", "json", "--bogus", &src, &dst]));
    json_error(&out, 22, "invalid_argument", 22, "EINVAL");
    let help = run(cli().args(["sync", "--help"]));
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("200  EDESTCHANGED"));
}

#[test]
fn a_full_sync_into_an_image_with_data_needs_force() {
    let c = cluster();
    let src = c.new_image("rbd", "cliforce");
    let dst = c.new_image("backups", "cliforce");
    c.create(&src, mib(8), None);
    c.write(&src, mib(1), mib(2) as usize, 130);
    c.snap(&src, "s1");
    c.create(&dst, mib(8), None);
    c.write(&dst, 0, mib(4) as usize, 131);

    let out = run(sync(&c, &["--json", &format!("{src}@s1"), &dst]));
    let e = json_error(&out, 17, "exists", 17, "EEXIST");
    assert_eq!(e["image"].as_str(), Some(&*dst), "{e}");
    assert!(c.snaps(&dst).is_empty());

    let out = run(sync(&c, &["--json", "--force", &format!("{src}@s1"), &dst]));
    assert_eq!(json_exit(&out, 0)["end_snap"], "s1");
    assert_eq!(c.md5(&format!("{dst}@s1")), c.md5(&format!("{src}@s1")));
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let c = cluster();
    let src = c.new_image("rbd", "clidry");
    let dst = c.new_image("backups", "clidry");
    c.create(&src, mib(8), None);
    c.write(&src, 0, mib(1) as usize, 140);
    c.snap(&src, "s1");

    let out = run(sync(&c, &["--dry-run", &format!("{src}@s1"), &dst]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("would sync {src}@s1 -> {dst} (full)"),
        format!("create    {dst} (8.0 MiB)"),
        "diff      1.0 MiB in 1 extents".to_owned(),
        format!("snapshot  {dst}@s1"),
    ] {
        assert!(text.contains(&line), "{line:?} in {text}");
    }
    assert!(!c.exists(&dst), "a dry run creates nothing");

    let out = run(sync(&c, &[&format!("{src}@s1"), &dst]));
    assert!(out.status.success(), "{}", stderr(&out));
    c.write(&src, mib(4), 65536, 141);
    c.rbd(&["resize", "--size", "16M", &src]);
    c.snap(&src, "s2");
    let args = [
        "--dry-run",
        "--json",
        "--from-snap",
        "s1",
        &format!("{src}@s2"),
        &dst,
    ];
    let plan = json_exit(&run(sync(&c, &args)), 0);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["from_snap"], "s1");
    assert_eq!(plan["end_snap"], "s2");
    assert_eq!(plan["create_destination"], false);
    assert_eq!(plan["dest_size"], mib(8));
    assert_eq!(plan["source_size"], mib(16));
    assert_eq!(plan["data_bytes"], 65536);
    assert_eq!(plan["continues_interrupted"], false);
    assert_eq!(plan["overwrites_destination"], false);
    assert_eq!(c.snaps(&dst), ["s1"], "a dry run makes no snapshot");
    assert_eq!(c.md5(&dst), c.md5(&format!("{dst}@s1")), "nor resizes");
}

#[test]
fn ceph_args_choose_the_client_as_for_rbd() {
    let c = cluster();
    let src = c.new_image("rbd", "cliargs");
    let dst = c.new_image("backups", "cliargs");
    c.create(&src, mib(4), None);
    c.write(&src, 0, 65536, 150);
    c.snap(&src, "s1");
    let keyring = c.conf.with_file_name("client.diffsync.keyring");
    let ceph_args = format!("--id diffsync --keyring {}", keyring.display());
    let out = run(sync(&c, &[&format!("{src}@s1"), &dst]).env("CEPH_ARGS", ceph_args));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.md5(&format!("{dst}@s1")), c.md5(&format!("{src}@s1")));

    // No silent fallback to client.admin.
    let other = c.new_image("backups", "cliargs");
    let args = ["--connect-timeout", "5", &format!("{src}@s1"), &other];
    let out = run(sync(&c, &args).env("CEPH_ARGS", "--id nosuch"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("client.nosuch"), "{}", stderr(&out));
    assert!(!c.exists(&other));
}

#[test]
fn a_missing_keyring_is_named() {
    let c = cluster();
    let src = c.new_image("rbd", "clikeyring");
    let dst = c.new_image("backups", "clikeyring");
    c.create(&src, mib(4), None);
    c.snap(&src, "s1");
    let missing = std::env::temp_dir().join(format!("{}.keyring", unique("missing")));
    let missing = missing.to_str().unwrap();
    let source = format!("{src}@s1");
    for args in [
        ["--json", "--id", "diffsync", "-k", missing, &source, &dst],
        [
            "--json",
            "--dest-id",
            "diffsync",
            "--dest-keyring",
            missing,
            &source,
            &dst,
        ],
    ] {
        let out = run(sync(&c, &args));
        let e = json_error(&out, 2, "not_found", 2, "ENOENT");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("no keyring at {missing}")),
            "{args:?}: {message}"
        );
        assert!(message.contains("client.diffsync"), "{args:?}: {message}");
        assert!(!c.exists(&dst));
    }
}

#[test]
fn a_bare_image_name_is_in_rbd_default_pool() {
    let c = cluster();
    let src = c.new_image("rbd", "clipool");
    c.create(&src, mib(4), None);
    c.write(&src, 0, 65536, 160);
    c.snap(&src, "s1");
    let name = unique("clipool-copy");
    let args = [
        "-o",
        "rbd_default_pool=backups",
        &format!("{src}@s1"),
        &name,
    ];
    let out = run(sync(&c, &args));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(c.snaps(&format!("backups/{name}")), ["s1"]);
    assert!(!c.exists(&format!("rbd/{name}")));

    let name = unique("clipool-plan");
    let args = ["--dry-run", "--json", &format!("{src}@s1"), &name];
    let mut cmd = sync(&c, &args);
    let plan = json_exit(&run(cmd.env("CEPH_ARGS", "--rbd_default_pool backups")), 0);
    assert_eq!(plan["dest"], format!("backups/{name}"));
}

/// A source of 256 MiB holding 64 MiB of data at `s1`, made once for the signal tests: with
/// `--window 1 --chunk-size 64K` its copy lasts long enough to be interrupted.
fn signal_source(c: &TestCluster) -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let src = c.new_image("rbd", "clisig");
        c.create(&src, mib(256), None);
        c.write(&src, 0, mib(32) as usize, 170);
        c.write(&src, mib(200), mib(32) as usize, 171);
        c.snap(&src, "s1");
        src
    })
}

/// A sync (or verification) started and seen copying (or comparing): the child, and a thread
/// collecting all it printed on stderr (it keeps reading, so that the child never blocks on a
/// full pipe).
struct Running {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    /// Starts a slow JSON sync of `src@s1` into `dest` and returns once its progress says it
    /// has copied something.
    fn start(c: &TestCluster, src: &str, dest: &str) -> Running {
        let args = ["--chunk-size", "64K", &format!("{src}@s1"), dest];
        Running::run(c, "sync", &args, "copying")
    }

    /// Starts a slow JSON `rbd-diffsync COMMAND ARGS` and returns once its progress says it
    /// has done something in `phase`.
    fn run(c: &TestCluster, command: &str, args: &[&str], phase: &str) -> Running {
        let mut child = cli()
            .env_remove("CEPH_ARGS")
            .args([command, "--window", "1", "--format", "json", "-c"])
            .arg(&c.conf)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rbd-diffsync runs");
        let mut lines = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = lines.read_line(&mut line).unwrap();
            assert!(n > 0, "{command} ended before {phase}: {seen}");
            seen.push_str(&line);
            let Ok(p) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if p["phase"] == phase && p["bytes_done"].as_u64() > Some(0) {
                break;
            }
        }
        let stderr = std::thread::spawn(move || {
            let _ = lines.read_to_string(&mut seen);
            seen
        });
        Running { child, stderr }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Waits for the end: the exit status, stdout and stderr.
    fn wait(mut self) -> Output {
        let mut stdout = Vec::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.join().unwrap().into_bytes();
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

#[test]
fn sigterm_cancels_and_a_rerun_completes() {
    let c = cluster();
    let src = signal_source(&c);
    let dst = c.new_image("backups", "clisig");
    let running = Running::start(&c, src, &dst);
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(running.pid(), libc::SIGTERM) }, 0);
    let out = running.wait();
    let e = json_error(&out, 125, "cancelled", 125, "ECANCELED");
    assert!(
        e["message"].as_str().unwrap().contains("run it again"),
        "{e}"
    );
    assert!(
        stderr(&out).contains("SIGTERM received: cancelling"),
        "{}",
        stderr(&out)
    );
    assert!(c.snaps(&dst).is_empty(), "no end snapshot");

    let args = ["--window", "1", "--chunk-size", "64K", "--format", "json"];
    let out = run(sync(&c, &args).args([&format!("{src}@s1"), &dst]));
    let stats = json_exit(&out, 0);
    assert_eq!(stats["continued_interrupted"], true, "{stats}");
    assert_eq!(c.md5(&format!("{dst}@s1")), c.md5(&format!("{src}@s1")));
}

#[test]
fn a_rerun_after_a_cancel_says_what_it_compared_again() {
    let c = cluster();
    let src = signal_source(&c);
    let dst = c.new_image("backups", "clirecheck");
    // Held back to 16 MiB/s, its 64 MiB of data take 4 s at least: a checkpoint is recorded
    // every second meanwhile.
    let args = ["--chunk-size", "64K", "--max-rate", "16M"];
    let running = Running::run(
        &c,
        "sync",
        &[&args[..], &[&format!("{src}@s1"), &dst]].concat(),
        "copying",
    );
    let checkpoint = || {
        c.meta(&dst, RECORD_KEY)
            .and_then(|r| {
                r.split_whitespace()
                    .find_map(|f| f.strip_prefix("done=")?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    // A minute at most: the copy takes seconds.
    for _ in 0..600 {
        if checkpoint() > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(checkpoint() > 0, "no checkpoint recorded");
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(running.pid(), libc::SIGTERM) }, 0);
    json_error(&running.wait(), 125, "cancelled", 125, "ECANCELED");
    // The cancelled run let go of the destination: the rerun compares what lies below its
    // checkpoint with the source instead of trusting it, and says so.
    let out = run(sync(&c, &[&format!("{src}@s1"), &dst]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("  resumed   "), "{text}");
    assert!(
        text.contains("below its checkpoint compared with the source"),
        "{text}"
    );
    assert!(text.contains("  rechecked "), "{text}");
    assert_eq!(c.md5(&format!("{dst}@s1")), c.md5(&format!("{src}@s1")));
}

#[test]
fn sigint_cancels_a_verification() {
    let c = cluster();
    let src = format!("{}@s1", signal_source(&c));
    let running = Running::run(
        &c,
        "verify",
        &["--chunk-size", "4K", &src, &src],
        "verifying",
    );
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(running.pid(), libc::SIGINT) }, 0);
    let out = running.wait();
    let e = json_error(&out, 125, "cancelled", 125, "ECANCELED");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("verification of"),
        "{e}"
    );
    assert!(
        stderr(&out).contains("SIGINT received: cancelling (the reads in flight drain)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_second_sigterm_kills_at_once() {
    let c = cluster();
    let src = signal_source(&c);
    let dst = c.new_image("backups", "clisig2");
    let running = Running::start(&c, src, &dst);
    let pid = running.pid();
    // Two SIGTERMs at once. A second kill() while the first is still pending would be merged
    // into it by the kernel; one sent to the main thread (tgkill) is queued apart.
    // SAFETY: kill and tgkill have no memory-safety preconditions; the pid is our child's.
    unsafe {
        assert_eq!(libc::kill(pid, libc::SIGTERM), 0);
        assert_eq!(libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGTERM), 0);
    }
    let out = running.wait();
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{}", stderr(&out));
    assert!(c.snaps(&dst).is_empty(), "no end snapshot");
}

#[test]
fn the_library_example_syncs_full_then_incremental() {
    let c = cluster();
    let src = c.new_image("rbd", "example");
    let dst = c.new_image("backups", "example");
    c.create(&src, mib(8), None);
    c.write(&src, 4096, 100_000, 130);
    c.snap(&src, "s1");
    c.write(&src, mib(5), 5000, 131);
    c.snap(&src, "s2");
    let conf = c.conf.display().to_string();
    for (snap, from) in [("s1", None), ("s2", Some("s1"))] {
        let mut args = vec![conf.clone(), format!("{src}@{snap}"), dst.clone()];
        args.extend(from.map(str::to_owned));
        let out = example("sync").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("copying") && stderr.contains("committing"),
            "{stderr}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("bytes_written"));
        c.assert_same(&format!("{src}@{snap}"), &format!("{dst}@{snap}"));
    }
    let out = example("sync")
        .args([&conf, &format!("{src}@nope"), &dst])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found, errno 2"));
}
