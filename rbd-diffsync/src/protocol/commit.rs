//! The end: what was written read back and compared (with `verify`), then the end snapshot
//! made under the claim and the lock, the record and the claim removed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::copy::engine::{DiffSource, Window};
use crate::copy::rate::RateLimit;
use crate::error::{Error, ErrorKind, Result};
use crate::plan::{self};
use crate::progress::{Phase, Reporter};
use crate::protocol::claim::{Claimed, Target};
use crate::protocol::world::DestImage;
use crate::rbd::image::Snapshot;
use crate::verify;

use crate::protocol::job::{Job, Source};
use crate::protocol::write::clip;

impl Job {
    /// The verification: every range the end snapshot will be claimed to equal, compared
    /// (see [`DiffTransfer::verify`]). A difference takes the checkpoint back below it, so
    /// that the rerun the error advises rewrites it.
    pub(crate) fn verify_written(
        &self,
        (source, dest): (&Source, &Arc<dyn DestImage>),
        (target, claimed): (&Target, &Claimed),
        work: &[(u64, u64)],
        rates: &[&RateLimit],
        reporter: &mut Reporter,
    ) -> Result<u64> {
        let label = target.label.clone();
        // What the destination changed meanwhile, as it is now: a write that bypassed the
        // transfer shows there.
        let (image, from, size) = (dest.clone(), source.from.clone(), source.size);
        let stop = reporter.stop_check();
        let what = format!("the changes of {label}");
        let changed = reporter.detached(&label, what, move || match &from {
            Some(from) => image.changed_since(from, size, true, &stop),
            None => image.allocated(size, &stop),
        })?;
        let ranges = plan::union(work, &clip(&changed, size));
        let chunk = self.settings.chunk_size;
        let window = Window::of(chunk, self.settings.window);
        // In a batch, the verification draws its window from the batch's budget: its share,
        // at most its own window.
        let (window, _reserved) = match self.batch.as_deref() {
            Some(batch) => {
                let w = batch.verify_window(window, chunk);
                let reserved = batch
                    .budget
                    .reserve(w.budget, w.max_requests, reporter, &label)?;
                (w, Some(reserved))
            }
            None => (window, None),
        };
        let reads = verify::Reads {
            chunk,
            window,
            rates,
        };
        let sides = [
            (&*source.image as &dyn DiffSource, source.image.label()),
            (&**dest as &dyn DiffSource, dest.path()),
        ];
        match verify::written(sides, &ranges, reads, reporter, &label) {
            Err(e) if e.kind() == ErrorKind::Mismatch => {
                let at = e.offset().unwrap_or(0);
                let object = 1u64 << source.layout.order;
                let back = at / object * object;
                // Below the first difference everything compared equal.
                let _ = self.record(reporter, target, claimed, back);
                Err(e)
            }
            other => other,
        }
    }

    /// Makes the end snapshot, once the source's snapshots are known to still be there and
    /// the destination still this transfer's; then removes the record and the claim. Too late
    /// to stop from here. Returns the time the snapshot took.
    pub(crate) fn commit(
        &self,
        reporter: &mut Reporter,
        source: &Source,
        target: &Target,
        claimed: &Claimed,
        dest: &Arc<dyn DestImage>,
        dest_size: u64,
    ) -> Result<Duration> {
        reporter.phase(Phase::Committing);
        let label = target.label.clone();
        let (image, src) = (source.image.clone(), source.spec.clone());
        let wanted: Vec<Snapshot> = source.end.iter().chain(&source.from).cloned().collect();
        let what = format!("the snapshots of {src} to be checked");
        reporter.waited(what, move || {
            let now = image.snapshots_now()?;
            for snap in &wanted {
                if !now.iter().any(|s| s.id == snap.id && s.name == snap.name) {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        libc::ENOENT,
                        format!(
                            "snapshot {:?} of {} was removed while the transfer read it: what \
                             was read of it cannot be trusted, and no end snapshot was created; \
                             transfer another snapshot",
                            snap.name,
                            src.image_path()
                        ),
                    )
                    .with_image(src.image_path())
                    .with_snap(&snap.name));
                }
            }
            Ok(())
        })?;
        let (image, header, t) = (dest.clone(), claimed.header.clone(), target.clone());
        let shrink_to = (source.size < dest_size).then_some(source.size);
        let end = source.spec.snap().map(str::to_owned);
        let what = match &end {
            Some(end) => format!("the end snapshot {label}@{end} to be created"),
            None => format!("{label} to flush its writes"),
        };
        reporter.waited(what, move || {
            let state = header.read()?;
            if state.claim.as_deref() != Some(t.text.as_str()) {
                return Err(t.fenced_error("its claim on the destination was taken over"));
            }
            if image.lockable()? && !image.holds_lock()? {
                return Err(t.fenced_error("it lost the destination's exclusive lock"));
            }
            if let Some(size) = shrink_to {
                image.resize(size)?;
            }
            image.flush()?;
            let snapshot_started = Instant::now();
            if let Some(end) = &end {
                if let Err(e) = image.create_snapshot(end) {
                    // The snapshot may exist though its creation reported a failure: the
                    // result says whether it does.
                    let made = image
                        .snapshots()
                        .is_ok_and(|snaps| snaps.iter().any(|s| s.name == *end));
                    if !made {
                        return Err(e);
                    }
                }
            }
            let elapsed = snapshot_started.elapsed();
            // The end snapshot makes the transfer complete: a record left behind by a failure
            // here is harmless (the next transfer starts from that unchanged snapshot, and
            // replaces the record), so it does not fail the transfer.
            let _ = t.write_record(&*header, None);
            Ok(elapsed)
        })
    }
}
