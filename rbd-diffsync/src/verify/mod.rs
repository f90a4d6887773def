//! **Verification**: two images compared byte for byte ([`compare`]), both read with a window
//! of requests in flight; ranges that neither image has allocated read as zeros on both, and
//! are not read. [`Verify`] compares two whole images; the protocol uses [`written`] to check
//! what a transfer wrote.
//!
//! It may call: [`crate::copy`] (the sources' reads, the window, the rate cap),
//! [`crate::plan`], [`crate::rbd`], and the shared vocabulary.

use std::panic::resume_unwind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::copy::engine::Window;
use crate::copy::rate::RateLimit;
use crate::error::{Error, Result};
use crate::plan::{self};
use crate::progress::{
    per_second, CancelToken, Phase, Progress, ProgressFlow, ProgressFn, Reporter,
};
use crate::rbd::cluster::Cluster;
use crate::rbd::image::Image;
use crate::settings::Settings;
use crate::spec::{ClusterSpec, ImageSpec};

mod compare;

pub(crate) use compare::{chunk_charge, compare, written, Compare, Reads};

/// A comparison of two images, each at a snapshot (or HEAD), on the same cluster or on two:
/// what `rbd export A@S - | md5sum` and `rbd export B@S - | md5sum` tell, with many reads in
/// flight, without reading what neither image has allocated, and naming the first byte that
/// differs.
///
/// ```no_run
/// use rbd_diffsync::{ClusterSpec, ErrorKind, Verify};
///
/// let result = Verify::new("volumes/vol-1@snap2".parse()?, "backups/vol-1.backup@snap2".parse()?)
///     .cluster(ClusterSpec::new().conf("/etc/ceph/ceph.conf"))
///     .dest_cluster(ClusterSpec::new().conf("/etc/ceph/backup.conf"))
///     .run();
/// match result {
///     Ok(stats) => println!("equal: {} bytes compared", stats.bytes_compared),
///     Err(e) if e.kind() == ErrorKind::Mismatch => println!("differ at {:?}", e.offset()),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), rbd_diffsync::Error>(())
/// ```
pub struct Verify {
    a: ImageSpec,
    b: ImageSpec,
    settings: Settings,
    progress: Option<ProgressFn>,
    cancel: CancelToken,
}

impl std::fmt::Debug for Verify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verify")
            .field("a", &self.a)
            .field("b", &self.b)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What a verification that found both images equal did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct VerifyStats {
    /// The first image, `pool[/namespace]/image[@snap]`, its pool resolved.
    pub source: String,
    /// The second image, likewise.
    pub dest: String,
    /// The size of both.
    pub image_size: u64,
    /// Bytes read from each image and compared.
    pub bytes_compared: u64,
    /// Bytes allocated on neither image, which read as zeros on both and were not read.
    pub bytes_skipped: u64,
    /// Wall time, connecting included.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::progress::seconds"))]
    pub elapsed: Duration,
}

impl VerifyStats {
    /// Image bytes verified per second of wall time.
    pub fn throughput(&self) -> f64 {
        per_second(self.image_size, self.elapsed)
    }
}

impl Verify {
    /// Compares image `a` with image `b` (`pool[/ns]/image[@snap]`; without `@snap`, HEAD).
    pub fn new(a: ImageSpec, b: ImageSpec) -> Self {
        Verify {
            a,
            b,
            settings: Settings::default(),
            progress: None,
            cancel: CancelToken::new(),
        }
    }

    /// Takes every setting from `settings` at once (what the builder methods below set one
    /// by one). A verification uses the clusters, the chunk size, the window, the rate limit
    /// (on the reads of `a`) and the progress interval; the settings only a transfer has are
    /// not looked at.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Caps the bytes read from `a` at `bytes_per_sec` on average, as
    /// [`DiffTransfer::rate_limit`](crate::DiffTransfer::rate_limit) does; 0 removes the cap
    /// (the default).
    pub fn rate_limit(mut self, bytes_per_sec: u64) -> Self {
        self.settings.rate_limit = (bytes_per_sec > 0).then_some(bytes_per_sec);
        self
    }

    /// The cluster of `a`, and of `b` unless [`dest_cluster`](Self::dest_cluster) says
    /// otherwise.
    pub fn cluster(mut self, spec: ClusterSpec) -> Self {
        self.settings.cluster = spec;
        self
    }

    /// The cluster of `b`, when it is not that of `a`.
    pub fn dest_cluster(mut self, spec: ClusterSpec) -> Self {
        self.settings.dest_cluster = Some(spec);
        self
    }

    /// The largest read, in bytes: a multiple of 4 KiB (default 2 MiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.settings.chunk_size = bytes;
        self
    }

    /// The window of reads in flight, as a number of chunks (default 32): at most
    /// `window × chunk_size` bytes are held at once, librados's receive buffers included, so
    /// `window / 4` chunks of each image are compared at a time (smaller ranges share that).
    pub fn window(mut self, chunks: usize) -> Self {
        self.settings.window = chunks;
        self
    }

    /// Called on the thread running the verification, as
    /// [`DiffTransfer::on_progress`](crate::DiffTransfer::on_progress) is: in every phase,
    /// at most every [`progress_interval`](Self::progress_interval); `Break` or a panic stops
    /// it.
    pub fn on_progress<R: ProgressFlow>(
        mut self,
        mut f: impl FnMut(&Progress) -> R + Send + 'static,
    ) -> Self {
        self.progress = Some(Box::new(move |p| f(p).keep_going()));
        self
    }

    /// The least time between two progress calls (default 200 ms).
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.settings.progress_interval = interval;
        self
    }

    /// A token another thread may use to cancel the verification.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Compares the images. An image read at HEAD while another client writes it may of
    /// course differ. `Ok` when they are equal; an error of kind
    /// [`Mismatch`](crate::ErrorKind::Mismatch) naming the first byte that differs
    /// ([`Error::offset`]), or saying that their sizes differ, when they are not.
    pub fn run(mut self) -> Result<VerifyStats> {
        let started = Instant::now();
        self.settings.check()?;
        let mut reporter = Reporter::new(
            self.progress.take(),
            self.settings.progress_interval,
            self.cancel.clone(),
            started,
        );
        reporter.verification();
        let result = self.verify(&mut reporter, started);
        if let Some(panic) = reporter.take_panic() {
            resume_unwind(panic);
        }
        result
    }

    fn verify(&self, reporter: &mut Reporter, started: Instant) -> Result<VerifyStats> {
        let label = self.b.to_string();
        reporter.phase(Phase::Connecting);
        let cluster_a = connect_cluster(reporter, &label, &self.settings.cluster)?;
        let cluster_b = match &self.settings.dest_cluster {
            Some(spec) if *spec != self.settings.cluster => {
                connect_cluster(reporter, &label, spec)?
            }
            _ => cluster_a.clone(),
        };
        let (a, size_a) = open(reporter, &label, &cluster_a, &self.a)?;
        let (b, size_b) = open(reporter, &label, &cluster_b, &self.b)?;
        if size_a != size_b {
            return Err(Error::mismatch(
                b.path(),
                size_a.min(size_b),
                format!(
                    "{} and {} differ: their sizes differ ({size_a} and {size_b} bytes)",
                    a.label(),
                    b.label()
                ),
            ));
        }

        reporter.phase(Phase::Scanning);
        let stop = reporter.stop_check();
        let (scan_a, scan_b) = (a.clone(), b.clone());
        let what = format!("the allocated ranges of {} and {}", a.label(), b.label());
        let ranges = reporter.detached(&label, what, move || {
            // Both at once: they may be on two clusters.
            std::thread::scope(|s| {
                let other = s.spawn(|| crate::plan::scan::allocated(&scan_a, size_a, true, &stop));
                let mine = crate::plan::scan::allocated(&scan_b, size_b, true, &stop)?;
                let other = other.join().unwrap_or_else(|panic| resume_unwind(panic))?;
                Ok(plan::union(&other, &mine))
            })
        });
        let ranges = match ranges {
            Err(_) if reporter.stop().is_some() => return Err(reporter.stopped_error(&label)),
            r => r?,
        };
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        reporter.set_total(total);
        reporter.phase(Phase::Verifying);
        let window = Window::of(self.settings.chunk_size, self.settings.window);
        let rate = self.settings.rate_limit.map(RateLimit::new);
        let compared = compare(
            [&*a, &*b],
            &ranges,
            Reads {
                chunk: self.settings.chunk_size,
                window,
                rates: &rate.iter().collect::<Vec<_>>(),
            },
            Compare::First,
            reporter,
            &label,
        )?;
        if let Some(offset) = compared.first_difference {
            return Err(Error::mismatch(
                b.path(),
                offset,
                format!("{} and {} differ at offset {offset}", a.label(), b.label()),
            ));
        }
        reporter.finish();
        Ok(VerifyStats {
            source: a.label().to_owned(),
            dest: b.label().to_owned(),
            image_size: size_a,
            bytes_compared: compared.bytes,
            bytes_skipped: size_a - total,
            elapsed: started.elapsed(),
        })
    }
}

/// Opens `spec` read-only on a helper thread; its size at that snapshot.
fn open(
    reporter: &mut Reporter,
    label: &str,
    cluster: &Cluster,
    spec: &ImageSpec,
) -> Result<(Arc<Image>, u64)> {
    let (conn, spec) = (cluster.clone(), spec.clone());
    let what = format!("{spec} to open");
    reporter.detached(label, what, move || {
        let (spec, pool) = conn.pool_of(&spec)?;
        let image = Image::open_read_only(&pool, spec.image(), spec.snap())?;
        let size = image.size()?;
        Ok((Arc::new(image), size))
    })
}

/// Connects to the cluster of `spec`, on a helper thread.
fn connect_cluster(reporter: &mut Reporter, dest: &str, spec: &ClusterSpec) -> Result<Cluster> {
    let owned = spec.clone();
    reporter.connecting(dest, format!("the monitors of {spec}"), move || {
        Cluster::connect(&owned)
    })
}
