//! Tests of the planning cell by cell: its pieces cover exactly what planning the whole diff
//! at once covers, whatever the cells, and it stops at the first error, in order.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::plan::{normalize, subtract};

/// xorshift64*, with fixed seeds.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

const SIZE: u64 = 1 << 20;
const BLOCK: u64 = 512;

/// Sorted, disjoint ranges of whole blocks, about `count` of them.
fn random_ranges(rng: &mut Rng, most: u64) -> Vec<(u64, u64)> {
    let count = 1 + rng.below(most);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    for _ in 0..count {
        at += rng.below(SIZE / BLOCK / count * 2) * BLOCK;
        let len = (1 + rng.below(64)) * BLOCK;
        if at + len > SIZE {
            break;
        }
        out.push((at, len));
        at += len + BLOCK;
    }
    out
}

fn random_extents(rng: &mut Rng, most: u64) -> Vec<DiffExtent> {
    let extents = random_ranges(rng, most)
        .into_iter()
        .map(|(offset, len)| DiffExtent {
            offset,
            len,
            exists: rng.below(3) > 0,
        })
        .collect();
    normalize(extents)
}

/// Ranges merged where they touch.
fn merged(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (o, l) in ranges {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => out.push((o, l)),
        }
    }
    out
}

/// What planning the whole diff at once gives: data ranges, zero ranges.
/// Data ranges and zero ranges.
type Split = (Vec<(u64, u64)>, Vec<(u64, u64)>);

fn at_once(p: &Planner, extents: &[DiffExtent]) -> Split {
    let covered: Vec<(u64, u64)> = extents.iter().map(|e| (e.offset, e.len)).collect();
    let mut work = extents.to_vec();
    for (ranges, exists) in [(&p.rewrite, true), (&p.stale, false)] {
        work.extend(
            subtract(ranges, &covered)
                .into_iter()
                .map(|(offset, len)| DiffExtent {
                    offset,
                    len,
                    exists,
                }),
        );
    }
    let (work, _) = plan::from_offset(normalize(work), p.resume_from);
    let pieces = plan::pieces(&work, p.chunk, p.zero_chunk);
    split(&pieces)
}

fn split(pieces: &[Piece]) -> Split {
    let of = |data: bool| {
        merged(
            pieces
                .iter()
                .filter(|p| p.data == data)
                .map(|p| (p.offset, p.len)),
        )
    };
    (of(true), of(false))
}

/// The exact diff of `[offset, offset + len)` out of `extents`.
fn scan_of(extents: &[DiffExtent]) -> impl Fn(u64, u64) -> Result<Vec<DiffExtent>> + Sync + '_ {
    move |offset, len| {
        Ok(extents
            .iter()
            .map(|e| clip_extent(e, offset, offset + len))
            .filter(|e| e.len > 0)
            .collect())
    }
}

fn planner(outline: Outline, rng: &mut Rng) -> Planner {
    let chunk = [BLOCK * 8, BLOCK * 24, 1 << 16][rng.below(3) as usize];
    Planner {
        outline,
        cell: [1 << 14, 3 << 12, 1 << 18, SIZE][rng.below(4) as usize],
        size: SIZE - rng.below(8) * BLOCK,
        rewrite: random_ranges(rng, 6),
        stale: random_ranges(rng, 6),
        resume_from: [0, 0, rng.below(SIZE / BLOCK) * BLOCK][rng.below(3) as usize],
        chunk,
        zero_chunk: chunk * 4,
        keep_ranges: true,
    }
}

/// A planner of 4 KiB pieces over `ranges` to scan, with nothing else to write.
fn scanning(ranges: Vec<(u64, u64)>, cell: u64, size: u64) -> Planner {
    Planner {
        outline: Outline::Scan(ranges),
        cell,
        size,
        rewrite: Vec::new(),
        stale: Vec::new(),
        resume_from: 0,
        chunk: 4096,
        zero_chunk: 4096,
        keep_ranges: false,
    }
}

#[test]
fn cells_plan_what_the_whole_diff_plans() {
    let mut rng = Rng(0x5eed_1234_5678_9abc);
    for round in 0..300 {
        let extents = random_extents(&mut rng, 80);
        let clip = |v: Vec<(u64, u64)>, size: u64| -> Vec<(u64, u64)> {
            v.into_iter()
                .filter(|r| r.0 < size)
                .map(|(o, l)| (o, l.min(size - o)))
                .collect()
        };
        let outline = if round % 2 == 0 {
            Outline::Known(extents.clone())
        } else {
            // What an object map would say: more than the diff, never less.
            let mut ranges: Vec<(u64, u64)> = extents
                .iter()
                .map(|e| (e.offset / 4096 * 4096, 0))
                .collect();
            for (r, e) in ranges.iter_mut().zip(&extents) {
                r.1 = (e.offset + e.len).div_ceil(4096) * 4096 - r.0;
            }
            Outline::Scan(merged_overlapping(ranges))
        };
        let mut p = planner(outline, &mut rng);
        // A transfer rewrites what the destination changed (an incremental) or zeroes what
        // it holds (a full one), never both.
        if round % 3 == 0 {
            p.rewrite.clear();
        } else {
            p.stale.clear();
        }
        p.rewrite = clip(p.rewrite, p.size);
        p.stale = clip(p.stale, p.size);
        let extents: Vec<DiffExtent> = extents
            .iter()
            .map(|e| clip_extent(e, 0, p.size))
            .filter(|e| e.len > 0)
            .collect();
        if let Outline::Known(known) = &mut p.outline {
            *known = extents.clone();
        }
        let mut got = Vec::new();
        let totals = p
            .run(&scan_of(&extents), &mut |pieces| {
                got.extend(pieces);
                Ok(())
            })
            .unwrap();
        assert_eq!(split(&got), at_once(&p, &extents), "round {round}: {p:?}");
        for w in got.windows(2) {
            assert!(
                w[0].offset + w[0].len <= w[1].offset,
                "round {round}: in order"
            );
        }
        for piece in &got {
            let step = if piece.data { p.chunk } else { p.zero_chunk };
            assert!(piece.len > 0 && piece.len <= step);
            assert_eq!(piece.offset / step, (piece.offset + piece.len - 1) / step);
            assert!(piece.offset >= p.resume_from);
        }
        assert_eq!(totals.extents, extents.len() as u64, "round {round}");
        assert_eq!(
            totals.diff_bytes,
            extents.iter().map(|e| e.len).sum::<u64>()
        );
        let (_, resumed) = plan::from_offset(extents.clone(), p.resume_from);
        assert_eq!(totals.bytes_resumed, resumed);
        let (data, zero) = split(&got);
        assert_eq!(totals.data_bytes, data.iter().map(|r| r.1).sum::<u64>());
        assert_eq!(totals.zero_bytes, zero.iter().map(|r| r.1).sum::<u64>());
        // The ranges kept for a verification are those of the whole work, also below
        // where the copy resumes.
        let from_start = Planner {
            resume_from: 0,
            ..p.clone()
        };
        let mut all = Vec::new();
        from_start
            .run(&scan_of(&extents), &mut |pieces| {
                all.extend(pieces);
                Ok(())
            })
            .unwrap();
        assert_eq!(totals.ranges, merged(all.iter().map(|p| (p.offset, p.len))));
    }
}

fn merged_overlapping(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (o, l) in ranges {
        match out.last_mut() {
            Some(last) if o <= last.0 + last.1 => last.1 = last.1.max(o + l - last.0),
            _ => out.push((o, l)),
        }
    }
    out
}

#[test]
fn an_extent_across_cells_counts_once() {
    let extents = vec![DiffExtent {
        offset: 1000,
        len: 5000,
        exists: true,
    }];
    let p = scanning(vec![(0, 8192)], 2048, 8192);
    let totals = p.run(&scan_of(&extents), &mut |_| Ok(())).unwrap();
    assert_eq!((totals.extents, totals.diff_bytes), (1, 5000));
    assert!(totals.ranges.is_empty());
}

#[test]
fn only_the_ranges_of_the_outline_are_scanned_and_the_first_error_in_order_wins() {
    let calls = AtomicUsize::new(0);
    let scan = |offset: u64, len: u64| -> Result<Vec<DiffExtent>> {
        calls.fetch_add(1, Ordering::SeqCst);
        assert!(offset >= 4096 && offset + len <= 3 * 4096 || offset >= 40960);
        if offset >= 40960 {
            return Err(Error::from_errno(libc::EIO, format!("scan at {offset}")));
        }
        Ok(vec![DiffExtent {
            offset,
            len,
            exists: true,
        }])
    };
    let p = scanning(
        vec![(4096, 8192), (40960, 4096), (49152, 4096)],
        4096,
        1 << 16,
    );
    let mut got = Vec::new();
    let e = p
        .run(&scan, &mut |pieces| {
            got.extend(pieces);
            Ok(())
        })
        .unwrap_err();
    assert_eq!((e.errno(), e.message()), (libc::EIO, "scan at 40960"));
    assert_eq!(split(&got).0, vec![(4096, 8192)]);
    assert!(calls.load(Ordering::SeqCst) <= 4);
}

#[test]
fn an_error_of_the_receiver_stops_the_scans() {
    let calls = AtomicUsize::new(0);
    let scan = |offset: u64, len: u64| -> Result<Vec<DiffExtent>> {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(vec![DiffExtent {
            offset,
            len,
            exists: true,
        }])
    };
    let p = scanning(vec![(0, 1 << 30)], 4096, 1 << 30);
    let mut cells = 0;
    let e = p
        .run(&scan, &mut |_| {
            cells += 1;
            if cells == 3 {
                return Err(Error::from_errno(libc::ECANCELED, "enough"));
            }
            Ok(())
        })
        .unwrap_err();
    assert_eq!(e.errno(), libc::ECANCELED);
    // The scans ran ahead of the receiver by the lookahead at most.
    assert!(calls.load(Ordering::SeqCst) <= 3 + LOOKAHEAD + THREADS);
}

#[test]
fn the_queue_holds_the_planning_back_and_ends_it_when_closed() {
    let queue = Queue::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let waker = || -> Waker {
        let tx = tx.clone();
        Box::new(move || tx.send(()).unwrap())
    };
    assert!(matches!(queue.pop(waker), Popped::Later));
    std::thread::scope(|s| {
        let planning = s.spawn(|| {
            for i in 0..3 * QUEUED as u64 {
                let piece = Piece {
                    offset: i * 4096,
                    len: 4096,
                    data: true,
                };
                queue.push(vec![piece])?;
            }
            Ok::<_, Error>(())
        });
        // The first push woke the engine.
        rx.recv().unwrap();
        let mut taken = 0u64;
        while taken < QUEUED as u64 {
            match queue.pop(waker) {
                Popped::Piece(p) => {
                    assert_eq!(p.offset, taken * 4096);
                    taken += 1;
                }
                Popped::Later => {
                    rx.recv().unwrap();
                }
                _ => panic!("the planning has not ended"),
            }
        }
        // It waits for room: never more than the queue's size ahead.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(queue.planned() <= (taken + QUEUED as u64) * 4096);
        queue.close();
        let e = planning.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    });
}

#[test]
fn the_queue_ends_after_its_pieces_or_fails() {
    let waker = || -> Waker { Box::new(|| ()) };
    let queue = Queue::default();
    let piece = Piece {
        offset: 0,
        len: 4096,
        data: false,
    };
    queue.push(vec![piece]).unwrap();
    queue.finish(Ok(Totals {
        extents: 7,
        ..Totals::default()
    }));
    assert!(matches!(queue.pop(waker), Popped::Piece(p) if p == piece));
    assert!(matches!(queue.pop(waker), Popped::End));
    assert_eq!(queue.totals().map(|t| t.extents), Some(7));

    let failed = Queue::default();
    failed.finish(Err(Error::from_errno(libc::EIO, "scan")));
    assert!(matches!(failed.pop(waker), Popped::Failed(e) if e.errno() == libc::EIO));
    assert_eq!(failed.totals(), None);
}
