//! Running and timing the contenders, each in its own processes so that wall time and peak
//! RSS are what a user of that tool would see.

use std::fs::File;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use rbd_diffsync_tests::TestCluster;

use crate::settle;

/// First argument that makes the benchmark binary run one transfer itself.
pub const TRANSFER_CMD: &str = "__transfer";
/// First argument that makes the benchmark binary run one verification itself.
pub const VERIFY_CMD: &str = "__verify";

/// One timed run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub secs: f64,
    /// Peak resident set of the contender's processes, summed, in KiB.
    pub rss_kib: Option<u64>,
    /// CPU seconds (user + system) of the contender's processes, summed.
    pub cpu_secs: Option<f64>,
    /// CPU seconds of the latency proxy during the run, when behind it.
    pub proxy_cpu_secs: Option<f64>,
    /// Of `secs`, the time the end snapshot took to create, where known.
    pub snapshot_secs: Option<f64>,
}

/// Who is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    /// `rbd export-diff | rbd import-diff`.
    Pipe,
    /// The same pipe with `--rbd-cache=false` on both ends.
    PipeNoCache,
    /// `rbd deep cp` (full only).
    DeepCp,
    /// `DiffTransfer`, in a child process.
    Ours {
        window: Option<usize>,
        chunk_size: Option<u64>,
    },
    /// `rbd export-diff > /dev/null` beside `rbd bench --io-type write` of the changed bytes.
    Ceiling,
    /// The ceiling followed by `rbd snap create` of the image written: the commit marker
    /// every contender creates too.
    CeilingSnap,
    /// `rbd export IMAGE - | md5sum` of both images, at once.
    ExportMd5,
    /// `Verify` (what `rbd-diffsync verify` runs), in a child process.
    Verify,
}

impl Contender {
    pub fn name(&self) -> String {
        match self {
            Contender::Pipe => "rbd export-diff | rbd import-diff".into(),
            Contender::PipeNoCache => "rbd export-diff | rbd import-diff, rbd cache = false".into(),
            Contender::DeepCp => "rbd deep cp".into(),
            Contender::Ours {
                window: None,
                chunk_size: None,
            } => "DiffTransfer".into(),
            Contender::Ours { window, chunk_size } => format!(
                "DiffTransfer window {} chunk {}",
                window.map_or("default".into(), |w| w.to_string()),
                chunk_size.map_or("default".into(), |c| format!("{} KiB", c / 1024))
            ),
            Contender::Ceiling => "copy ceiling".into(),
            Contender::CeilingSnap => "copy ceiling + snapshot".into(),
            Contender::ExportMd5 => "rbd export | md5sum, both images at once".into(),
            Contender::Verify => "rbd-diffsync verify".into(),
        }
    }

    /// A short name for scratch images.
    pub fn slug(&self) -> &'static str {
        match self {
            Contender::Pipe => "pipe",
            Contender::PipeNoCache => "pipe-nocache",
            Contender::DeepCp => "deepcp",
            Contender::Ours { .. } => "ours",
            Contender::Ceiling | Contender::CeilingSnap => "ceiling",
            Contender::ExportMd5 | Contender::Verify => "verify",
        }
    }

    /// Times a full copy of `source` (image@snap) into `dest`, which does not exist yet.
    pub fn full(&self, cluster: &TestCluster, source: &str, dest: &str, size: u64) -> Sample {
        match self {
            Contender::Pipe | Contender::PipeNoCache => {
                // import-diff needs the image; cinder creates it before the pipe too.
                cluster.create(dest, size, None);
                settle(cluster);
                behind_proxy(|| pipe(cluster, source, None, dest, self.cache_off()))
            }
            Contender::DeepCp => {
                settle(cluster);
                behind_proxy(|| {
                    let child = client(cluster.rbd_command())
                        .args(["deep", "cp", "--no-progress", source, dest])
                        .spawn()
                        .expect("rbd runs");
                    let started = Instant::now();
                    let usage = wait_ok(child, "rbd deep cp");
                    sample(started, usage)
                })
            }
            Contender::Ours { window, chunk_size } => {
                settle(cluster);
                behind_proxy(|| ours(cluster, source, dest, None, *window, *chunk_size))
            }
            _ => unreachable!("only copies are full"),
        }
    }

    /// Times an incremental from `from` to the snapshot of `source` into `dest`.
    pub fn incremental(
        &self,
        cluster: &TestCluster,
        source: &str,
        dest: &str,
        from: &str,
    ) -> Sample {
        settle(cluster);
        behind_proxy(|| match self {
            Contender::Pipe | Contender::PipeNoCache => {
                pipe(cluster, source, Some(from), dest, self.cache_off())
            }
            Contender::Ours { window, chunk_size } => {
                ours(cluster, source, dest, Some(from), *window, *chunk_size)
            }
            _ => unreachable!("only the pipes and DiffTransfer do incrementals"),
        })
    }

    /// Whether the rbd CLI runs with its cache off.
    fn cache_off(&self) -> bool {
        *self == Contender::PipeNoCache
    }

    /// Times a comparison of `a` with `b`, both at a snapshot whose `rbd export | md5sum` is
    /// `md5`; panics unless the contender finds them equal.
    pub fn compare(&self, cluster: &TestCluster, a: &str, b: &str, md5: &str) -> Sample {
        settle(cluster);
        match self {
            Contender::ExportMd5 => {
                let started = Instant::now();
                let sums: Vec<(Child, Child)> = [a, b]
                    .into_iter()
                    .map(|image| cluster.spawn_md5(image))
                    .collect();
                let mut usage = Usage::default();
                for (export, mut sum) in sums {
                    let mut out = String::new();
                    sum.stdout
                        .take()
                        .expect("piped")
                        .read_to_string(&mut out)
                        .expect("read md5sum");
                    usage = usage + wait_ok(export, "rbd export") + wait_ok(sum, "md5sum");
                    assert!(out.starts_with(md5), "md5 {out} is not {md5}");
                }
                sample(started, usage)
            }
            Contender::Verify => {
                let exe = std::env::current_exe().expect("own path");
                let started = Instant::now();
                let child = Command::new(exe)
                    .arg(VERIFY_CMD)
                    .arg(&cluster.conf)
                    .args([a, b])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("the benchmark binary runs itself");
                sample(started, wait_ok(child, "Verify"))
            }
            _ => unreachable!("only verifiers compare"),
        }
    }
}

/// What a contender's processes used: peak RSS in KiB and CPU seconds, each summed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub cpu_secs: f64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            rss_kib: self.rss_kib + o.rss_kib,
            cpu_secs: self.cpu_secs + o.cpu_secs,
        }
    }
}

fn sample(started: Instant, usage: Usage) -> Sample {
    Sample {
        secs: started.elapsed().as_secs_f64(),
        rss_kib: Some(usage.rss_kib),
        cpu_secs: Some(usage.cpu_secs),
        proxy_cpu_secs: None,
        snapshot_secs: None,
    }
}

/// Environment variables of a client process: name and value.
type Env = Vec<(String, String)>;

/// The environment of the contenders' client processes: empty, or what sends them through
/// the latency proxy (whose pid comes with it, to read its CPU time).
static CLIENT_ENV: Mutex<(Env, Option<u32>)> = Mutex::new((Vec::new(), None));

/// Runs the contenders from now on with `env` set, behind the proxy `proxy_pid`.
pub fn set_client_env(env: Env, proxy_pid: Option<u32>) {
    *CLIENT_ENV.lock().expect("not poisoned") = (env, proxy_pid);
}

/// `cmd` with the contenders' environment.
fn client(mut cmd: Command) -> Command {
    for (k, v) in &CLIENT_ENV.lock().expect("not poisoned").0 {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `f`, adding the latency proxy's CPU seconds during it to its sample.
fn behind_proxy(f: impl FnOnce() -> Sample) -> Sample {
    let pid = CLIENT_ENV.lock().expect("not poisoned").1;
    let before = pid.and_then(crate::latency::cpu_secs);
    let mut s = f();
    let after = pid.and_then(crate::latency::cpu_secs);
    if let (Some(a), Some(b)) = (after, before) {
        s.proxy_cpu_secs = Some(a - b);
    }
    s
}

/// Waits for `child` with wait4, so that its peak RSS and CPU time come back with it; panics
/// unless it exited with 0.
pub fn wait_ok(child: Child, what: &str) -> Usage {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; all zeros is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's Child reaps only in wait*,
        // which is never called on it); both pointers are valid for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert!(
            err.kind() == std::io::ErrorKind::Interrupted,
            "waiting for {what}: {err}"
        );
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what} failed (wait status {status:#x})"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        rss_kib: usage.ru_maxrss as u64,
        cpu_secs: secs(usage.ru_utime) + secs(usage.ru_stime),
    }
}

/// `rbd export-diff [--from-snap F] source - | rbd import-diff - dest`, both with
/// `--rbd-cache=false` when `cache_off`.
fn pipe(
    cluster: &TestCluster,
    source: &str,
    from: Option<&str>,
    dest: &str,
    cache_off: bool,
) -> Sample {
    let cache: &[&str] = if cache_off {
        &["--rbd-cache=false"]
    } else {
        &[]
    };
    let started = Instant::now();
    let mut export = client(cluster.export_diff(source, from))
        .args(cache)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the rbd CLI runs");
    let import = client(cluster.rbd_command())
        .args(cache)
        .args(["import-diff", "--no-progress", "-", dest])
        .stdin(export.stdout.take().expect("piped"))
        .spawn()
        .expect("the rbd CLI runs");
    let usage = wait_ok(export, "rbd export-diff") + wait_ok(import, "rbd import-diff");
    sample(started, usage)
}

/// DiffTransfer in a child process (this binary, with [`TRANSFER_CMD`]).
fn ours(
    cluster: &TestCluster,
    source: &str,
    dest: &str,
    from: Option<&str>,
    window: Option<usize>,
    chunk_size: Option<u64>,
) -> Sample {
    let exe = std::env::current_exe().expect("own path");
    let started = Instant::now();
    let mut child = client(Command::new(exe))
        .arg(TRANSFER_CMD)
        .arg(&cluster.conf)
        .args([source, dest, from.unwrap_or("-")])
        .arg(window.map_or("-".into(), |w| w.to_string()))
        .arg(chunk_size.map_or("-".into(), |c| c.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the benchmark binary runs itself");
    let mut json = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut json)
        .expect("read the transfer's stats");
    let usage = wait_ok(child, "DiffTransfer");
    let mut s = sample(started, usage);
    let stats: serde_json::Value =
        serde_json::from_str(&json).expect("the transfer prints its stats");
    s.snapshot_secs = stats["snapshot_elapsed"].as_f64();
    s
}

/// What this machine reads and writes at once: `rbd export-diff` of the snapshots to
/// /dev/null while `rbd bench` writes `bytes` in `io_size` blocks (`pattern` seq or rand) with
/// 16 threads into `scratch`. Both must finish. Then, timed on its own, `rbd snap create` of
/// `scratch`.
pub fn ceiling(
    cluster: &TestCluster,
    source: &str,
    from: Option<&str>,
    scratch: &str,
    bytes: u64,
    io_size: u64,
    pattern: &str,
) -> Sample {
    settle(cluster);
    let started = Instant::now();
    let export = cluster
        .export_diff(source, from)
        .stdout(File::create("/dev/null").expect("/dev/null opens"))
        .spawn()
        .expect("rbd runs");
    let bench = cluster
        .rbd_command()
        .args(["bench", "--io-type", "write", "--io-threads", "16"])
        .args(["--io-size", &io_size.to_string()])
        .args(["--io-total", &bytes.to_string()])
        .args(["--io-pattern", pattern, scratch])
        .stdout(Stdio::null())
        .spawn()
        .expect("rbd runs");
    wait_ok(export, "rbd export-diff (ceiling)");
    wait_ok(bench, "rbd bench (ceiling)");
    let secs = started.elapsed().as_secs_f64();
    let snap_started = Instant::now();
    let snap = cluster
        .rbd_command()
        .args(["snap", "create", "--no-progress", &format!("{scratch}@end")])
        .spawn()
        .expect("rbd runs");
    wait_ok(snap, "rbd snap create (ceiling)");
    Sample {
        secs,
        rss_kib: None,
        cpu_secs: None,
        proxy_cpu_secs: None,
        snapshot_secs: Some(snap_started.elapsed().as_secs_f64()),
    }
}

/// One line saying what the run was on.
pub fn machine_line(cluster: &TestCluster) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = Command::new("ceph")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "machine: {cpus} CPUs, Ceph {version}, one-node cluster {}",
        cluster.conf.display()
    )
}
