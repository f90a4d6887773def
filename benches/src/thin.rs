//! The thin case (`--thin`): a 5 TiB image holding 4 MiB, a full copy and an incremental of
//! 4 MiB more, by DiffTransfer and by the pipe. The scan dominates: the pipe's export-diff
//! lists every object of the image, DiffTransfer reads the object map first.
//!
//! Each copy is checked by md5 over the written ranges (an export of 5 TiB would take hours),
//! and by whole-object diff that nothing else is allocated.

use std::io::Write;
use std::process::{Command, Stdio};

use rbd_diffsync::internals::Image;
use rbd_diffsync::ImageSpec;
use rbd_diffsync_tests::{pattern, TestCluster};

use crate::measure::{Contender, Sample};

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;
/// The thin image's size.
pub const SIZE: u64 = 5 * TIB;
/// Size of each write.
const WRITE: u64 = 64 * 1024;
/// Writes before each snapshot: 4 MiB.
const WRITES: u64 = 64;

/// Runs the thin case with `reps` repetitions and prints its table.
pub fn run(cluster: &TestCluster, pool: &str, dest_pool: &str, tag: &str, reps: usize) {
    let image = format!("{pool}/{tag}-thin");
    eprintln!("creating {image}");
    cluster.create(&image, SIZE, None);
    let mut rng = 0x7417_u64;
    let slots = SIZE / WRITE;
    let mut offsets = |n: u64| -> Vec<u64> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % slots) * WRITE
            })
            .collect()
    };
    let first = offsets(WRITES);
    let second = offsets(WRITES);
    write_at(cluster, &image, &first, 1);
    cluster.snap(&image, "s1");
    write_at(cluster, &image, &second, 2);
    cluster.snap(&image, "s2");
    let all: Vec<u64> = first.iter().chain(&second).copied().collect();
    let md5_s1 = md5_over(cluster, &format!("{image}@s1"), &all);
    let md5_s2 = md5_over(cluster, &format!("{image}@s2"), &all);
    let allocated_s2 = allocated_objects(cluster, &format!("{image}@s2"));

    let contenders = [
        Contender::Pipe,
        Contender::Ours {
            window: None,
            chunk_size: None,
        },
    ];
    let mut times: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); contenders.len()];
    for rep in 0..reps {
        for (i, who) in contenders.iter().enumerate() {
            let dest = format!("{dest_pool}/{tag}-thin-{}", who.slug());
            remove(cluster, &dest);
            let full: Sample = who.full(cluster, &format!("{image}@s1"), &dest, SIZE);
            let got = md5_over(cluster, &format!("{dest}@s1"), &all);
            assert_eq!(got, md5_s1, "{}: full copy differs", who.name());
            let incr = who.incremental(cluster, &format!("{image}@s2"), &dest, "s1");
            let got = md5_over(cluster, &format!("{dest}@s2"), &all);
            assert_eq!(got, md5_s2, "{}: incremental differs", who.name());
            let objects = allocated_objects(cluster, &format!("{dest}@s2"));
            assert_eq!(objects, allocated_s2, "{}: other objects", who.name());
            eprintln!(
                "rep {}: {}: full {:.2} s, incremental {:.2} s",
                rep + 1,
                who.name(),
                full.secs,
                incr.secs
            );
            times[i].0.push(full.secs);
            times[i].1.push(incr.secs);
            remove(cluster, &dest);
        }
    }
    remove(cluster, &image);

    println!("## Thin image: {} TiB holding 4 MiB", SIZE / TIB);
    println!();
    println!(
        "{WRITES} writes of {} KiB at random offsets before s1, {WRITES} more before s2; \
         {reps} repetitions, medians (each run: min..max); copies checked by md5 over the \
         written ranges and by their allocated objects",
        WRITE / 1024
    );
    println!();
    println!("| case | rbd export-diff \\| rbd import-diff | DiffTransfer | × pipe |");
    println!("| --- | --- | --- | --- |");
    for (case, pick) in [
        ("full (to s1)", 0usize),
        ("incremental (s1 to s2, 4 MiB changed)", 1),
    ] {
        let get = |i: usize| {
            let v = if pick == 0 { &times[i].0 } else { &times[i].1 };
            (median(v), cell(v))
        };
        let ((pipe, pipe_cell), (ours, ours_cell)) = (get(0), get(1));
        println!(
            "| {case} | {pipe_cell} | {ours_cell} | {:.1} |",
            pipe / ours
        );
    }
    println!();
}

fn cell(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("{:.2} s ({min:.2}..{max:.2})", median(v))
}

fn median(v: &[f64]) -> f64 {
    crate::report::median(v.to_vec())
}

fn write_at(cluster: &TestCluster, image: &str, offsets: &[u64], seed: u64) {
    let img = cluster.open(image);
    for (i, &off) in offsets.iter().enumerate() {
        img.write(off, &pattern(seed << 32 | i as u64, WRITE as usize))
            .expect("write thin input");
    }
}

fn open_at(cluster: &TestCluster, spec: &str) -> Image {
    let spec = ImageSpec::parse(spec).expect("image spec");
    Image::open_read_only(&cluster.pool(&spec), spec.image(), spec.snap()).expect("open")
}

/// md5 of what `spec` reads over each of the written blocks at `offsets`, in that order.
fn md5_over(cluster: &TestCluster, spec: &str, offsets: &[u64]) -> String {
    let img = open_at(cluster, spec);
    let mut sum = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum runs");
    let mut input = sum.stdin.take().expect("piped");
    let mut buf = vec![0u8; WRITE as usize];
    for &off in offsets {
        img.read(off, &mut buf).expect("read written range");
        input.write_all(&buf).expect("feed md5sum");
    }
    drop(input);
    let out = sum.wait_with_output().expect("md5sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a sum")
        .to_owned()
}

/// The objects `spec` has allocated (`rbd diff --whole-object`, from the object map).
fn allocated_objects(cluster: &TestCluster, spec: &str) -> Vec<u64> {
    let json = cluster.rbd(&["diff", "--whole-object", "--format", "json", spec]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("rbd diff prints JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .filter(|e| e["exists"].as_str() == Some("true"))
        .map(|e| e["offset"].as_u64().expect("offset") / (4 * MIB))
        .collect()
}

fn remove(cluster: &TestCluster, image: &str) {
    let _ = cluster.rbd_output(&["snap", "purge", "--no-progress", image]);
    let _ = cluster.rbd_output(&["rm", "--no-progress", image]);
}
