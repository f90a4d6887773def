//! The checks that decide whether a transfer may write into an existing destination, and the
//! destination's exclusive lock, held from those checks to the end snapshot.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Pool;
use crate::error::{Error, ErrorKind, Result, CODE_DESTINATION_CHANGED};
use crate::image::{Header, Image, Snapshot};
use crate::plan::{self, DiffExtent};
use crate::progress::{Reporter, StopCheck, Waited};
use crate::record::{Mismatch, Record, HOLDER_KEY, KEY};
use crate::scan;
use crate::sys;

/// How long librados keeps a dead client's watch, after which librbd breaks its lock.
const WATCH_TIMEOUT_TEXT: &str = "osd_client_watch_timeout, 30 s by default";

/// The ranges of `[0, size)` that hold data in `image` (parent data included), sorted and
/// merged. `whole_object` asks for whole objects: cheap with fast-diff, and only ever larger.
/// The exact ranges are found from the object map too where it can be trusted (see
/// [`scan`](crate::scan)).
pub(crate) fn allocated_ranges(
    image: &Image,
    size: u64,
    whole_object: bool,
    stop: &StopCheck,
) -> Result<Vec<(u64, u64)>> {
    let method = scan::Method::choose(whole_object, &[image])?;
    let mut allocated = scan::diff(image, None, size, method, stop)?;
    allocated.retain(|e| e.exists);
    Ok(ranges(allocated))
}

/// The ranges where `image` changed since its snapshot `from` (whole objects), including what
/// a resize added or cut off.
pub(crate) fn changed_since(
    image: &Image,
    from: &Snapshot,
    size: u64,
    stop: &StopCheck,
) -> Result<Vec<(u64, u64)>> {
    let mut changed = Vec::new();
    image.diff_iterate(Some(&from.name), 0, size, true, true, |e| {
        changed.push(DiffExtent { exists: true, ..e });
        !stop.stopped()
    })?;
    if size != from.size {
        changed.push(DiffExtent {
            offset: size.min(from.size),
            len: size.abs_diff(from.size),
            exists: true,
        });
    }
    Ok(ranges(plan::normalize(changed)))
}

fn ranges(extents: Vec<DiffExtent>) -> Vec<(u64, u64)> {
    extents.iter().map(|e| (e.offset, e.len)).collect()
}

/// How long a predecessor that still holds the lock has to answer a notification before it
/// counts as dead: a live librbd client answers within milliseconds.
const PREDECESSOR_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Names `me` as the client about to take the destination's lock, straight in the header's
/// omap (librbd's metadata call would need the lock first), so that a run killed at any point
/// after this is recognised by its rerun. Returns who was named before.
fn claim(header: &Header, me: &str) -> Result<Option<String>> {
    let previous = header.metadata_get(HOLDER_KEY)?;
    // Best effort: without it a rerun waits for the watch of a run killed before its record
    // was written, as it would have anyway.
    let _ = header.metadata_set(HOLDER_KEY, me);
    Ok(previous)
}

/// Gives a claim back after a refusal: the name that was there before, or none.
pub(crate) fn unclaim(dest: &Image, previous: Option<&str>) {
    if let Ok(header) = dest.header() {
        give_back(&header, previous);
    }
}

fn give_back(header: &Header, previous: Option<&str>) {
    let _ = match previous {
        Some(previous) => header.metadata_set(HOLDER_KEY, previous),
        None => header.metadata_remove(&[HOLDER_KEY]),
    };
}

/// Opens the image `name` for writing, named as written by `me` (see [`claim`]) before
/// librbd's open registers this client's watch: a run killed while the image opens is
/// recognised by its rerun, which fences off its watch at once instead of waiting for
/// librbd's notifications to it to time out. Returns the image and who was named before.
pub(crate) fn open_claimed(pool: &Pool, name: &str, me: &str) -> Result<(Image, Option<String>)> {
    let Some(header) = Header::find(pool, name)? else {
        // Missing (the open says so) or of the old format: named once open.
        let image = Image::open(pool, name)?;
        let previous = claim(&image.header()?, me)?;
        return Ok((image, previous));
    };
    let previous = claim(&header, me)?;
    match Image::open(pool, name) {
        Ok(image) => Ok((image, previous)),
        Err(e) => {
            give_back(&header, previous.as_deref());
            Err(e)
        }
    }
}

/// Takes the destination's exclusive lock, unless its image lacks the feature. Returns the
/// killed predecessor it fenced off, if any.
///
/// A lock held by another client that still has the image open is refused at once, as
/// [`ErrorKind::Busy`], naming it: taking it would make a live writer hand it over. The one
/// exception is the transfer's own predecessor, named (address and nonce) by the in-progress
/// record or by the holder's key it wrote (`previous_holder`). A killed client keeps its
/// watch, and its lock, until the watch expires, and every notification librbd sends meanwhile
/// (metadata, snapshots) waits for it: so a predecessor that still watches the image and does
/// not answer a notification is blocklisted at once (by breaking its lock if it holds it),
/// and one that answers is still running, which is refused.
pub(crate) fn lock(
    reporter: &mut Reporter,
    dest: &Arc<Image>,
    me: &str,
    record: Option<&Record>,
    previous_holder: Option<&str>,
) -> Result<Option<String>> {
    let ours = |address: &str| {
        record.is_some_and(|r| r.client == address) || previous_holder == Some(address)
    };
    let path = dest.path().to_owned();
    let lockable = dest.features()? & sys::RBD_FEATURE_EXCLUSIVE_LOCK != 0;
    let owners: Vec<String> = if lockable {
        dest.lock_owners()?
            .into_iter()
            .filter(|o| o != me)
            .collect()
    } else {
        Vec::new()
    };
    let mut watching: Vec<String> = dest
        .watchers()?
        .into_iter()
        .map(|w| w.address)
        .filter(|a| a != me)
        .collect();
    watching.dedup();
    if let Some(owner) = owners.first() {
        if watching.contains(owner) && !ours(owner) {
            return Err(locked_by(&path, owner));
        }
    }
    let mut fenced = None;
    for address in watching.iter().filter(|a| ours(a)) {
        if fence_if_dead(reporter, dest, address, owners.contains(address))? {
            fenced = Some(address.clone());
        }
    }
    if !lockable {
        return Ok(fenced);
    }
    let image = dest.clone();
    let waiting_for = format!("the exclusive lock of {path}");
    match reporter.wait(waiting_for, true, move || image.acquire_exclusive_lock()) {
        Waited::Stopped => Err(reporter.stopped_error(&path)),
        Waited::Done(Ok(())) => Ok(fenced),
        Waited::Done(Err(e)) if e.errno() == libc::EROFS => {
            let owner = dest
                .lock_owners()
                .ok()
                .and_then(|o| o.into_iter().next())
                .unwrap_or_else(|| "another client".to_owned());
            Err(locked_by(&path, &owner))
        }
        Waited::Done(Err(e)) => Err(e),
    }
}

/// Fences off the transfer's predecessor at `address`, which still watches the image, if it
/// does not answer: breaks its lock if it `holds_lock` (librbd blocklists it), blocklists it
/// otherwise. Refuses if it answers. Returns whether it was fenced off.
fn fence_if_dead(
    reporter: &mut Reporter,
    dest: &Arc<Image>,
    address: &str,
    holds_lock: bool,
) -> Result<bool> {
    let path = dest.path().to_owned();
    let (image, client) = (dest.clone(), address.to_owned());
    let asked = format!(
        "an answer from the client at {address}, an interrupted transfer into {path} that still \
         watches it"
    );
    let answers = match reporter.wait(asked, true, move || {
        image.answers(&client, PREDECESSOR_ANSWER_TIMEOUT)
    }) {
        Waited::Stopped => return Err(reporter.stopped_error(&path)),
        Waited::Done(answers) => answers?,
    };
    match answers {
        Some(true) => Err(Error::new(
            ErrorKind::Busy,
            libc::EBUSY,
            format!(
                "image {path} is being written by an earlier transfer that is still running \
                 (client {address}, which answers): wait for it to end, or stop it and run \
                 this again"
            ),
        )
        .with_image(&path)),
        // Its watch is gone meanwhile.
        None => Ok(false),
        Some(false) => {
            let (image, client) = (dest.clone(), address.to_owned());
            let what = format!("the killed client {address} to be fenced off {path}");
            let fenced = reporter.wait(what, false, move || {
                if holds_lock {
                    image.break_lock(&client)
                } else {
                    image.pool().cluster().blocklist(&client)
                }
            });
            match fenced {
                Waited::Done(Ok(())) => Ok(true),
                // Its lock is gone meanwhile (its watch expired): nothing to break.
                Waited::Done(Err(e)) if e.errno() == libc::ENOENT => Ok(false),
                Waited::Done(Err(e)) => Err(e),
                Waited::Stopped => unreachable!("a step that writes is not detached"),
            }
        }
    }
}

fn locked_by(path: &str, owner: &str) -> Error {
    Error::new(
        ErrorKind::Busy,
        libc::EBUSY,
        format!(
            "image {path} is locked by the client at {owner}, which is writing to it: \
             stop that client or choose another destination (a client that was killed \
             loses its lock when its watch expires, {WATCH_TIMEOUT_TEXT})"
        ),
    )
    .with_image(path)
}

/// The in-progress record on `dest`, if there is one this version can read.
pub(crate) fn read_record(dest: &Image) -> Result<Option<Record>> {
    Ok(dest
        .metadata_get(KEY)?
        .and_then(|text| Record::decode(&text)))
}

/// Sets the in-progress record on `dest`, whose exclusive lock the transfer holds (if it has
/// the feature), straight in its header's omap: one round trip, where librbd's metadata call
/// takes about a dozen (it tells every watcher and waits for their answers). Refused with
/// `EROFS` if librbd knows the lock is gone.
pub(crate) fn write_record(dest: &Image, record: &Record) -> Result<()> {
    let lockable = dest.features()? & sys::RBD_FEATURE_EXCLUSIVE_LOCK != 0;
    if lockable && !dest.holds_exclusive_lock()? {
        return Err(Error::new(
            ErrorKind::Busy,
            libc::EROFS,
            format!(
                "image {} lost its exclusive lock to another client before the transfer's                  first write; nothing was written: run it again once that client is done",
                dest.path()
            ),
        )
        .with_image(dest.path()));
    }
    dest.header()?.metadata_set(KEY, &record.encode())
}

/// Removes the in-progress record and the writer's claim from `dest`, in one operation, once
/// the end snapshot exists.
pub(crate) fn clear_record(dest: &Image) -> Result<()> {
    dest.header()?.metadata_remove(&[KEY, HOLDER_KEY])
}

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
    pub dest: &'a Image,
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
            .filter(|w| w.address != self.me)
            .map(|w| w.address)
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
        let changed = changed_since(self.dest, dest_from, self.dest_size, self.stop)?;
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
