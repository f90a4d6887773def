//! Pure planning: which ranges to copy or zero, cut into chunks; where zero runs are inside a
//! chunk; which ranges of the destination already read as zeros. No I/O here.

pub use crate::rbd::image::DiffExtent;

/// The granularity of zero detection, the same as `rbd import-diff`'s default sparse size.
pub const ZERO_BLOCK: u64 = 4096;

/// A range of the transfer: `data` ranges are read from the source and written, the others
/// must read as zeros on the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Byte offset in the image.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// `true`: read from the source and write; `false`: make read as zeros.
    pub data: bool,
}

/// Sorts and merges touching extents of the same kind. librbd reports extents in order, but a
/// caller's list need not be.
pub fn normalize(mut extents: Vec<DiffExtent>) -> Vec<DiffExtent> {
    extents.retain(|e| e.len > 0);
    extents.sort_by_key(|e| e.offset);
    let mut out: Vec<DiffExtent> = Vec::with_capacity(extents.len());
    for e in extents {
        match out.last_mut() {
            Some(last) if last.exists == e.exists && last.offset + last.len == e.offset => {
                last.len += e.len
            }
            _ => out.push(e),
        }
    }
    out
}

/// Cuts extents into pieces that never cross a multiple of `chunk` (data) or of
/// `zero_chunk` (zeroing, which needs no buffer and so may be larger).
pub fn pieces(extents: &[DiffExtent], chunk: u64, zero_chunk: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    for e in extents {
        let step = if e.exists { chunk } else { zero_chunk };
        let mut off = e.offset;
        let end = e.offset + e.len;
        while off < end {
            let boundary = (off / step + 1) * step;
            let next = boundary.min(end);
            out.push(Piece {
                offset: off,
                len: next - off,
                data: e.exists,
            });
            off = next;
        }
    }
    out
}

/// `extents` without what lies below `offset`, and the bytes cut off.
pub fn from_offset(extents: Vec<DiffExtent>, offset: u64) -> (Vec<DiffExtent>, u64) {
    let mut cut = 0;
    let kept = extents
        .into_iter()
        .filter_map(|e| {
            let end = e.offset + e.len;
            if end <= offset {
                cut += e.len;
                return None;
            }
            let start = e.offset.max(offset);
            cut += start - e.offset;
            Some(DiffExtent {
                offset: start,
                len: end - start,
                exists: e.exists,
            })
        })
        .collect();
    (kept, cut)
}

/// `true` when every byte is zero; reads whole 16-byte words so that it runs at memory speed.
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: any bit pattern is a valid u128.
    let (head, words, tail) = unsafe { buf.align_to::<u128>() };
    if head.iter().any(|&b| b != 0) || tail.iter().any(|&b| b != 0) {
        return false;
    }
    let mut blocks = words.chunks_exact(8);
    for block in blocks.by_ref() {
        if block.iter().fold(0, |acc, w| acc | w) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&w| w == 0)
}

/// A run inside a chunk buffer: `[start, start + len)` relative to the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Offset in the buffer.
    pub start: usize,
    /// Length.
    pub len: usize,
    /// Whether every byte of it is zero.
    pub zero: bool,
}

/// Splits `buf`, which holds the image bytes at `offset`, into alternating data and zero runs
/// at [`ZERO_BLOCK`] boundaries of the image (not of the buffer).
pub fn zero_runs(buf: &[u8], offset: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut start = 0usize;
    while start < buf.len() {
        let abs = offset + start as u64;
        let block_end = ((abs / ZERO_BLOCK + 1) * ZERO_BLOCK - offset) as usize;
        let end = block_end.min(buf.len());
        let zero = is_zero(&buf[start..end]);
        match runs.last_mut() {
            Some(last) if last.zero == zero => last.len += end - start,
            _ => runs.push(Run {
                start,
                len: end - start,
                zero,
            }),
        }
        start = end;
    }
    runs
}

/// Ranges of the destination known to read as zeros before the transfer writes anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KnownZero {
    /// The whole image (it was created by this transfer).
    All,
    /// These sorted, disjoint `(offset, len)` ranges.
    Ranges(Vec<(u64, u64)>),
}

impl KnownZero {
    /// `true` if all of `[offset, offset + len)` is known to read as zeros.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        match self {
            KnownZero::All => true,
            KnownZero::Ranges(ranges) => {
                let i = ranges.partition_point(|&(o, l)| o + l <= offset);
                ranges
                    .get(i)
                    .is_some_and(|&(o, l)| o <= offset && offset + len <= o + l)
            }
        }
    }
}

/// The union of two lists of `(offset, len)` ranges (in any order, overlapping or not), sorted
/// and merged where they overlap or touch.
pub fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().filter(|r| r.1 > 0).collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (offset, len) in all {
        match out.last_mut() {
            Some(last) if offset <= last.0 + last.1 => {
                last.1 = last.1.max(offset + len - last.0);
            }
            _ => out.push((offset, len)),
        }
    }
    out
}

/// The complement of `allocated` (sorted, disjoint) inside `[0, size)`.
pub fn complement(allocated: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(o, l) in allocated {
        if o > at {
            out.push((at, o.min(size) - at));
        }
        at = at.max(o + l);
        if at >= size {
            return out;
        }
    }
    if at < size {
        out.push((at, size - at));
    }
    out.retain(|&(_, l)| l > 0);
    out
}

/// The parts of `a` not covered by `b`; both sorted and disjoint.
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(start, len) in a {
        let end = start + len;
        let mut at = start;
        while j < b.len() && b[j].0 + b[j].1 <= at {
            j += 1;
        }
        let mut k = j;
        while at < end {
            match b.get(k) {
                Some(&(bo, bl)) if bo < end => {
                    if bo > at {
                        out.push((at, bo - at));
                    }
                    at = at.max(bo + bl);
                    k += 1;
                }
                _ => {
                    out.push((at, end - at));
                    at = end;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, len: u64, exists: bool) -> DiffExtent {
        DiffExtent {
            offset,
            len,
            exists,
        }
    }

    #[test]
    fn from_offset_cuts_what_lies_below() {
        let extents = vec![ext(0, 10, true), ext(10, 10, false), ext(30, 10, true)];
        assert_eq!(
            from_offset(extents.clone(), 15),
            (vec![ext(15, 5, false), ext(30, 10, true)], 15)
        );
        assert_eq!(from_offset(extents.clone(), 0), (extents.clone(), 0));
        assert_eq!(from_offset(extents, 40), (Vec::new(), 30));
    }

    #[test]
    fn normalize_sorts_and_merges_same_kind_neighbours() {
        let got = normalize(vec![
            ext(8, 4, true),
            ext(0, 4, true),
            ext(4, 4, true),
            ext(12, 4, false),
            ext(20, 0, true),
        ]);
        assert_eq!(got, vec![ext(0, 12, true), ext(12, 4, false)]);
    }

    #[test]
    fn pieces_never_cross_chunk_boundaries() {
        let got = pieces(&[ext(3, 20, true), ext(30, 40, false)], 8, 32);
        let want = vec![
            Piece {
                offset: 3,
                len: 5,
                data: true,
            },
            Piece {
                offset: 8,
                len: 8,
                data: true,
            },
            Piece {
                offset: 16,
                len: 7,
                data: true,
            },
            Piece {
                offset: 30,
                len: 2,
                data: false,
            },
            Piece {
                offset: 32,
                len: 32,
                data: false,
            },
            Piece {
                offset: 64,
                len: 6,
                data: false,
            },
        ];
        assert_eq!(got, want);
        for p in got.iter().filter(|p| p.data) {
            assert_eq!(p.offset / 8, (p.offset + p.len - 1) / 8);
        }
    }

    #[test]
    fn is_zero_sees_a_single_set_byte_anywhere() {
        let mut buf = vec![0u8; 9000];
        assert!(is_zero(&buf));
        assert!(is_zero(&buf[1..8999]));
        assert!(is_zero(&[]));
        for i in [0, 1, 15, 16, 127, 128, 4095, 8191, 8999] {
            buf[i] = 1;
            assert!(!is_zero(&buf), "byte {i}");
            assert!(!is_zero(&buf[i..]), "slice from {i}");
            buf[i] = 0;
        }
    }

    #[test]
    fn zero_runs_follow_image_block_boundaries() {
        // The buffer starts 1 KiB into a block: the first run ends at the block boundary.
        let mut buf = vec![0u8; 3 * 4096];
        buf[4096] = 7; // inside the second image block [3072, 7168) of the buffer
        let runs = zero_runs(&buf, 1024);
        assert_eq!(
            runs,
            vec![
                Run {
                    start: 0,
                    len: 3072,
                    zero: true
                },
                Run {
                    start: 3072,
                    len: 4096,
                    zero: false
                },
                Run {
                    start: 7168,
                    len: 5120,
                    zero: true
                },
            ]
        );
        assert_eq!(runs.iter().map(|r| r.len).sum::<usize>(), buf.len());
    }

    #[test]
    fn zero_runs_merge_neighbouring_data_blocks() {
        let buf = vec![1u8; 3 * 4096];
        assert_eq!(
            zero_runs(&buf, 0),
            vec![Run {
                start: 0,
                len: buf.len(),
                zero: false
            }]
        );
    }

    #[test]
    fn known_zero_ranges_cover_only_inside() {
        let kz = KnownZero::Ranges(vec![(0, 10), (20, 10)]);
        assert!(kz.covers(0, 10));
        assert!(kz.covers(22, 3));
        assert!(!kz.covers(5, 10));
        assert!(!kz.covers(10, 1));
        assert!(!kz.covers(29, 2));
        assert!(KnownZero::All.covers(5, 100));
        assert!(!KnownZero::Ranges(vec![]).covers(0, 1));
    }

    #[test]
    fn complement_and_subtract() {
        assert_eq!(
            complement(&[(2, 3), (8, 2)], 12),
            vec![(0, 2), (5, 3), (10, 2)]
        );
        assert_eq!(complement(&[(0, 12)], 12), vec![]);
        assert_eq!(complement(&[], 5), vec![(0, 5)]);
        assert_eq!(complement(&[(3, 10)], 5), vec![(0, 3)]);
        assert_eq!(
            subtract(&[(0, 10), (20, 10)], &[(2, 3), (8, 14), (25, 1)]),
            vec![(0, 2), (5, 3), (22, 3), (26, 4)]
        );
        assert_eq!(subtract(&[(0, 10)], &[]), vec![(0, 10)]);
        assert_eq!(subtract(&[(5, 5)], &[(0, 20)]), vec![]);
    }
    #[test]
    fn union_merges_overlapping_and_touching_ranges() {
        assert_eq!(
            union(&[(0, 10), (20, 5), (40, 1)], &[(5, 10), (25, 5), (100, 0)]),
            vec![(0, 15), (20, 10), (40, 1)]
        );
        assert_eq!(union(&[], &[(3, 4)]), vec![(3, 4)]);
    }
}
