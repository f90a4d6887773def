//! `rbd-diffsync-bench`: times `DiffTransfer` against `rbd export-diff | rbd import-diff` and
//! `rbd deep cp` on a live cluster, in one run and in alternating order, next to the copy
//! ceiling of the same machine, and `Verify` against `rbd export | md5sum` of both images;
//! prints one table (see BENCHMARKS.md).
//!
//! Every result is compared by md5 with its source snapshot before it counts.

mod latency;
mod many;
mod measure;
mod report;
mod thin;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use rbd_diffsync::{ClusterSpec, DiffTransfer, ImageSpec, Verify};
use rbd_diffsync_tests::{pattern, TestCluster};

use measure::{Contender, Sample};
use report::Table;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const OBJECT: u64 = 4 * MIB;

/// Times rbd-diffsync against the rbd CLI on a live cluster and prints the table.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// ceph.conf of the cluster [default: $RBD_DIFFSYNC_CONF, else the demo cluster's]
    #[arg(short = 'c', long)]
    conf: Option<PathBuf>,
    /// Repetitions of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Small inputs (256 MiB and 2 GiB images instead of 2 GiB and 20 GiB), for a quick check.
    #[arg(long)]
    small: bool,
    /// Also time DiffTransfer over windows and chunk sizes, to choose the defaults; with
    /// --latency-ms, at each round trip in place of the default setting, --reps times each.
    #[arg(long)]
    sweep: bool,
    /// Repetitions of each setting of the sweep.
    #[arg(long, default_value_t = 1)]
    sweep_reps: usize,
    /// Skip the sparse image case.
    #[arg(long)]
    no_sparse: bool,
    /// Pool of the source images.
    #[arg(long, default_value = "rbd")]
    pool: String,
    /// Pool of the copies.
    #[arg(long, default_value = "backups")]
    dest_pool: String,
    /// Window of DiffTransfer [default: the library's]
    #[arg(long)]
    window: Option<usize>,
    /// Chunk size of DiffTransfer in bytes [default: the library's]
    #[arg(long)]
    chunk_size: Option<u64>,
    /// Instead of the main table, time the pipe (with the rbd CLI's defaults and with
    /// `rbd cache = false`), `rbd deep cp` and DiffTransfer on the dense image behind a delay
    /// proxy between clients and OSDs, at each of these round trips in ms (e.g. `0,1,3`).
    #[arg(long, value_delimiter = ',')]
    latency_ms: Vec<f64>,
    /// Instead of the main table, time a full copy and an incremental of a 5 TiB image
    /// holding 4 MiB (the scan's case), DiffTransfer against the pipe.
    #[arg(long)]
    thin: bool,
    /// With --latency-ms: only these contenders (pipe, pipe-nocache, deepcp, ours).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Instead of the main table: 8 volumes synced at once by sync-many, at each of these
    /// --parallel settings (e.g. `4,8`), against 8 pipes in parallel (see many.rs).
    #[arg(long, value_delimiter = ',')]
    many: Vec<usize>,
    /// Instead of the main table: rate-limited transfers against their cap (see many.rs).
    #[arg(long)]
    max_rate_check: bool,
}

/// What the inputs are made of.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    /// Size of the dense image.
    image: u64,
    /// Random data written in 4 MiB blocks before `s1`.
    data: u64,
    /// Zeros written (as data) after it, before `s1`.
    zeros: u64,
    /// Random 64 KiB writes over the whole image between `s1` and `s2`.
    random: u64,
    /// Size of the sparse image, of which 5% of the objects are written.
    sparse_image: u64,
}

impl Sizes {
    const FULL: Sizes = Sizes {
        image: 2 * GIB,
        data: GIB,
        zeros: 64 * MIB,
        random: 200 * MIB,
        sparse_image: 20 * GIB,
    };
    const SMALL: Sizes = Sizes {
        image: 256 * MIB,
        data: 128 * MIB,
        zeros: 8 * MIB,
        random: 25 * MIB,
        sparse_image: 2 * GIB,
    };

    fn sparse_objects(&self) -> u64 {
        self.sparse_image / OBJECT / 20
    }
}

fn main() {
    let mut raw = std::env::args();
    match raw.nth(1).as_deref() {
        Some(measure::TRANSFER_CMD) => std::process::exit(transfer_child(raw.collect())),
        Some(measure::VERIFY_CMD) => std::process::exit(verify_child(raw.collect())),
        Some(latency::PROXY_CMD) => std::process::exit(latency::proxy_child(raw.collect())),
        Some(many::MANY_CMD) => std::process::exit(many::child(raw.collect())),
        _ => {}
    }
    let args = Args::parse();
    let conf = args
        .conf
        .clone()
        .or_else(|| std::env::var_os("RBD_DIFFSYNC_CONF").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/tmp/rbd-diffsync-demo/ceph.conf"));
    if !conf.is_file() {
        eprintln!(
            "rbd-diffsync-bench: {} is not a file: start a cluster with \
             `bash scripts/cluster.sh start DIR PORT` and pass --conf DIR/ceph.conf",
            conf.display()
        );
        std::process::exit(2);
    }
    let reps = args.reps.max(1);
    let sizes = if args.small {
        Sizes::SMALL
    } else {
        Sizes::FULL
    };
    let bench = Bench {
        cluster: TestCluster { conf },
        pool: args.pool.clone(),
        dest_pool: args.dest_pool.clone(),
        tag: format!("bench{}", std::process::id()),
    };
    let ours = Contender::Ours {
        window: args.window,
        chunk_size: args.chunk_size,
    };

    println!("# rbd-diffsync-bench");
    println!();
    println!("{}", measure::machine_line(&bench.cluster));
    if args.thin {
        thin::run(
            &bench.cluster,
            &bench.pool,
            &bench.dest_pool,
            &bench.tag,
            reps,
        );
        return;
    }
    if !args.many.is_empty() || args.max_rate_check {
        if !args.many.is_empty() {
            many::run_many(&bench, reps, &args.many);
        }
        if args.max_rate_check {
            many::run_rate_check(&bench, reps);
        }
        return;
    }
    let sparse = if args.no_sparse || !args.latency_ms.is_empty() {
        String::new()
    } else {
        format!(
            "; sparse {} GiB image with {} of its objects written",
            sizes.sparse_image / GIB,
            sizes.sparse_objects()
        )
    };
    println!(
        "inputs: dense {} MiB image ({} MiB random data in 4 MiB blocks, {} MiB of zeros, \
         snapshot s1; {} MiB of random 64 KiB writes, snapshot s2){sparse}; {} repetitions, \
         medians",
        sizes.image / MIB,
        sizes.data / MIB,
        sizes.zeros / MIB,
        sizes.random / MIB,
        reps
    );
    println!();

    if !args.latency_ms.is_empty() {
        let dense = bench.make_dense(&sizes);
        let mut contenders = vec![
            Contender::Pipe,
            Contender::PipeNoCache,
            Contender::DeepCp,
            ours,
        ];
        if !args.only.is_empty() {
            contenders.retain(|c| args.only.iter().any(|o| o == c.slug()));
        }
        if args.sweep {
            contenders.retain(|c| !matches!(c, Contender::Ours { .. }));
            contenders.extend(sweep_settings());
        }
        let table = bench.latency_case(&dense, &sizes, reps, &args.latency_ms, &contenders);
        if args.sweep {
            println!("## Sweep of DiffTransfer's window and chunk size behind the proxy");
            println!();
            println!("{}", table.render_latency_sweep());
            println!(
                "Each cell: median seconds (multiple of the best setting's median there). The \
                 default is to be within 1.10 of the best in every column."
            );
        }
        bench.remove(&dense.image);
        return;
    }
    let dense = bench.make_dense(&sizes);
    let mut table = Table::default();
    bench.dense_case(&dense, &sizes, reps, ours, &mut table);
    let case = format!("verify, {} MiB image against its copy", sizes.image / MIB);
    bench.verify_case(&dense, &case, reps, &mut table);
    if !args.no_sparse {
        let sparse = bench.make_sparse(&sizes);
        bench.sparse_case(&sparse, &sizes, reps, ours, &mut table);
        let case = format!(
            "verify, sparse {} GiB image against its copy",
            sizes.sparse_image / GIB
        );
        bench.verify_case(&sparse, &case, reps, &mut table);
        bench.remove(&sparse.image);
    }
    println!("{}", table.render());
    println!(
        "Verify rows: MiB/s of the image size (each image is read), × pipe is against \
         `rbd export | md5sum` of both images."
    );
    if args.sweep {
        let mut sweep = Table::default();
        for c in sweep_settings() {
            bench.ours_full_and_incremental(&dense, args.sweep_reps, c, &mut sweep);
        }
        println!("## Sweep of DiffTransfer's window and chunk size");
        println!();
        println!("{}", sweep.render_sweep());
    }
    bench.remove(&dense.image);
}

/// The settings of DiffTransfer that `--sweep` times: windows of 8 to 32 chunks of 1 to 4 MiB.
fn sweep_settings() -> Vec<Contender> {
    let mut settings = Vec::new();
    for chunk in [MIB, 2 * MIB, 4 * MIB] {
        for window in [8, 16, 32] {
            settings.push(Contender::Ours {
                window: Some(window),
                chunk_size: Some(chunk),
            });
        }
    }
    settings
}

/// The child process that runs one DiffTransfer, so that its peak RSS is its own:
/// `TRANSFER_CMD CONF SOURCE DEST FROM_SNAP|- WINDOW|- CHUNK|-`.
fn transfer_child(args: Vec<String>) -> i32 {
    let [conf, source, dest, from, window, chunk] = &args[..] else {
        eprintln!(
            "usage: {} CONF SOURCE DEST FROM|- WINDOW|- CHUNK|-",
            measure::TRANSFER_CMD
        );
        return 2;
    };
    let parse = |s: &str| -> Option<ImageSpec> { s.parse().ok() };
    let (Some(source), Some(dest)) = (parse(source), parse(dest)) else {
        eprintln!("bad image spec");
        return 2;
    };
    let mut t = DiffTransfer::new(source, dest).cluster(ClusterSpec::new().conf(conf));
    if from != "-" {
        t = t.from_snap(from.as_str());
    }
    if let Ok(w) = window.parse() {
        t = t.window(w);
    }
    if let Ok(c) = chunk.parse() {
        t = t.chunk_size(c);
    }
    match t.run() {
        Ok(stats) => {
            println!(
                "{}",
                serde_json::to_string(&stats).expect("stats serialise")
            );
            0
        }
        Err(e) => {
            eprintln!("transfer failed: {e}");
            1
        }
    }
}

/// The child process that runs one Verify: `VERIFY_CMD CONF A B`; exits 0 when A equals B.
fn verify_child(args: Vec<String>) -> i32 {
    let [conf, a, b] = &args[..] else {
        eprintln!("usage: {} CONF A B", measure::VERIFY_CMD);
        return 2;
    };
    let parse = |s: &str| -> Option<ImageSpec> { s.parse().ok() };
    let (Some(a), Some(b)) = (parse(a), parse(b)) else {
        eprintln!("bad image spec");
        return 2;
    };
    match Verify::new(a, b)
        .cluster(ClusterSpec::new().conf(conf))
        .run()
    {
        Ok(stats) => {
            println!(
                "{}",
                serde_json::to_string(&stats).expect("stats serialise")
            );
            0
        }
        Err(e) => {
            eprintln!("verify failed: {e}");
            1
        }
    }
}

/// A source image and the md5 sums of its snapshots.
#[derive(Debug)]
struct Input {
    image: String,
    /// Its size, which the copies and scratch images are created with.
    size: u64,
    md5_s1: String,
    md5_s2: Option<String>,
    /// Changed bytes: what was written before s1, and between s1 and s2.
    full_bytes: u64,
    incr_bytes: u64,
}

#[derive(Debug)]
struct Bench {
    cluster: TestCluster,
    pool: String,
    dest_pool: String,
    tag: String,
}

impl Bench {
    fn remove(&self, image: &str) {
        // Both may fail when the image is already gone; that is fine.
        let _ = self
            .cluster
            .rbd_output(&["snap", "purge", "--no-progress", image]);
        let _ = self.cluster.rbd_output(&["rm", "--no-progress", image]);
    }

    /// A scratch name in the destination pool.
    fn dest(&self, what: &str) -> String {
        format!("{}/{}-{what}", self.dest_pool, self.tag)
    }

    fn make_dense(&self, sizes: &Sizes) -> Input {
        let image = format!("{}/{}-dense", self.pool, self.tag);
        eprintln!("creating {image}");
        self.cluster.create(&image, sizes.image, None);
        let img = self.cluster.open(&image);
        let mut off = 0;
        while off < sizes.data {
            let len = OBJECT.min(sizes.data - off);
            img.write(off, &pattern(off + 1, len as usize))
                .expect("write input data");
            off += len;
        }
        let zeros = vec![0; OBJECT as usize];
        let mut off = sizes.data;
        while off < sizes.data + sizes.zeros {
            let len = OBJECT.min(sizes.data + sizes.zeros - off);
            img.write(off, &zeros[..len as usize])
                .expect("write input zeros");
            off += len;
        }
        drop(img);
        self.cluster.snap(&image, "s1");
        let img = self.cluster.open(&image);
        let slots = sizes.image / (64 * 1024);
        let mut rng = Rng(0x5EED);
        for i in 0..sizes.random / (64 * 1024) {
            let off = rng.below(slots) * 64 * 1024;
            img.write(off, &pattern(1 << 40 | i, 64 * 1024))
                .expect("write input random block");
        }
        drop(img);
        self.cluster.snap(&image, "s2");
        Input {
            md5_s1: self.cluster.md5(&format!("{image}@s1")),
            md5_s2: Some(self.cluster.md5(&format!("{image}@s2"))),
            image,
            size: sizes.image,
            full_bytes: sizes.data + sizes.zeros,
            incr_bytes: sizes.random,
        }
    }

    fn make_sparse(&self, sizes: &Sizes) -> Input {
        let image = format!("{}/{}-sparse", self.pool, self.tag);
        eprintln!("creating {image}");
        self.cluster.create(&image, sizes.sparse_image, None);
        let img = self.cluster.open(&image);
        let objects = sizes.sparse_image / OBJECT;
        let mut chosen: Vec<u64> = (0..objects).collect();
        let mut rng = Rng(0x5BA55E);
        // A partial Fisher-Yates shuffle picks distinct objects.
        let n = sizes.sparse_objects();
        for i in 0..n as usize {
            let j = i + rng.below(objects - i as u64) as usize;
            chosen.swap(i, j);
        }
        for &object in &chosen[..n as usize] {
            let off = object * OBJECT;
            img.write(off, &pattern(off + 7, OBJECT as usize))
                .expect("write sparse object");
        }
        drop(img);
        self.cluster.snap(&image, "s1");
        Input {
            md5_s1: self.cluster.md5(&format!("{image}@s1")),
            md5_s2: None,
            image,
            size: sizes.sparse_image,
            full_bytes: n * OBJECT,
            incr_bytes: 0,
        }
    }

    /// Checks a copy against the source's sum; a mismatch ends the run.
    fn verify(&self, copy: &str, expected: &str, what: &str) {
        let got = self.cluster.md5(copy);
        assert_eq!(got, expected, "{what}: {copy} differs from its source");
    }

    /// Times one full transfer (to s1) and then one incremental (s1 to s2) of `input` by `who`,
    /// verifying both.
    fn full_then_incremental(&self, input: &Input, who: Contender) -> (Sample, Option<Sample>) {
        let dest = self.dest(who.slug());
        self.remove(&dest);
        let src1 = format!("{}@s1", input.image);
        let full = who.full(&self.cluster, &src1, &dest, input.size);
        let copy_s1 = match who {
            Contender::DeepCp => dest.clone(),
            _ => format!("{dest}@s1"),
        };
        self.verify(&copy_s1, &input.md5_s1, &who.name());
        let incr = match (&input.md5_s2, who) {
            (Some(md5_s2), Contender::Pipe | Contender::PipeNoCache | Contender::Ours { .. }) => {
                let src2 = format!("{}@s2", input.image);
                let s = who.incremental(&self.cluster, &src2, &dest, "s1");
                self.verify(&format!("{dest}@s2"), md5_s2, &who.name());
                Some(s)
            }
            _ => None,
        };
        self.remove(&dest);
        (full, incr)
    }

    fn ceiling(&self, input: &Input, incremental: bool) -> Sample {
        let scratch = self.dest("scratch");
        self.remove(&scratch);
        self.cluster.create(&scratch, input.size, None);
        let s = if incremental {
            measure::ceiling(
                &self.cluster,
                &format!("{}@s2", input.image),
                Some("s1"),
                &scratch,
                input.incr_bytes,
                64 * 1024,
                "rand",
            )
        } else {
            measure::ceiling(
                &self.cluster,
                &format!("{}@s1", input.image),
                None,
                &scratch,
                input.full_bytes,
                OBJECT,
                "seq",
            )
        };
        self.remove(&scratch);
        s
    }

    fn dense_case(
        &self,
        input: &Input,
        sizes: &Sizes,
        reps: usize,
        ours: Contender,
        t: &mut Table,
    ) {
        let full = format!("full, {} MiB image", sizes.image / MIB);
        let incr = format!("incremental s1→s2, {} MiB image", sizes.image / MIB);
        let contenders = [Contender::Pipe, Contender::DeepCp, ours, Contender::Ceiling];
        for rep in 0..reps {
            // Alternate the order, so that no contender always runs on a cluster just busied
            // by the same other one.
            for k in 0..contenders.len() {
                let who = contenders[(k + rep) % contenders.len()];
                eprintln!("rep {}/{reps}: {}", rep + 1, who.name());
                match who {
                    Contender::Ceiling => {
                        for (case, bytes, incremental) in [
                            (&full, input.full_bytes, false),
                            (&incr, input.incr_bytes, true),
                        ] {
                            let s = self.ceiling(input, incremental);
                            t.add(case, who, bytes, s);
                            let with_snap = Sample {
                                secs: s.secs + s.snapshot_secs.unwrap_or(0.0),
                                ..s
                            };
                            t.add(case, Contender::CeilingSnap, bytes, with_snap);
                        }
                    }
                    _ => {
                        let (f, i) = self.full_then_incremental(input, who);
                        t.add(&full, who, input.full_bytes, f);
                        if let Some(i) = i {
                            t.add(&incr, who, input.incr_bytes, i);
                        }
                    }
                }
            }
        }
    }

    fn sparse_case(
        &self,
        input: &Input,
        sizes: &Sizes,
        reps: usize,
        ours: Contender,
        t: &mut Table,
    ) {
        let case = format!(
            "full, sparse {} GiB image ({} MiB data)",
            sizes.sparse_image / GIB,
            input.full_bytes / MIB
        );
        let contenders = [Contender::Pipe, Contender::DeepCp, ours];
        for rep in 0..reps {
            for k in 0..contenders.len() {
                let who = contenders[(k + rep) % contenders.len()];
                eprintln!("rep {}/{reps}: {} (sparse)", rep + 1, who.name());
                let (f, _) = self.full_then_incremental(input, who);
                t.add(&case, who, input.full_bytes, f);
            }
        }
    }

    /// Copies `input` at s1 with DiffTransfer, then times `rbd export | md5sum` of both
    /// against `Verify`, alternating their order.
    fn verify_case(&self, input: &Input, case: &str, reps: usize, t: &mut Table) {
        let copy = self.dest("verify");
        self.remove(&copy);
        let source = format!("{}@s1", input.image);
        let ours = Contender::Ours {
            window: None,
            chunk_size: None,
        };
        ours.full(&self.cluster, &source, &copy, input.size);
        let copy_s1 = format!("{copy}@s1");
        let contenders = [Contender::ExportMd5, Contender::Verify];
        for rep in 0..reps {
            for k in 0..contenders.len() {
                let who = contenders[(k + rep) % contenders.len()];
                eprintln!("rep {}/{reps}: {} ({case})", rep + 1, who.name());
                let s = who.compare(&self.cluster, &source, &copy_s1, &input.md5_s1);
                t.add(case, who, input.size, s);
            }
        }
        self.remove(&copy);
    }

    /// The dense case behind the latency proxy, at each round trip of `delays_ms`: every
    /// contender behind the same proxy process, in an order that rotates between repetitions.
    fn latency_case(
        &self,
        input: &Input,
        sizes: &Sizes,
        reps: usize,
        delays_ms: &[f64],
        contenders: &[Contender],
    ) -> Table {
        let dir = std::env::temp_dir().join(format!("{}-latency", self.tag));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        let shim = latency::build_shim(&dir);
        let full = format!("full, {} MiB image", sizes.image / MIB);
        let incr = format!("incremental s1→s2, {} MiB image", sizes.image / MIB);
        let mut t = Table::default();
        for &delay in delays_ms {
            let rig = latency::Rig::start(&self.cluster, &shim, delay);
            measure::set_client_env(rig.env.clone(), Some(rig.pid()));
            let rtt = format!("{delay} ms");
            for rep in 0..reps {
                for k in 0..contenders.len() {
                    let who = contenders[(k + rep) % contenders.len()];
                    eprintln!("{rtt}, rep {}/{reps}: {}", rep + 1, who.name());
                    let (f, i) = self.full_then_incremental(input, who);
                    t.add_at(&full, &rtt, who, input.full_bytes, f);
                    if let Some(i) = i {
                        t.add_at(&incr, &rtt, who, input.incr_bytes, i);
                    }
                }
            }
            measure::set_client_env(Vec::new(), None);
            rig.stop();
        }
        let _ = std::fs::remove_dir_all(&dir);
        println!("## Behind the latency proxy");
        println!();
        println!("{}", t.render_latency());
        println!(
            "Round trip: added by the proxy between the clients and the OSD (each direction \
             delayed by half), monitor traffic direct. × pipe: against the pipe with the \
             CLI's defaults at the same round trip; × no-cache pipe: against the pipe with \
             `rbd cache = false`. Client CPU: user + system of every client process, summed \
             (median), and per GiB of the case's changed bytes; CPU / pipe's: against the \
             pipe's two processes at the same round trip; proxy CPU: the proxy's during the \
             run (median)."
        );
        t
    }

    fn ours_full_and_incremental(&self, input: &Input, reps: usize, who: Contender, t: &mut Table) {
        for rep in 0..reps {
            eprintln!("sweep rep {}/{reps}: {}", rep + 1, who.name());
            let (f, i) = self.full_then_incremental(input, who);
            t.add("full", who, input.full_bytes, f);
            if let Some(i) = i {
                t.add("incremental", who, input.incr_bytes, i);
            }
        }
    }
}

/// A small deterministic generator for offsets (xorshift64*).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Lets the cluster settle between timed runs: the OSD trims the snapshots of removed copies
/// and finishes deferred work, and the monitor is not in the middle of a proposal round (every
/// snapshot creation waits for the next one).
fn settle(cluster: &TestCluster) {
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    while started.elapsed() < Duration::from_secs(120) {
        let stat = Command::new("ceph")
            .arg("-c")
            .arg(&cluster.conf)
            .args(["pg", "stat"])
            .output();
        match stat {
            Ok(out) if out.status.success() => {
                if !String::from_utf8_lossy(&out.stdout).contains("snaptrim") {
                    return;
                }
            }
            _ => return,
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
