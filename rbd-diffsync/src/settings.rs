//! The settings of the jobs, with their defaults and ranges, checked in one place before
//! anything connects. The command line's options, the C setters and the Python keywords map
//! onto [`Settings`] and [`BatchSettings`]: a new setting is one
//! field here (with its default and its check), then one line per binding.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::plan;
use crate::spec::ClusterSpec;

/// Default size of one data chunk: half the default RBD object size. With the default window
/// it was the fastest of 1, 2 and 4 MiB at 0 and 3 ms of round trip (the sweep behind the
/// latency proxy in BENCHMARKS.md).
pub const DEFAULT_CHUNK_SIZE: u64 = 2 << 20;
/// Default window: memory for this many chunks (64 MiB with the default chunk), our buffers,
/// librados's receive buffers and librbd's copies of writes together. 32 was the fastest of
/// 8, 16 and 32 for the full copy and the incremental, at 0 and 3 ms of round trip; 16 was up
/// to 1.14 times slower.
pub const DEFAULT_WINDOW: usize = 32;
/// Default least time between two progress calls.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// The largest chunk: 1 GiB.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;
/// The widest window, in chunks.
pub const MAX_WINDOW: usize = 1024;
/// The most transfers a batch runs at once.
pub const MAX_PARALLEL: usize = 1024;

/// What a transfer or a verification is given besides its images: where to connect, how wide
/// and how fast to read and write, how often to report, and what it may do. Each field has
/// its default in [`Settings::default`] and its range in [`Settings::check`], which every run
/// calls before it connects (an error of kind
/// [`InvalidArgument`](crate::ErrorKind::InvalidArgument) naming the setting).
///
/// ```
/// use rbd_diffsync::{ClusterSpec, DiffTransfer, Settings};
///
/// let mut settings = Settings::default();
/// settings.cluster = ClusterSpec::new().conf("/etc/ceph/ceph.conf");
/// settings.window = 64;
/// settings.verify = true;
/// let transfer = DiffTransfer::new("rbd/vol@s1".parse()?, "backups/vol".parse()?)
///     .settings(settings);
/// # Ok::<(), rbd_diffsync::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// The source's cluster, and the destination's unless `dest_cluster` says otherwise
    /// (default: librados's defaults, as the rbd CLI finds them). Its connect timeout, when
    /// set, must be above 0; an operation timeout of 0 waits for ever.
    pub cluster: ClusterSpec,
    /// The destination's cluster, when it is not the source's.
    pub dest_cluster: Option<ClusterSpec>,
    /// The largest data request, in bytes: a multiple of 4 KiB from 4 KiB to 1 GiB (default
    /// [`DEFAULT_CHUNK_SIZE`], 2 MiB).
    pub chunk_size: u64,
    /// The window of I/O in flight, in chunks, from 1 to [`MAX_WINDOW`] (default
    /// [`DEFAULT_WINDOW`]): a job holds at most `window × chunk_size` bytes of data at once,
    /// librados's receive buffers included. Smaller pieces share that memory, so many more of
    /// them (up to 128) are in flight.
    pub window: usize,
    /// Bytes per second read from the source at most; `None` for no cap (the default), and
    /// `Some(0)` is refused (see [`DiffTransfer::rate_limit`](crate::DiffTransfer::rate_limit)).
    pub rate_limit: Option<u64>,
    /// The least time between two progress calls (default [`DEFAULT_PROGRESS_INTERVAL`]).
    pub progress_interval: Duration,
    /// A transfer diffs by whole objects (see
    /// [`DiffTransfer::whole_object`](crate::DiffTransfer::whole_object)); off by default.
    pub whole_object: bool,
    /// A transfer may write over what the destination holds (`--force`; see
    /// [`DiffTransfer::overwrite_existing`](crate::DiffTransfer::overwrite_existing)); off by
    /// default.
    pub overwrite_existing: bool,
    /// A transfer reads back and compares what its end snapshot will be claimed to equal
    /// (see [`DiffTransfer::verify`](crate::DiffTransfer::verify)); off by default.
    pub verify: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster: ClusterSpec::default(),
            dest_cluster: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            window: DEFAULT_WINDOW,
            rate_limit: None,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            whole_object: false,
            overwrite_existing: false,
            verify: false,
        }
    }
}

impl Settings {
    /// Checks every setting against its range: the first one out of it is the error.
    pub fn check(&self) -> Result<()> {
        check_io(self.chunk_size, self.window)?;
        if self.rate_limit == Some(0) {
            return Err(Error::invalid(
                "rate limit 0: a cap must be above 0 (no cap is None)",
            ));
        }
        check_cluster(&self.cluster, "")?;
        match &self.dest_cluster {
            Some(spec) => check_cluster(spec, "destination "),
            None => Ok(()),
        }
    }
}

/// Checks a chunk size and a window (in chunks).
pub(crate) fn check_io(chunk_size: u64, window: usize) -> Result<()> {
    if chunk_size < plan::ZERO_BLOCK
        || chunk_size % plan::ZERO_BLOCK != 0
        || chunk_size > MAX_CHUNK_SIZE
    {
        return Err(Error::invalid(format!(
            "chunk size {chunk_size} is not a multiple of 4096 between 4 KiB and 1 GiB"
        )));
    }
    if window == 0 || window > MAX_WINDOW {
        return Err(Error::invalid(format!(
            "window {window} is not between 1 and {MAX_WINDOW}"
        )));
    }
    Ok(())
}

/// Checks what a cluster spec says of time: a connect timeout of 0 would give up at once.
fn check_cluster(spec: &ClusterSpec, which: &str) -> Result<()> {
    if spec.connect_timeout_value() == Some(Duration::ZERO) {
        return Err(Error::invalid(format!(
            "{which}connect timeout 0: it must be above 0"
        )));
    }
    Ok(())
}

/// Volumes transferred at once by default: with more, a one-node cluster gains nothing
/// (BENCHMARKS.md, "Many volumes at once").
pub const DEFAULT_PARALLEL: usize = 4;
/// Memory the transfers of a batch hold at once by default, librados's receive buffers
/// included: 32 chunks of 2 MiB.
pub const DEFAULT_BATCH_BUDGET: usize = 32 * DEFAULT_CHUNK_SIZE as usize;
/// Requests in flight at once by default, for all the transfers of a batch together.
pub const DEFAULT_BATCH_REQUESTS: usize = 256;

/// The settings of a batch, shared by its transfers. Each transfer keeps its own settings
/// besides (chunk size, window, `overwrite_existing`, its own rate limit...): its window still
/// bounds what it holds, and the batch's budget bounds what they hold together.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchSettings {
    /// Transfers running at once, at least 1 (default [`DEFAULT_PARALLEL`]); the others wait
    /// their turn, in the order given.
    pub parallel: usize,
    /// Bytes of data all the transfers hold at once, librados's receive buffers included
    /// (default [`DEFAULT_BATCH_BUDGET`], 64 MiB). A piece larger than the whole budget
    /// still goes, alone.
    pub memory_budget: usize,
    /// Requests in flight at once, for all the transfers together (default
    /// [`DEFAULT_BATCH_REQUESTS`]).
    pub max_requests: usize,
    /// Bytes per second read by all the transfers together, at most (see
    /// [`DiffTransfer::rate_limit`](crate::DiffTransfer::rate_limit)); `None` for no cap.
    pub rate_limit: Option<u64>,
    /// The least time between two calls of the batch's progress callback (default 200 ms).
    pub progress_interval: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            parallel: DEFAULT_PARALLEL,
            memory_budget: DEFAULT_BATCH_BUDGET,
            max_requests: DEFAULT_BATCH_REQUESTS,
            rate_limit: None,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

impl BatchSettings {
    /// Whether every setting is in range: if not, an
    /// [`InvalidArgument`](crate::ErrorKind::InvalidArgument) error naming the first that is not.
    /// [`SyncMany::run`](crate::SyncMany::run) checks them too, and then fails every transfer with that error.
    pub fn check(&self) -> Result<()> {
        if self.parallel == 0 || self.parallel > MAX_PARALLEL {
            return Err(Error::invalid(format!(
                "parallel {} is not between 1 and {MAX_PARALLEL}",
                self.parallel
            )));
        }
        if self.memory_budget == 0 || self.max_requests == 0 {
            return Err(Error::invalid(
                "the memory budget and the requests of a batch must be above 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn the_defaults_pass_and_each_range_is_checked() {
        assert!(Settings::default().check().is_ok());
        let bad = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            let e = s.check().unwrap_err();
            assert_eq!(
                (e.kind(), e.errno()),
                (ErrorKind::InvalidArgument, libc::EINVAL)
            );
            e.message().to_owned()
        };
        assert!(bad(|s| s.chunk_size = 4095).starts_with("chunk size 4095"));
        assert!(bad(|s| s.chunk_size = MAX_CHUNK_SIZE + 4096).starts_with("chunk size"));
        assert!(bad(|s| s.window = 0).starts_with("window 0"));
        assert!(bad(|s| s.window = MAX_WINDOW + 1).starts_with("window 1025"));
        assert!(bad(|s| s.rate_limit = Some(0)).starts_with("rate limit 0"));
        assert!(
            bad(|s| s.cluster = ClusterSpec::new().connect_timeout(Duration::ZERO))
                .starts_with("connect timeout 0")
        );
        assert!(bad(|s| {
            s.dest_cluster = Some(ClusterSpec::new().connect_timeout(Duration::ZERO))
        })
        .starts_with("destination connect timeout 0"));
        let s = Settings {
            cluster: ClusterSpec::new().op_timeout(Duration::ZERO),
            chunk_size: MAX_CHUNK_SIZE,
            window: MAX_WINDOW,
            rate_limit: Some(1),
            ..Settings::default()
        };
        assert!(s.check().is_ok());
    }

    #[test]
    fn a_batch_is_checked() {
        let batch = |parallel, memory_budget, max_requests| BatchSettings {
            parallel,
            memory_budget,
            max_requests,
            ..BatchSettings::default()
        };
        let check_batch = |p, b, r| batch(p, b, r).check();
        assert!(check_batch(1, 1, 1).is_ok());
        assert!(check_batch(MAX_PARALLEL, 1, 1).is_ok());
        for (p, b, r) in [(0, 1, 1), (MAX_PARALLEL + 1, 1, 1), (1, 0, 1), (1, 1, 0)] {
            assert_eq!(
                check_batch(p, b, r).unwrap_err().kind(),
                ErrorKind::InvalidArgument
            );
        }
    }
}
