//! Micro-benchmarks of the CPU-bound paths of a transfer: zero detection on every chunk read,
//! splitting chunks into data and zero runs, and the planner (normalising the diff, cutting it
//! into pieces, looking up ranges known to read as zeros).
//!
//! `cargo bench -p rbd-diffsync-benches --bench hot_paths`; the target for `is_zero` is 8 GiB/s
//! or more (see BENCHMARKS.md).

use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use rbd_diffsync::internals::{
    complement, is_zero, normalize, pieces, zero_runs, DiffExtent, KnownZero,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn main() {
    divan::main();
}

/// `len` zero bytes in memory of their own: a buffer straight from `vec![0; len]` maps the
/// kernel's one zero page over and over, which is always in cache.
fn zeros(len: usize) -> Vec<u8> {
    let mut buf = vec![1u8; len];
    buf.fill(0);
    buf
}

/// Bytes that are never zero over a 4 KiB block.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 | 1).collect()
}

/// A 4 MiB chunk as an incremental reads it from an object new since `from_snap`: zeros with
/// a 64 KiB write every 512 KiB.
fn mostly_zero(len: usize) -> Vec<u8> {
    let mut buf = zeros(len);
    for start in (0..len).step_by(512 * KIB) {
        let end = (start + 64 * KIB).min(len);
        buf[start..end].fill(0xA5);
    }
    buf
}

/// `is_zero` on a buffer of zeros: it must read every byte. 64 MiB is larger than the CPU's
/// caches: it shows the speed on data that is not in cache.
#[divan::bench(args = [4 * KIB, 64 * KIB, 4 * MIB, 64 * MIB])]
fn is_zero_all_zero(bencher: Bencher, len: usize) {
    let buf = zeros(len);
    bencher
        .counter(BytesCount::new(len))
        .bench(|| is_zero(black_box(&buf)));
}

/// `zero_runs` over whole chunks: all zeros, all data, and mostly zeros.
#[divan::bench(args = ["zeros", "data", "mostly_zero"])]
fn zero_runs_4mib(bencher: Bencher, kind: &str) {
    let buf = match kind {
        "zeros" => zeros(4 * MIB),
        "data" => data(4 * MIB),
        _ => mostly_zero(4 * MIB),
    };
    bencher
        .counter(BytesCount::new(buf.len()))
        .bench(|| zero_runs(black_box(&buf), black_box(12 * MIB as u64)));
}

/// The diff of a 20 GiB image after 64 KiB random writes: 100 000 extents, some touching.
fn scattered_extents(n: u64) -> Vec<DiffExtent> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let slots = (20u64 << 30) / (64 << 10);
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            DiffExtent {
                offset: (x % slots) * (64 << 10),
                len: 64 << 10,
                exists: i % 10 != 0,
            }
        })
        .collect()
}

#[divan::bench]
fn plan_100k_extents(bencher: Bencher) {
    let extents = scattered_extents(100_000);
    bencher
        .counter(ItemsCount::new(extents.len()))
        .with_inputs(|| extents.clone())
        .bench_values(|e| {
            let e = normalize(e);
            pieces(&e, 4 << 20, 64 << 20)
        });
}

#[divan::bench]
fn known_zero_lookups(bencher: Bencher) {
    let allocated: Vec<(u64, u64)> = normalize(scattered_extents(100_000))
        .iter()
        .map(|e| (e.offset, e.len))
        .collect();
    let known = KnownZero::Ranges(complement(&allocated, 20 << 30));
    let probes: Vec<u64> = (0..10_000u64).map(|i| i * (2 << 20)).collect();
    bencher.counter(ItemsCount::new(probes.len())).bench(|| {
        probes
            .iter()
            .filter(|&&o| known.covers(black_box(o), 4096))
            .count()
    });
}
