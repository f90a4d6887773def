//! `DiffTransfer`: what `rbd export-diff | rbd import-diff` does, checked first and done with a
//! window of parallel I/O.

use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Pool};
use crate::engine::{self, Window};
use crate::error::{Error, Result};
use crate::image::{DiffExtent, Image, Snapshot};
use crate::plan::{self, KnownZero, Piece};
use crate::progress::{CancelToken, Progress, ProgressFn, Reporter, TransferStats};
use crate::spec::{ClusterSpec, ImageSpec};

/// Default size of one data chunk: half the default RBD object size. With the default window
/// it is as fast as 4 MiB chunks and holds half the memory (the sweep in BENCHMARKS.md).
pub const DEFAULT_CHUNK_SIZE: u64 = 2 << 20;
/// Default window: memory for this many chunks.
pub const DEFAULT_WINDOW: usize = 16;
/// Requests in flight at most: enough to keep an OSD busy with small writes, few enough not
/// to flood its queue.
const MAX_REQUESTS: usize = 128;
/// Zeroing requests need no buffer, so they are cut this many times larger than data chunks.
const ZERO_CHUNK_FACTOR: u64 = 16;

/// A transfer of the changes of `source` (at its snapshot, or HEAD) since `from_snap` (or since
/// the image was empty) into `dest`.
///
/// ```no_run
/// use rbd_diffsync::{ClusterSpec, DiffTransfer};
///
/// let stats = DiffTransfer::new("volumes/vol-1@snap2".parse()?, "backups/vol-1.backup".parse()?)
///     .from_snap("snap1")
///     .cluster(ClusterSpec::new().conf("/etc/ceph/ceph.conf").id("cinder"))
///     .dest_cluster(ClusterSpec::new().conf("/etc/ceph/backup.conf").id("cinder-backup"))
///     .on_progress(|p| eprintln!("{} / {} bytes", p.bytes_done, p.bytes_total))
///     .run()?;
/// println!("{} bytes written in {:?}", stats.bytes_written, stats.elapsed);
/// # Ok::<(), rbd_diffsync::Error>(())
/// ```
pub struct DiffTransfer {
    source: ImageSpec,
    dest: ImageSpec,
    from_snap: Option<String>,
    source_cluster: ClusterSpec,
    dest_cluster: Option<ClusterSpec>,
    chunk_size: u64,
    window: usize,
    whole_object: bool,
    progress: Option<ProgressFn>,
    progress_interval: Duration,
    cancel: CancelToken,
}

impl std::fmt::Debug for DiffTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffTransfer")
            .field("source", &self.source)
            .field("dest", &self.dest)
            .field("from_snap", &self.from_snap)
            .field("source_cluster", &self.source_cluster)
            .field("dest_cluster", &self.dest_cluster)
            .field("chunk_size", &self.chunk_size)
            .field("window", &self.window)
            .field("whole_object", &self.whole_object)
            .finish_non_exhaustive()
    }
}

impl DiffTransfer {
    /// Transfers `source` (`pool[/ns]/image@snap`; without `@snap`, HEAD, and then no snapshot
    /// is created on the destination) into the image `dest` (`pool[/ns]/image`).
    pub fn new(source: ImageSpec, dest: ImageSpec) -> Self {
        DiffTransfer {
            source,
            dest,
            from_snap: None,
            source_cluster: ClusterSpec::default(),
            dest_cluster: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            window: DEFAULT_WINDOW,
            whole_object: false,
            progress: None,
            progress_interval: Duration::from_millis(200),
            cancel: CancelToken::new(),
        }
    }

    /// Transfers only what changed since this snapshot, which must exist on both images:
    /// an incremental. Without it the transfer is full.
    pub fn from_snap(mut self, snap: impl Into<String>) -> Self {
        self.from_snap = Some(snap.into());
        self
    }

    /// The source's cluster, and the destination's unless [`dest_cluster`](Self::dest_cluster)
    /// says otherwise.
    pub fn cluster(mut self, spec: ClusterSpec) -> Self {
        self.source_cluster = spec;
        self
    }

    /// The destination's cluster, when it is not the source's.
    pub fn dest_cluster(mut self, spec: ClusterSpec) -> Self {
        self.dest_cluster = Some(spec);
        self
    }

    /// The largest data request, in bytes: a multiple of 4 KiB (default 2 MiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// The window of I/O in flight, as a number of chunks (default 16): the transfer holds at
    /// most `window × chunk_size` bytes of data at once, librados's receive buffers included.
    /// Smaller pieces share that memory, so many more of them (up to 128) are in flight.
    pub fn window(mut self, chunks: usize) -> Self {
        self.window = chunks;
        self
    }

    /// Diffs by whole objects, as `rbd export-diff --whole-object`: cheaper to compute with
    /// fast-diff, more data to read (zero detection keeps it from being written).
    pub fn whole_object(mut self, on: bool) -> Self {
        self.whole_object = on;
        self
    }

    /// Called on the thread running the transfer, at most every [`progress_interval`]
    /// (default 200 ms), and once at the start and at the end.
    ///
    /// [`progress_interval`]: Self::progress_interval
    pub fn on_progress(mut self, f: impl FnMut(&Progress) + Send + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// The least time between two progress calls.
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }

    /// A token another thread may use to cancel the transfer.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    fn check_settings(&self) -> Result<()> {
        if let Some(snap) = self.dest.snap() {
            return Err(Error::InvalidSpec {
                spec: self.dest.to_string(),
                reason: format!(
                    "the destination must be an image; its snapshot is named after the source's, not {snap:?}"
                ),
            });
        }
        if let Some(from) = &self.from_snap {
            if from.is_empty() || from.contains(['@', '/', '\0']) {
                return Err(Error::InvalidArgument(format!(
                    "invalid from_snap name {from:?}"
                )));
            }
            if Some(from.as_str()) == self.source.snap() {
                return Err(Error::InvalidArgument(format!(
                    "from_snap {from:?} is the end snapshot of {}: there is nothing to transfer",
                    self.source
                )));
            }
        }
        if self.chunk_size < plan::ZERO_BLOCK
            || self.chunk_size % plan::ZERO_BLOCK != 0
            || self.chunk_size > 1 << 30
        {
            return Err(Error::InvalidArgument(format!(
                "chunk size {} is not a multiple of 4096 between 4 KiB and 1 GiB",
                self.chunk_size
            )));
        }
        if self.window == 0 || self.window > 1024 {
            return Err(Error::InvalidArgument(format!(
                "window {} is not between 1 and 1024",
                self.window
            )));
        }
        if self.source.image_path() == self.dest.image_path()
            && self
                .dest_cluster
                .as_ref()
                .is_none_or(|d| *d == self.source_cluster)
        {
            return Err(Error::InvalidArgument(format!(
                "source and destination are the same image {}",
                self.dest.image_path()
            )));
        }
        Ok(())
    }

    /// Checks everything, then transfers. Nothing is written unless every check passed; the
    /// destination's end snapshot is created only after every write has succeeded.
    pub fn run(mut self) -> Result<TransferStats> {
        let started = Instant::now();
        self.check_settings()?;
        let mut reporter = Reporter::new(self.progress.take(), self.progress_interval, started);

        // Source: image, end snapshot, from_snap.
        let src_cluster = Cluster::connect(&self.source_cluster)?;
        let src_pool = src_cluster.pool(self.source.pool(), self.source.namespace())?;
        let source = Image::open_read_only(&src_pool, self.source.image(), self.source.snap())?;
        let src_info = source.info()?;
        if let Some(from) = &self.from_snap {
            let snaps = source.snapshots()?;
            let Some(from_snap) = snaps.iter().find(|s| &s.name == from) else {
                return Err(Error::SnapNotFound {
                    image: self.source.image_path(),
                    snap: from.clone(),
                });
            };
            if let Some(end) = self.source.snap() {
                let end_id = snaps.iter().find(|s| s.name == end).map(|s| s.id);
                if end_id.is_some_and(|id| id < from_snap.id) {
                    return Err(Error::InvalidArgument(format!(
                        "from_snap {from:?} is newer than the end snapshot {end:?} of {}",
                        self.source.image_path()
                    )));
                }
            }
        }

        // Destination: pool, image (an incremental needs it), snapshots.
        let dest_cluster = match &self.dest_cluster {
            Some(spec) if *spec != self.source_cluster => Cluster::connect(spec)?,
            _ => src_cluster.clone(),
        };
        let dest_pool = dest_cluster.pool(self.dest.pool(), self.dest.namespace())?;
        let existing = match Image::open(&dest_pool, self.dest.image()) {
            Ok(image) => Some(image),
            Err(Error::ImageNotFound { .. }) if self.from_snap.is_none() => None,
            Err(e) => return Err(e),
        };
        if let Some(dest) = &existing {
            let snaps = dest.snapshots()?;
            if let Some(end) = self.source.snap() {
                if snaps.iter().any(|s| s.name == end) {
                    return Err(Error::SnapExists {
                        image: self.dest.image_path(),
                        snap: end.to_owned(),
                    });
                }
            }
            if let Some(from) = &self.from_snap {
                let Some(from_snap) = snaps.iter().find(|s| &s.name == from) else {
                    return Err(Error::SnapNotFound {
                        image: self.dest.image_path(),
                        snap: from.clone(),
                    });
                };
                self.check_unchanged_since(dest, from_snap)?;
            }
        }

        // The diff. Nothing has been written so far.
        let mut extents = Vec::new();
        source
            .diff_iterate(
                self.from_snap.as_deref(),
                0,
                src_info.size,
                true,
                self.whole_object,
                |e| {
                    extents.push(e);
                    !self.cancel.is_cancelled()
                },
            )
            .map_err(|e| self.cancelled_or(e))?;
        let extents = plan::normalize(extents);
        let diff_bytes = extents.iter().map(|e| e.len).sum();
        let extent_count = extents.len() as u64;

        let known_zero_at_from = match &self.from_snap {
            Some(from) => Some(known_zero_at(&src_pool, &self.source, from, src_info.size)?),
            None => None,
        };
        if self.cancel.is_cancelled() {
            return Err(self.cancelled());
        }

        // Writes start here.
        let created = existing.is_none();
        let dest = match existing {
            Some(image) => image,
            None => {
                Image::create(
                    &dest_pool,
                    self.dest.image(),
                    src_info.size,
                    Some(src_info.order),
                )?;
                Image::open(&dest_pool, self.dest.image())?
            }
        };
        let dest_size = dest.size()?;
        let (known_zero, extra_zeroing) = if created {
            (KnownZero::All, Vec::new())
        } else if self.from_snap.is_none() {
            full_over_existing(&dest, dest_size, src_info.size, &extents)?
        } else {
            (known_zero_at_from.unwrap_or(KnownZero::Nothing), Vec::new())
        };
        let mut pieces: Vec<Piece> = plan::pieces(
            &extents,
            self.chunk_size,
            self.chunk_size * ZERO_CHUNK_FACTOR,
        );
        if !extra_zeroing.is_empty() {
            pieces.extend(plan::pieces(
                &extra_zeroing,
                self.chunk_size,
                self.chunk_size * ZERO_CHUNK_FACTOR,
            ));
            pieces.sort_by_key(|p| p.offset);
        }
        reporter.set_total(pieces.iter().map(|p| p.len).sum());

        if src_info.size > dest_size {
            dest.resize(src_info.size)?;
        }
        let window = Window {
            budget: self.window * self.chunk_size as usize,
            max_requests: MAX_REQUESTS.max(self.window),
        };
        let job = engine::Job {
            pieces: &pieces,
            known_zero: &known_zero,
            window,
        };
        let counters = engine::run(&source, &dest, job, &mut reporter, &self.cancel, || {
            self.cancelled()
        })?;
        if src_info.size < dest_size {
            dest.resize(src_info.size)?;
        }
        dest.flush()?;
        let snapshot_started = Instant::now();
        if let Some(end) = self.source.snap() {
            dest.create_snapshot(end)?;
        }
        let snapshot_elapsed = snapshot_started.elapsed();
        reporter.finish();
        Ok(TransferStats {
            bytes_read: counters.read,
            bytes_written: counters.written,
            bytes_zeroed: counters.zeroed,
            bytes_skipped: counters.skipped,
            extents: extent_count,
            diff_bytes,
            image_size: src_info.size,
            created_destination: created,
            end_snap: self.source.snap().map(str::to_owned),
            elapsed: started.elapsed(),
            snapshot_elapsed,
        })
    }
}

impl DiffTransfer {
    fn cancelled(&self) -> Error {
        Error::Cancelled {
            image: self.dest.image_path(),
        }
    }

    /// diff_iterate stopped by our callback reports ECANCELED: say it was the token.
    fn cancelled_or(&self, e: Error) -> Error {
        if self.cancel.is_cancelled() {
            self.cancelled()
        } else {
            e
        }
    }

    /// An incremental continues a chain only if the destination still reads as it did at
    /// `from_snap`; anything written there since would be silently kept or mixed in.
    fn check_unchanged_since(&self, dest: &Image, from: &Snapshot) -> Result<()> {
        let size = dest.size()?;
        let mut changed = size != from.size;
        if !changed {
            dest.diff_iterate(Some(&from.name), 0, size, true, true, |_| {
                changed = true;
                false
            })
            .or_else(|e| if changed { Ok(()) } else { Err(e) })?;
        }
        if changed {
            return Err(Error::DestinationChanged {
                image: self.dest.image_path(),
                snap: from.name.clone(),
            });
        }
        Ok(())
    }
}

/// Where the source read zeros at `from_snap`: an incremental's destination reads the same
/// there (it equals the source at `from_snap` and has not changed since), so zeros need no
/// request. Whole objects are asked for: cheap with fast-diff, and only ever too cautious.
fn known_zero_at(pool: &Pool, source: &ImageSpec, from: &str, size: u64) -> Result<KnownZero> {
    let at_from = Image::open_read_only(pool, source.image(), Some(from))?;
    let allocated = allocated_ranges(&at_from, at_from.size()?, true)?;
    Ok(KnownZero::Ranges(plan::complement(&allocated, size)))
}

/// The ranges of `[0, size)` that hold data in `image` (parent data included), sorted and
/// merged. `whole_object` asks for whole objects: cheap with fast-diff, and only ever larger.
fn allocated_ranges(image: &Image, size: u64, whole_object: bool) -> Result<Vec<(u64, u64)>> {
    let mut allocated = Vec::new();
    image.diff_iterate(None, 0, size, true, whole_object, |e| {
        if e.exists {
            allocated.push(e);
        }
        true
    })?;
    Ok(plan::normalize(allocated)
        .iter()
        .map(|e| (e.offset, e.len))
        .collect())
}

/// A full transfer into an image that exists already: its allocated ranges that the source's
/// diff does not cover must be zeroed, and the rest reads zeros already.
fn full_over_existing(
    dest: &Image,
    dest_size: u64,
    size: u64,
    extents: &[DiffExtent],
) -> Result<(KnownZero, Vec<DiffExtent>)> {
    let allocated: Vec<(u64, u64)> = allocated_ranges(dest, dest_size, false)?
        .into_iter()
        .filter(|&(offset, _)| offset < size)
        .map(|(offset, len)| (offset, len.min(size - offset)))
        .collect();
    let covered: Vec<(u64, u64)> = extents.iter().map(|e| (e.offset, e.len)).collect();
    let stale = plan::subtract(&allocated, &covered)
        .into_iter()
        .map(|(offset, len)| DiffExtent {
            offset,
            len,
            exists: false,
        })
        .collect();
    Ok((KnownZero::Ranges(plan::complement(&allocated, size)), stale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ImageSpec {
        s.parse().unwrap()
    }

    #[test]
    fn a_transfer_can_move_to_another_thread() {
        fn send<T: Send>(_: &T) {}
        send(&DiffTransfer::new(spec("a/b@s"), spec("c/d")));
    }

    #[test]
    fn settings_are_checked_before_connecting() {
        let bad = [
            DiffTransfer::new(spec("a/b@s"), spec("c/d@x")),
            DiffTransfer::new(spec("a/b@s"), spec("c/d")).from_snap("s"),
            DiffTransfer::new(spec("a/b@s"), spec("c/d")).from_snap("x@y"),
            DiffTransfer::new(spec("a/b@s"), spec("c/d")).chunk_size(1000),
            DiffTransfer::new(spec("a/b@s"), spec("c/d")).window(0),
            DiffTransfer::new(spec("a/b@s"), spec("a/b")),
        ];
        for t in bad {
            let what = format!("{t:?}");
            let err = t.check_settings().unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL, "{what}: {err}");
        }
        let other_cluster = DiffTransfer::new(spec("a/b@s"), spec("a/b"))
            .dest_cluster(ClusterSpec::new().conf("/other/ceph.conf"));
        assert!(other_cluster.check_settings().is_ok());
    }
}
