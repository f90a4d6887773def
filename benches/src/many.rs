//! `--many`: 8 volumes synced at once by `SyncMany` (what `rbd-diffsync sync-many` runs, in a
//! child process) against 8 `rbd export-diff | rbd import-diff` pipes run in parallel, full
//! then incremental. `--max-rate-check`: the measured rate of rate-limited transfers against
//! their cap.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbd_diffsync::{ClusterSpec, DiffTransfer, Phase, SyncMany, VolumeState};
use rbd_diffsync_tests::TestCluster;

use crate::measure::{self, wait_ok};
use crate::report::median;
use crate::{settle, Bench, Input, Sizes, MIB};

/// First argument that makes the benchmark binary run one batch itself:
/// `MANY_CMD CONF PARALLEL BUDGET_BYTES`, then `SOURCE DEST FROM|-` lines on stdin.
pub const MANY_CMD: &str = "__many";

/// Volumes of the batch.
const VOLUMES: usize = 8;

/// The child process that runs one batch; exits 0 when every transfer succeeded.
pub fn child(args: Vec<String>) -> i32 {
    let [conf, parallel, budget] = &args[..] else {
        eprintln!("usage: {MANY_CMD} CONF PARALLEL BUDGET_BYTES < jobs");
        return 2;
    };
    // As the rbd-diffsync binary does before any thread starts: one malloc heap.
    // SAFETY: mallopt only changes the allocator's settings; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let mut jobs = String::new();
    std::io::stdin()
        .read_to_string(&mut jobs)
        .expect("read the jobs");
    let spec = ClusterSpec::new().conf(conf);
    let transfers = jobs
        .lines()
        .map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            let t = DiffTransfer::new(w[0].parse().expect("source"), w[1].parse().expect("dest"))
                .cluster(spec.clone());
            match w[2] {
                "-" => t,
                from => t.from_snap(from),
            }
        })
        .collect();
    let results = SyncMany::new(transfers)
        .parallel(parallel.parse().expect("parallel"))
        .memory_budget(budget.parse().expect("budget"))
        .run();
    let mut ok = true;
    for r in results {
        if let Err(e) = r {
            eprintln!("transfer failed: {e}");
            ok = false;
        }
    }
    i32::from(!ok)
}

/// One timed run of a whole batch: seconds, peak RSS in MiB (of the one process, or summed
/// over the pipes' processes) and CPU seconds summed.
#[derive(Clone, Copy, Debug)]
struct Run {
    secs: f64,
    rss_mib: f64,
    cpu: f64,
}

struct Batch<'a> {
    cluster: &'a TestCluster,
    inputs: Vec<Input>,
    dests: Vec<String>,
}

impl Batch<'_> {
    fn remove_dests(&self, bench: &Bench) {
        for d in &self.dests {
            bench.remove(d);
        }
    }

    /// `SyncMany` in a child process, to `snap` (from `from`).
    fn ours(&self, snap: &str, from: Option<&str>, parallel: usize, budget: usize) -> Run {
        settle(self.cluster);
        let jobs: String = self
            .inputs
            .iter()
            .zip(&self.dests)
            .map(|(i, d)| format!("{}@{snap} {d} {}\n", i.image, from.unwrap_or("-")))
            .collect();
        let exe = std::env::current_exe().expect("own path");
        let started = Instant::now();
        let mut child = Command::new(exe)
            .arg(MANY_CMD)
            .arg(&self.cluster.conf)
            .args([parallel.to_string(), budget.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the benchmark binary runs itself");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(jobs.as_bytes())
            .expect("write the jobs");
        let measure::Usage {
            rss_kib: rss,
            cpu_secs: cpu,
        } = wait_ok(child, "SyncMany");
        Run {
            secs: started.elapsed().as_secs_f64(),
            rss_mib: rss as f64 / 1024.0,
            cpu,
        }
    }

    /// The 8 pipes at once, to `snap` (from `from`); a full one creates the destinations
    /// first, as cinder does.
    fn pipes(&self, snap: &str, from: Option<&str>) -> Run {
        if from.is_none() {
            for (i, d) in self.inputs.iter().zip(&self.dests) {
                self.cluster.create(d, i.size, None);
            }
        }
        settle(self.cluster);
        let started = Instant::now();
        let children: Vec<(Child, Child)> = self
            .inputs
            .iter()
            .zip(&self.dests)
            .map(|(i, d)| {
                let mut export = self
                    .cluster
                    .export_diff(&format!("{}@{snap}", i.image), from)
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("rbd runs");
                let import = self
                    .cluster
                    .rbd_command()
                    .args(["import-diff", "--no-progress", "-", d])
                    .stdin(export.stdout.take().expect("piped"))
                    .spawn()
                    .expect("rbd runs");
                (export, import)
            })
            .collect();
        let (mut rss, mut cpu) = (0, 0.0);
        for (e, i) in children {
            for (c, what) in [(e, "rbd export-diff"), (i, "rbd import-diff")] {
                let measure::Usage {
                    rss_kib: r,
                    cpu_secs: u,
                } = wait_ok(c, what);
                rss += r;
                cpu += u;
            }
        }
        Run {
            secs: started.elapsed().as_secs_f64(),
            rss_mib: rss as f64 / 1024.0,
            cpu,
        }
    }

    fn check(&self, snap: &str) {
        for (i, d) in self.inputs.iter().zip(&self.dests) {
            let want = if snap == "s1" {
                &i.md5_s1
            } else {
                i.md5_s2.as_ref().expect("an s2")
            };
            let got = self.cluster.md5(&format!("{d}@{snap}"));
            assert_eq!(&got, want, "{d}@{snap} differs from {}@{snap}", i.image);
        }
    }
}

/// The rows of the many-volumes table: (case, contender, runs).
type Rows = Vec<(String, String, Vec<Run>)>;

fn add(rows: &mut Rows, case: &str, who: &str, run: Run) {
    match rows.iter_mut().find(|r| r.0 == case && r.1 == who) {
        Some(r) => r.2.push(run),
        None => rows.push((case.into(), who.into(), vec![run])),
    }
}

/// `--many`: creates the volumes, times both contenders `reps` times in alternating order,
/// prints the table, removes everything.
pub fn run_many(bench: &Bench, reps: usize, parallel: &[usize]) {
    let sizes = Sizes::SMALL;
    let budget = rbd_diffsync::DEFAULT_BATCH_BUDGET;
    let inputs: Vec<Input> = (0..VOLUMES)
        .map(|k| {
            let b = Bench {
                cluster: TestCluster {
                    conf: bench.cluster.conf.clone(),
                },
                pool: bench.pool.clone(),
                dest_pool: bench.dest_pool.clone(),
                tag: format!("{}-v{k}", bench.tag),
            };
            b.make_dense(&sizes)
        })
        .collect();
    let dests = (0..VOLUMES)
        .map(|k| bench.dest(&format!("many{k}")))
        .collect();
    let batch = Batch {
        cluster: &bench.cluster,
        inputs,
        dests,
    };
    let full_bytes: u64 = batch.inputs.iter().map(|i| i.full_bytes).sum();
    let incr_bytes: u64 = batch.inputs.iter().map(|i| i.incr_bytes).sum();
    let mut rows = Rows::new();
    let pipes = format!("{VOLUMES} × rbd export-diff | rbd import-diff, in parallel");
    let full = format!("full, {VOLUMES} × {} MiB images", sizes.image / MIB);
    let incr = format!(
        "incremental s1→s2, {VOLUMES} × {} MiB images",
        sizes.image / MIB
    );
    let mut contenders: Vec<Option<usize>> = vec![None];
    contenders.extend(parallel.iter().map(|&p| Some(p)));
    for rep in 0..reps {
        for k in 0..contenders.len() {
            let who = contenders[(k + rep) % contenders.len()];
            batch.remove_dests(bench);
            let name = match who {
                None => pipes.clone(),
                Some(p) => format!("sync-many --parallel {p}, budget {} MiB", budget >> 20),
            };
            eprintln!("rep {}/{reps}: {name}", rep + 1);
            let f = match who {
                None => batch.pipes("s1", None),
                Some(p) => batch.ours("s1", None, p, budget),
            };
            batch.check("s1");
            let i = match who {
                None => batch.pipes("s2", Some("s1")),
                Some(p) => batch.ours("s2", Some("s1"), p, budget),
            };
            batch.check("s2");
            add(&mut rows, &full, &name, f);
            add(&mut rows, &incr, &name, i);
        }
    }
    batch.remove_dests(bench);
    for i in &batch.inputs {
        bench.remove(&i.image);
    }
    println!("## Many volumes at once");
    println!();
    println!(
        "{VOLUMES} dense {} MiB images ({} MiB random data, {} MiB zeros, s1; {} MiB of random \
         64 KiB writes, s2), {reps} repetitions in alternating order, medians; every copy \
         checked by md5",
        sizes.image / MIB,
        sizes.data / MIB,
        sizes.zeros / MIB,
        sizes.random / MIB
    );
    println!();
    println!("| case | contender | seconds | MiB/s | × pipes | peak RSS MiB | CPU s | runs (s) |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for (case, who, runs) in &rows {
        let secs = median(runs.iter().map(|r| r.secs).collect());
        let bytes = if case == &full {
            full_bytes
        } else {
            incr_bytes
        };
        let reference = rows
            .iter()
            .find(|r| &r.0 == case && r.1 == pipes)
            .map(|r| median(r.2.iter().map(|x| x.secs).collect()));
        let ratio = reference.map_or("".into(), |p| format!("{:.2}", secs / p));
        println!(
            "| {case} | {who} | {secs:.2} | {:.1} | {ratio} | {:.0} | {:.1} | {} |",
            bytes as f64 / MIB as f64 / secs,
            median(runs.iter().map(|r| r.rss_mib).collect()),
            median(runs.iter().map(|r| r.cpu).collect()),
            runs.iter()
                .map(|r| format!("{:.2}", r.secs))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!();
    println!(
        "Peak RSS: of the one sync-many process; for the pipes, summed over their {} \
         processes. CPU: user + system, summed.",
        2 * VOLUMES
    );
}

/// Bytes read and the copying time of a transfer or batch, from its progress: from the first
/// report in the copying phase to the last one there.
#[derive(Default)]
struct CopyClock {
    first: Option<Instant>,
    last: Option<Instant>,
}

/// `--max-rate-check`: one transfer, then a batch of 4, each with a cap; reports the rate of
/// data read while copying against the cap.
pub fn run_rate_check(bench: &Bench, reps: usize) {
    let sizes = Sizes::SMALL;
    let input = bench.make_dense(&sizes);
    let spec = ClusterSpec::new().conf(&bench.cluster.conf);
    let cap: u64 = 40 * MIB;
    println!("## Rate limit");
    println!();
    println!("| transfer | cap MiB/s | measured MiB/s (runs) | median / cap |");
    println!("| --- | ---: | --- | ---: |");
    for batch in [1usize, 4] {
        let mut rates = Vec::new();
        for rep in 0..reps {
            let dests: Vec<String> = (0..batch)
                .map(|k| bench.dest(&format!("rate{k}")))
                .collect();
            for d in &dests {
                bench.remove(d);
            }
            settle(&bench.cluster);
            eprintln!("rate check rep {}/{reps}: {batch} transfer(s)", rep + 1);
            let clock = Arc::new(Mutex::new(CopyClock::default()));
            let source = format!("{}@s1", input.image);
            let transfers: Vec<DiffTransfer> = dests
                .iter()
                .map(|d| {
                    DiffTransfer::new(source.parse().unwrap(), d.parse().unwrap())
                        .cluster(spec.clone())
                })
                .collect();
            let read: u64 = if batch == 1 {
                let seen = clock.clone();
                let t = transfers
                    .into_iter()
                    .next()
                    .expect("one")
                    .rate_limit(cap)
                    .progress_interval(Duration::from_millis(10))
                    .on_progress(move |p| {
                        if p.phase == Phase::Copying {
                            let mut c = seen.lock().unwrap();
                            let now = Instant::now();
                            c.first.get_or_insert(now);
                            c.last = Some(now);
                        }
                    });
                t.run().expect("rate-limited transfer").bytes_read
            } else {
                let seen = clock.clone();
                SyncMany::new(transfers)
                    .parallel(batch)
                    .rate_limit(cap)
                    .progress_interval(Duration::from_millis(10))
                    .on_progress(move |p| {
                        let copying = p.volumes.iter().any(|v| {
                            v.state == VolumeState::Running && v.phase == Some(Phase::Copying)
                        });
                        if copying {
                            let mut c = seen.lock().unwrap();
                            let now = Instant::now();
                            c.first.get_or_insert(now);
                            c.last = Some(now);
                        }
                    })
                    .run()
                    .into_iter()
                    .map(|r| r.expect("rate-limited batch").bytes_read)
                    .sum()
            };
            let c = clock.lock().unwrap();
            let secs = (c.last.expect("copied") - c.first.expect("copied")).as_secs_f64();
            rates.push(read as f64 / secs / MIB as f64);
            for d in &dests {
                bench.verify(&format!("{d}@s1"), &input.md5_s1, "rate-limited copy");
                bench.remove(d);
            }
        }
        let m = median(rates.clone());
        println!(
            "| {} | {} | {:.1} ({}) | {:.3} |",
            if batch == 1 {
                "one DiffTransfer, full".to_owned()
            } else {
                format!("SyncMany of {batch}, full, one cap for all")
            },
            cap / MIB,
            m,
            rates
                .iter()
                .map(|r| format!("{r:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            m / (cap / MIB) as f64
        );
    }
    println!();
    println!(
        "Measured: data bytes read / time in the copying phase (first to last progress report \
         there, every 10 ms); each copy {} MiB of data.",
        input.full_bytes / MIB
    );
    bench.remove(&input.image);
}
