//! Helpers for the live-cluster tests: where the clusters are, the `rbd` CLI as the oracle, and
//! data written through librbd.
//!
//! The clusters are named by `RBD_DIFFSYNC_CONF` (and `RBD_DIFFSYNC_CONF2` for cross-cluster
//! tests): paths of ceph.conf files of clusters started by `scripts/cluster.sh`. A test that
//! needs a cluster that is not there fails with a message saying how to start it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use rbd_diffsync::internals::{normalize, Cluster, DiffExtent, Image, Pool};
use rbd_diffsync::{ClusterSpec, DiffTransfer, ImageSpec, TransferStats, Verify};

pub use rbd_diffsync;

const MIB: u64 = 1 << 20;

/// A live cluster the tests use.
#[derive(Clone, Debug)]
pub struct TestCluster {
    /// Its ceph.conf.
    pub conf: PathBuf,
}

fn cluster_from_env(var: &str) -> TestCluster {
    match std::env::var_os(var) {
        Some(conf) if Path::new(&conf).is_file() => TestCluster { conf: conf.into() },
        Some(conf) => panic!(
            "{var}={} is not a file: start a cluster with `scripts/cluster.sh start DIR PORT` \
             (scripts/test.sh starts two and sets this)",
            Path::new(&conf).display()
        ),
        None => panic!(
            "{var} is not set: these tests need a live Ceph cluster; run `bash scripts/test.sh`, \
             or start one with `scripts/cluster.sh start DIR PORT` and export {var}=DIR/ceph.conf"
        ),
    }
}

/// The main test cluster (`RBD_DIFFSYNC_CONF`).
pub fn cluster() -> TestCluster {
    cluster_from_env("RBD_DIFFSYNC_CONF")
}

/// The second test cluster (`RBD_DIFFSYNC_CONF2`), for cross-cluster tests.
pub fn cluster2() -> TestCluster {
    cluster_from_env("RBD_DIFFSYNC_CONF2")
}

/// A name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deterministic, incompressible bytes: never all-zero over 4 KiB.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl TestCluster {
    /// client.admin through ceph.conf.
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec::new().conf(&self.conf)
    }

    /// client.diffsync (rbd profiles only) with its keyring given explicitly, as
    /// `scripts/cluster.sh` creates it.
    pub fn restricted_spec(&self) -> ClusterSpec {
        let keyring = self.conf.with_file_name("client.diffsync.keyring");
        assert!(
            keyring.is_file(),
            "{} is missing: the cluster was not started by scripts/cluster.sh",
            keyring.display()
        );
        ClusterSpec::new()
            .conf(&self.conf)
            .id("diffsync")
            .keyring(keyring)
    }

    fn connection(&self) -> Cluster {
        Cluster::connect(&self.spec()).expect("connect to the test cluster")
    }

    /// An I/O context on `pool[/ns]`.
    pub fn pool(&self, spec: &ImageSpec) -> Pool {
        self.connection()
            .pool(spec.pool().unwrap_or("rbd"), spec.namespace())
            .expect("open pool")
    }

    /// Runs `rbd -c CONF args...`, panicking with its stderr when it fails.
    pub fn rbd(&self, args: &[&str]) -> String {
        let out = self.rbd_output(args);
        assert!(
            out.status.success(),
            "rbd {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("rbd prints UTF-8")
    }

    /// Runs `rbd -c CONF args...` and returns what it did.
    pub fn rbd_output(&self, args: &[&str]) -> Output {
        self.rbd_command()
            .args(args)
            .output()
            .expect("the rbd CLI runs (scripts/cluster.sh install puts it there)")
    }

    /// `rbd -c CONF`, reading nothing from stdin, for arguments to be added.
    pub fn rbd_command(&self) -> Command {
        let mut rbd = Command::new("rbd");
        rbd.arg("-c").arg(&self.conf).stdin(Stdio::null());
        rbd
    }

    /// `rbd create --size SIZE [--object-size OBJ] spec`.
    pub fn create(&self, spec: &str, size: u64, object_size: Option<u64>) {
        let size = format!("{}K", size / 1024);
        let mut args = vec!["create", "--size", &size];
        let obj;
        if let Some(o) = object_size {
            obj = format!("{}K", o / 1024);
            args.extend(["--object-size", &obj]);
        }
        args.push(spec);
        self.rbd(&args);
    }

    /// Opens `spec` (HEAD) for writing through librbd.
    pub fn open(&self, spec: &str) -> Image {
        let spec = ImageSpec::parse(spec).unwrap();
        Image::open(&self.pool(&spec), spec.image()).expect("open test image")
    }

    /// Writes `len` bytes of [`pattern`]`(seed)` at `offset` of `spec`.
    pub fn write(&self, spec: &str, offset: u64, len: usize, seed: u64) {
        self.open(spec)
            .write(offset, &pattern(seed, len))
            .expect("write test data");
    }

    /// `rbd snap create spec@snap`.
    pub fn snap(&self, spec: &str, snap: &str) {
        self.rbd(&["snap", "create", &format!("{spec}@{snap}"), "--no-progress"]);
    }

    /// `rbd export spec - | md5sum`, started: the two processes, md5sum's stdout piped.
    pub fn spawn_md5(&self, spec: &str) -> (Child, Child) {
        let mut export = self
            .rbd_command()
            .args(["export", "--no-progress", spec, "-"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the rbd CLI runs");
        let sum = Command::new("md5sum")
            .stdin(export.stdout.take().unwrap())
            .stdout(Stdio::piped())
            .spawn()
            .expect("md5sum runs");
        (export, sum)
    }

    /// `rbd export spec - | md5sum`: the oracle every result is compared with.
    pub fn md5(&self, spec: &str) -> String {
        let (mut export, sum) = self.spawn_md5(spec);
        let sum = sum.wait_with_output().expect("md5sum runs");
        let status = export.wait().unwrap();
        assert!(status.success(), "rbd export {spec} failed");
        assert!(sum.status.success(), "md5sum failed");
        String::from_utf8_lossy(&sum.stdout)
            .split_whitespace()
            .next()
            .expect("md5sum prints a sum")
            .to_owned()
    }

    /// The snapshot names of an image, oldest first.
    pub fn snaps(&self, image: &str) -> Vec<String> {
        let json = self.rbd(&["snap", "ls", "--format", "json", image]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut snaps: Vec<(u64, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_u64().unwrap(),
                    s["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        snaps.sort();
        snaps.into_iter().map(|(_, n)| n).collect()
    }

    /// `rbd info --format json image`.
    pub fn info(&self, image: &str) -> serde_json::Value {
        serde_json::from_str(&self.rbd(&["info", "--format", "json", image])).unwrap()
    }

    /// The value of image metadata `key`, as `rbd image-meta get` reads it.
    pub fn meta(&self, image: &str, key: &str) -> Option<String> {
        let out = self.rbd_output(&["image-meta", "get", image, key]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Asserts that `a` and `b` read the same (`rbd export | md5sum`).
    pub fn assert_same(&self, a: &str, b: &str) {
        assert_eq!(self.md5(a), self.md5(b), "{a} and {b} differ");
    }

    /// A pool of its own (`rbd` application) with a quota of `max_bytes`.
    pub fn pool_with_quota(&self, max_bytes: u64) -> String {
        let pool = unique("quota");
        self.ceph(&["osd", "pool", "create", &pool, "8"]);
        self.ceph(&["osd", "pool", "application", "enable", &pool, "rbd"]);
        self.rbd(&["pool", "init", &pool]);
        let max_bytes = max_bytes.to_string();
        self.ceph(&["osd", "pool", "set-quota", &pool, "max_bytes", &max_bytes]);
        pool
    }

    /// `ceph -c <conf> args...`, which must succeed; its stdout.
    pub fn ceph(&self, args: &[&str]) -> String {
        let out = Command::new("ceph")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run ceph");
        assert!(
            out.status.success(),
            "ceph {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("ceph prints UTF-8")
    }

    /// The pid of the cluster's OSD (`scripts/cluster.sh` keeps it beside its ceph.conf).
    pub fn osd_pid(&self) -> i32 {
        let file = self.conf.with_file_name("run").join("osd.0.pid");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .expect("a pid")
    }

    /// Whether the image exists.
    pub fn exists(&self, image: &str) -> bool {
        self.rbd_output(&["info", image]).status.success()
    }

    /// `rbd diff [--from-snap from] image` as `(offset, length, exists)` triples.
    pub fn diff(&self, image: &str, from_snap: Option<&str>) -> Vec<(u64, u64, bool)> {
        let mut args = vec!["diff", "--format", "json"];
        if let Some(from) = from_snap {
            args.extend(["--from-snap", from]);
        }
        args.push(image);
        let v: serde_json::Value = serde_json::from_str(&self.rbd(&args)).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["offset"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                    e["exists"].as_str() == Some("true"),
                )
            })
            .collect()
    }

    /// [`diff`](Self::diff) as extents, neighbours of the same kind merged as the transfer
    /// merges them.
    pub fn diff_extents(&self, image: &str, from_snap: Option<&str>) -> Vec<DiffExtent> {
        normalize(
            self.diff(image, from_snap)
                .into_iter()
                .map(|(offset, len, exists)| DiffExtent {
                    offset,
                    len,
                    exists,
                })
                .collect(),
        )
    }

    /// A fresh image name in `pool`.
    pub fn new_image(&self, pool: &str, prefix: &str) -> String {
        format!("{pool}/{}", unique(prefix))
    }

    /// Our transfer on this cluster (both sides).
    pub fn transfer(&self, source: &str, dest: &str, from_snap: Option<&str>) -> DiffTransfer {
        let mut t =
            DiffTransfer::new(source.parse().unwrap(), dest.parse().unwrap()).cluster(self.spec());
        if let Some(from) = from_snap {
            t = t.from_snap(from);
        }
        t
    }

    /// Runs our transfer and checks the result against the source with the oracle, and with
    /// `Verify`.
    pub fn sync_and_check(
        &self,
        source: &str,
        dest: &str,
        from_snap: Option<&str>,
    ) -> TransferStats {
        let stats = self
            .transfer(source, dest, from_snap)
            .run()
            .unwrap_or_else(|e| panic!("sync {source} -> {dest} (from {from_snap:?}): {e}"));
        let snap = source
            .split_once('@')
            .map(|(_, s)| s)
            .expect("source names a snapshot");
        assert_eq!(
            self.md5(&format!("{dest}@{snap}")),
            self.md5(source),
            "{dest}@{snap} differs from {source}"
        );
        // The oracle agrees: so must Verify, on every layout the tests make.
        let copy = format!("{dest}@{snap}");
        let verified = Verify::new(source.parse().unwrap(), copy.parse().unwrap())
            .cluster(self.spec())
            .run();
        assert!(
            verified.is_ok(),
            "verify {source} against {copy}: {verified:?}"
        );
        stats
    }

    /// `rbd export-diff [--from-snap F] source - | rbd import-diff - dest`, the pipe cinder runs.
    pub fn pipe(&self, source: &str, dest: &str, from_snap: Option<&str>) {
        let (mut export, import) = self.spawn_pipe(source, dest, from_snap, Stdio::piped());
        let import = import.wait_with_output().unwrap();
        assert!(
            export.wait().unwrap().success(),
            "rbd export-diff {source} failed"
        );
        assert!(
            import.status.success(),
            "rbd import-diff {dest}: {}",
            String::from_utf8_lossy(&import.stderr)
        );
    }

    /// `rbd export-diff [--from-snap F] source -`: the diff stream on stdout.
    pub fn export_diff(&self, source: &str, from_snap: Option<&str>) -> Command {
        let mut export = self.rbd_command();
        export.args(["export-diff", "--no-progress"]);
        if let Some(from) = from_snap {
            export.args(["--from-snap", from]);
        }
        export.args([source, "-"]);
        export
    }

    /// Starts that pipe: the `export-diff` and `import-diff` processes, in that order, the
    /// latter's stderr going to `import_stderr`.
    pub fn spawn_pipe(
        &self,
        source: &str,
        dest: &str,
        from_snap: Option<&str>,
        import_stderr: Stdio,
    ) -> (Child, Child) {
        let mut export = self
            .export_diff(source, from_snap)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the rbd CLI runs");
        let import = self
            .rbd_command()
            .args(["import-diff", "--no-progress", "-", dest])
            .stdin(export.stdout.take().expect("piped"))
            .stderr(import_stderr)
            .spawn()
            .expect("the rbd CLI runs");
        (export, import)
    }
}

/// Asserts that `err` is of `kind` with `errno`, naming it if not.
#[track_caller]
pub fn assert_kind(err: &rbd_diffsync::Error, kind: rbd_diffsync::ErrorKind, errno: i32) {
    assert_eq!((err.kind(), err.errno()), (kind, errno), "{err}");
}

/// A command's stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a command's exit status, and returns the one JSON object on its stdout.
pub fn json_exit(out: &Output, status: i32) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(status), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `n` MiB.
pub const fn mib(n: u64) -> u64 {
    n * MIB
}

/// The command-line binary, built once per test run.
pub fn cli() -> Command {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    Command::new(BIN.get_or_init(|| built(&["--features", "cli"], "rbd-diffsync")))
}

/// The library's example `name` (`rbd-diffsync/examples/NAME.rs`), built once per test run.
pub fn example(name: &str) -> Command {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    let bin = BIN.get_or_init(|| built(&["--example", name], &format!("examples/{name}")));
    Command::new(bin)
}

/// Builds a target of the core crate (debug); returns the path of `binary` under the target
/// directory's `debug`.
fn built(args: &[&str], binary: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "-q", "-p", "rbd-diffsync"])
        .args(args)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {binary} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), PathBuf::from);
    target.join("debug").join(binary)
}

/// A source whose snapshot `s1` is on a new destination, and two later snapshots:
/// - `s2` writes 24 MiB into objects that did not exist at `s1` and overwrites some old data;
/// - `s3` discards a third of that (whole objects, gone again since `s1`), writes zeros as
///   data over another third, and adds data elsewhere.
///
/// An interrupted `s1..s2` leaves data on the destination where `s3` reads zeros, in ranges
/// that read zeros at `s1` on both images: a rerun up to `s3` must not trust them to.
#[derive(Debug)]
pub struct Chain {
    /// The cluster.
    pub c: TestCluster,
    /// The source image.
    pub src: String,
    /// The destination image, holding `s1`.
    pub dst: String,
}

pub fn chain(name: &str) -> Chain {
    let c = cluster();
    let src = c.new_image("rbd", name);
    let dst = c.new_image("backups", name);
    c.create(&src, mib(96), None);
    c.write(&src, 0, mib(16) as usize, 1);
    c.snap(&src, "s1");
    c.sync_and_check(&format!("{src}@s1"), &dst, None);
    c.write(&src, mib(32), mib(24) as usize, 2);
    c.write(&src, mib(4) + 4096, 300_000, 3);
    c.snap(&src, "s2");
    let img = c.open(&src);
    img.discard(mib(32), mib(8)).unwrap();
    img.write(mib(40), &vec![0u8; mib(8) as usize]).unwrap();
    img.write(mib(80), &pattern(4, mib(4) as usize)).unwrap();
    drop(img);
    c.snap(&src, "s3");
    Chain { c, src, dst }
}
