//! The diff scan, in a time that follows what changed rather than the image size.
//!
//! librbd 16.2's exact diff (`whole_object = false`) lists the snapshots of every object of the
//! range, allocated or not: 1.3 million requests for a 5 TiB image, about a minute however
//! little it holds. A whole-object diff reads the object map instead, when the image has
//! fast-diff and its map is valid, in milliseconds. So with a trustworthy object map the scan
//! asks for the whole-object diff first, coalesces the objects it reports into ranges, and asks
//! for the exact diff of those ranges only. The whole-object diff covers every object the exact
//! one reports anything in (striped or not, a clone's parent data included), so the exact diff
//! over its ranges is the exact diff of the image.
//!
//! One exact call lists the snapshots of the objects of its range with
//! `rbd_concurrent_management_ops` requests in flight, but calls follow one another; so ranges
//! a few objects apart are scanned in one call (the objects between cost a request each, in
//! parallel), and the calls run a cell of objects at a time on a few threads
//! ([`crate::plan::pipeline`]), the copy starting with the first cell.

use crate::error::Result;
use crate::plan::pipeline::{self, Outline};
use crate::plan::{self, DiffExtent};
use crate::progress::StopCheck;
use crate::rbd::image::Image;

/// Ranges at most this many objects apart are scanned by one exact call.
const GAP_OBJECTS: u64 = 8;

/// How a diff is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// One whole-object pass: what the caller asked for.
    WholeObject,
    /// One exact pass over the whole range: without a usable object map.
    Exact,
    /// A whole-object pass from the object map, then an exact pass over what it found.
    Narrowed,
}

impl Method {
    /// The method for an exact diff (unless `whole_object`) of images open at the snapshots
    /// the diff is between (the end one, and for an incremental the base).
    pub(crate) fn choose(whole_object: bool, at: &[&Image]) -> Result<Method> {
        if whole_object {
            return Ok(Method::WholeObject);
        }
        for image in at {
            if !image.object_map_usable()? {
                return Ok(Method::Exact);
            }
        }
        Ok(Method::Narrowed)
    }
}

/// What a transfer's scan finds before its copy starts (see [`crate::plan::pipeline`]): for a
/// whole-object diff the diff itself; for an exact one the ranges to scan exactly while the
/// copy runs, which with a usable object map are the objects it says changed (coalesced).
pub(crate) fn outline(
    image: &Image,
    from: Option<&str>,
    size: u64,
    method: Method,
    stop: &StopCheck,
) -> Result<Outline> {
    if method == Method::Exact {
        return Ok(Outline::Scan(if size > 0 {
            vec![(0, size)]
        } else {
            Vec::new()
        }));
    }
    let mut extents = Vec::new();
    image.diff_iterate(from, 0, size, true, true, |e| {
        extents.push(e);
        !stop.stopped()
    })?;
    if method == Method::WholeObject {
        return Ok(Outline::Known(plan::normalize(extents)));
    }
    let layout = image.layout()?;
    Ok(Outline::Scan(coalesce(
        &extents,
        GAP_OBJECTS << layout.order,
    )))
}

/// The exact diff of `image` (at the snapshot it is open at) since `from` over
/// `[offset, offset + len)`, as librbd reports it (its callers normalise what they gather). A
/// `stop` that turns true ends it with `ECANCELED`.
pub(crate) fn exact(
    image: &Image,
    from: Option<&str>,
    offset: u64,
    len: u64,
    stop: &StopCheck,
) -> Result<Vec<DiffExtent>> {
    let mut extents = Vec::new();
    image.diff_iterate(from, offset, len, true, false, |e| {
        extents.push(e);
        !stop.stopped()
    })?;
    Ok(extents)
}

/// The diff of `image` (at the snapshot it is open at) since `from` (or since it was empty)
/// over `[0, size)`, parent data included, normalised: found as a transfer finds it, cell by
/// cell (see [`crate::plan::pipeline`]). A `stop` that turns true ends the scan with `ECANCELED`.
pub(crate) fn diff(
    image: &Image,
    from: Option<&str>,
    size: u64,
    method: Method,
    stop: &StopCheck,
) -> Result<Vec<DiffExtent>> {
    match outline(image, from, size, method, stop)? {
        Outline::Known(extents) => Ok(extents),
        Outline::Scan(ranges) => {
            let cell = pipeline::cell_size(image.layout()?.order);
            let scan = |offset, len| exact(image, from, offset, len, stop);
            pipeline::scan_all(&ranges, cell, size, &scan)
        }
    }
}

/// The diff of `image` (at the snapshot it is open at) since `from` over the whole image, as a
/// transfer finds it, with the method it chose: for the project's own tests.
#[cfg(feature = "internals")]
pub fn scan_diff(
    image: &Image,
    from: Option<&Image>,
    from_name: Option<&str>,
    whole_object: bool,
) -> Result<(Method, Vec<DiffExtent>)> {
    let mut at = vec![image];
    at.extend(from);
    let method = Method::choose(whole_object, &at)?;
    let stop = StopCheck::never();
    let extents = diff(image, from_name, image.size()?, method, &stop)?;
    Ok((method, extents))
}

/// The ranges of `extents`, sorted, merged where they touch, overlap or lie at most `gap`
/// bytes apart.
pub(crate) fn coalesce(extents: &[DiffExtent], gap: u64) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = extents
        .iter()
        .filter(|e| e.len > 0)
        .map(|e| (e.offset, e.offset + e.len))
        .collect();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in sorted {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_add(gap) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// The ranges of `[0, size)` that hold data in `image` (parent data included), sorted and
/// merged. `whole_object` asks for whole objects: cheap with fast-diff, and only ever larger.
pub(crate) fn allocated(
    image: &Image,
    size: u64,
    whole_object: bool,
    stop: &StopCheck,
) -> Result<Vec<(u64, u64)>> {
    let method = Method::choose(whole_object, &[image])?;
    let mut allocated = diff(image, None, size, method, stop)?;
    allocated.retain(|e| e.exists);
    Ok(allocated.iter().map(|e| (e.offset, e.len)).collect())
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
    fn coalesce_merges_touching_and_overlapping_ranges_whatever_their_kind() {
        let extents = [
            ext(8, 4, false),
            ext(0, 4, true),
            ext(4, 4, true),
            ext(10, 6, true),
            ext(30, 0, true),
        ];
        assert_eq!(coalesce(&extents, 0), vec![(0, 16)]);
    }

    #[test]
    fn coalesce_bridges_gaps_up_to_the_limit_only() {
        let extents = [ext(0, 4, true), ext(10, 4, true), ext(25, 5, false)];
        assert_eq!(coalesce(&extents, 5), vec![(0, 4), (10, 4), (25, 5)]);
        assert_eq!(coalesce(&extents, 6), vec![(0, 14), (25, 5)]);
        assert_eq!(coalesce(&extents, 10), vec![(0, 14), (25, 5)]);
        assert_eq!(coalesce(&extents, 11), vec![(0, 30)]);
        assert_eq!(coalesce(&extents, 0), vec![(0, 4), (10, 4), (25, 5)]);
    }

    #[test]
    fn coalesce_keeps_a_range_that_contains_the_next() {
        let extents = [ext(0, 100, true), ext(10, 5, true), ext(120, 5, true)];
        assert_eq!(coalesce(&extents, 10), vec![(0, 100), (120, 5)]);
        assert_eq!(coalesce(&extents, 20), vec![(0, 125)]);
    }

    #[test]
    fn coalesce_of_nothing_is_nothing() {
        assert!(coalesce(&[], 1 << 30).is_empty());
    }

    #[test]
    fn coalesce_does_not_overflow_at_the_top() {
        let extents = [ext(u64::MAX - 10, 10, true), ext(0, 1, true)];
        assert_eq!(coalesce(&extents, u64::MAX), vec![(0, u64::MAX)]);
    }
}
