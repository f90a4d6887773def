//! The checks that decide whether a transfer may write into an existing destination, made
//! under its exclusive lock and claim: what is read now stays true until the end snapshot.

use crate::error::{Error, ErrorKind, Result, CODE_DESTINATION_CHANGED};
use crate::progress::StopCheck;
use crate::protocol::record::{Mismatch, Record};
use crate::protocol::world::DestImage;
use crate::rbd::image::Snapshot;

/// What the checks found about an existing destination.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// It holds the writes of an interrupted transfer of the same diff, which this one
    /// completes.
    pub continued: bool,
    /// The caller's `overwrite_existing` let the transfer write over data or changes.
    pub overwrites: bool,
    /// Ranges changed since `from_snap` (incrementals): rewritten from the source, and known
    /// to hold nothing the source's `from_snap` tells about.
    pub changed: Vec<(u64, u64)>,
    /// The interrupted transfer of the very same diff had written everything below this
    /// offset (its checkpoint): the work there is not done again.
    pub resume_from: u64,
}

/// What the checks need to know about the transfer.
pub(crate) struct Checks<'a> {
    pub dest: &'a dyn DestImage,
    pub dest_size: u64,
    pub snaps: &'a [Snapshot],
    pub me: &'a str,
    pub record: &'a Record,
    pub previous: Option<&'a Record>,
    pub force: bool,
    pub stop: &'a StopCheck,
}

impl Checks<'_> {
    fn path(&self) -> &str {
        self.dest.path()
    }

    fn resume_from(&self, continued: bool) -> u64 {
        match self.previous {
            Some(previous) if continued => self.record.resume_offset(previous),
            _ => 0,
        }
    }

    /// A full transfer writes into an existing image only when it is empty (no snapshots,
    /// nothing allocated: what cinder creates), holds an interrupted full transfer from the
    /// same source, or the caller said so; and never while another client has it open, unless
    /// the caller said so. `allocated` is the image's allocated ranges.
    pub(crate) fn full(&self, allocated: &[(u64, u64)]) -> Result<Verdict> {
        let continued = self.previous.is_some_and(|p| {
            p.from.is_none()
                && matches!(
                    self.record.may_continue(p),
                    Ok(()) | Err(Mismatch::OlderEnd(_))
                )
        });
        let empty = self.snaps.is_empty() && allocated.is_empty();
        let mut verdict = Verdict {
            continued,
            resume_from: self.resume_from(continued),
            ..Verdict::default()
        };
        if !empty && !continued {
            if !self.force {
                let holds = if self.snaps.is_empty() {
                    let bytes: u64 = allocated.iter().map(|r| r.1).sum();
                    format!("holds data ({bytes} bytes allocated)")
                } else {
                    format!("has {} snapshots", self.snaps.len())
                };
                return Err(Error::new(
                    ErrorKind::Exists,
                    libc::EEXIST,
                    format!(
                        "image {} exists and {holds}: a full transfer would overwrite it; \
                         choose another destination, or pass --force \
                         (overwrite_existing(true)) to overwrite it",
                        self.path()
                    ),
                )
                .with_image(self.path()));
            }
            verdict.overwrites = true;
        }
        let others: Vec<String> = self
            .dest
            .watchers()?
            .into_iter()
            .filter(|w| w != self.me)
            .collect();
        if !others.is_empty() {
            if !self.force {
                return Err(Error::new(
                    ErrorKind::Busy,
                    libc::EBUSY,
                    format!(
                        "image {} is open by another client ({}): a full transfer would \
                         overwrite what it sees; close it first, or pass --force \
                         (overwrite_existing(true))",
                        self.path(),
                        others.join(", ")
                    ),
                )
                .with_image(self.path()));
            }
            verdict.overwrites = true;
        }
        Ok(verdict)
    }

    /// An incremental continues a chain only if the destination's `from` is the source's (same
    /// size) and the destination still reads as it did then; a change is accepted when the
    /// in-progress record shows it was made by an interrupted transfer of the same diff, or
    /// when the caller said so, and its ranges are then rewritten from the source.
    pub(crate) fn incremental(&self, source_from: &Snapshot) -> Result<Verdict> {
        let (path, from) = (self.path(), source_from.name.as_str());
        let Some(dest_from) = self.snaps.iter().find(|s| s.name == from) else {
            return Err(Error::snap_not_found(path, from));
        };
        if dest_from.size != source_from.size {
            return Err(Error::new(
                ErrorKind::DestinationChanged,
                CODE_DESTINATION_CHANGED,
                format!(
                    "snapshot {from:?} of image {path} is {} bytes, but that of the source is {} \
                     bytes: they are not the same snapshot, and no incremental can continue \
                     this chain; start a new one with a full transfer into another image",
                    dest_from.size, source_from.size
                ),
            )
            .with_image(path)
            .with_snap(from));
        }
        let changed = self
            .dest
            .changed_since(dest_from, self.dest_size, false, self.stop)?;
        let mut verdict = Verdict::default();
        if changed.is_empty() {
            return Ok(verdict);
        }
        match self.previous.map(|p| self.record.may_continue(p)) {
            Some(Ok(())) => {
                verdict.continued = true;
                verdict.resume_from = self.resume_from(true);
            }
            _ if self.force => verdict.overwrites = true,
            found => {
                let by = match found {
                    Some(Err(mismatch)) => format!("by {}", mismatch.describe()),
                    _ => "by another client (no transfer of this diff was interrupted there)"
                        .to_owned(),
                };
                let bytes: u64 = changed.iter().map(|r| r.1).sum();
                return Err(Error::new(
                    ErrorKind::DestinationChanged,
                    CODE_DESTINATION_CHANGED,
                    format!(
                        "image {path} has changed since its snapshot {from:?} ({bytes} bytes in \
                         {} ranges, written {by}): an incremental on top of it would mix those \
                         changes into the next snapshot; pass --force \
                         (overwrite_existing(true)) to rewrite them from the source",
                        changed.len()
                    ),
                )
                .with_image(path)
                .with_snap(from));
            }
        }
        verdict.changed = changed;
        Ok(verdict)
    }
}
