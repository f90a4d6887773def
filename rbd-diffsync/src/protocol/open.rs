//! Opening both images, claiming and locking the destination, and the checks before the first
//! write.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};
use crate::progress::{self, Phase, Reporter, StopCheck};
use crate::protocol::checks::Checks;
use crate::protocol::claim::{Claimed, Fencing, Target};
use crate::protocol::record::{Record, SnapRef};
use crate::protocol::world::{Conn, DestImage, Header, World};
use crate::rbd::image::Snapshot;
use crate::spec::{ClusterSpec, ImageSpec};

use crate::protocol::job::{Found, Job, Opened, Prepared, Source};

impl Job {
    /// Connects to both clusters (one connection when they are the same), opens the source
    /// at its end snapshot (checking its snapshots) and, at once, finds the destination's
    /// header; returns the destination as the protocol works on it.
    pub(crate) fn open(&self, world: &Arc<dyn World>, reporter: &mut Reporter) -> Result<Opened> {
        let label = self.dest_label();
        let src_conn = connect(world, reporter, &label, &self.settings.cluster)?;
        let dest_conn = match &self.settings.dest_cluster {
            Some(spec) if *spec != self.settings.cluster => connect(world, reporter, &label, spec)?,
            _ => src_conn.clone(),
        };
        let (src, from) = (self.source.clone(), self.from_snap.clone());
        let (conn, dest) = (dest_conn.clone(), self.dest.clone());
        let threads = reporter.threads();
        let what = format!("{} and {} to open", self.source, self.dest);
        let (source, found) = reporter.detached(&label, what, move || {
            let (source, found) = progress::both(
                threads,
                || open_source(&*src_conn, &src, from.as_deref()),
                || -> Result<_> {
                    let spec = conn.resolve(&dest)?;
                    let header = conn.header(&spec)?;
                    Ok((spec, header, conn.client()?))
                },
            );
            // The source's error first: without a source there is nothing to check.
            Ok((source?, found?))
        })?;
        let (spec, header, client) = found;
        let mine = Record {
            client,
            ..source.identity.clone()
        };
        let target = Target {
            conn: dest_conn,
            label: spec.image_path(),
            spec,
            text: mine.encode(),
            mine,
        };
        Ok(Opened {
            source,
            target,
            header,
        })
    }

    /// Every check and the diff; nothing is written. With `write`, the destination is
    /// created if missing, claimed, opened for writing, its dead predecessor fenced off, and
    /// its exclusive lock taken, held until the transfer ends; without, it is opened
    /// read-only.
    pub(crate) fn prepare(
        &self,
        world: &Arc<dyn World>,
        reporter: &mut Reporter,
        write: bool,
    ) -> Result<Prepared> {
        reporter.phase(Phase::Connecting);
        let Opened {
            source,
            target,
            header,
        } = self.open(world, reporter)?;
        // The scan of the source overlaps the claim, the lock and the checks of the
        // destination: both are round trips to the OSDs, and neither needs the other. The
        // phase turns to scanning once the destination is open.
        let scanning = self.start_scan(reporter, &source);
        let (dest, claimed, fencing, created) = if write {
            let (dest, claimed, fencing, created) =
                self.take_destination(reporter, &target, &source, header)?;
            (Some(dest), Some(claimed), fencing, created)
        } else {
            let dest = match header {
                Some(_) => Some(self.look_at(reporter, &target)?),
                None if self.from_snap.is_some() => {
                    return Err(Error::image_not_found(&target.label))
                }
                None => None,
            };
            reporter.phase(Phase::Scanning);
            (dest, None, Fencing::default(), false)
        };
        // Checked also when this transfer created it: another writer may have written it
        // before the lock was taken.
        let checked = self
            .check_destination(reporter, &target, &source, dest.as_ref())
            .and_then(|found| Ok((found, self.finish_scan(reporter, scanning, &target.label)?)));
        let (found, scan) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                if let Some(claimed) = &claimed {
                    // Refused: nothing of this transfer stays on the destination.
                    target.unclaim(claimed, true);
                }
                return Err(e);
            }
        };
        let trusted = found.previous.as_ref().is_some_and(|p| {
            fencing.took_lock && fencing.lock_of.as_ref() == Some(&p.client.address)
        });
        let (planner, known_zero, mut plan, resume) =
            self.work(&source, scan, found, target.label.clone(), trusted);
        plan.create_destination |= created;
        Ok(Prepared {
            plan,
            source,
            target,
            claimed,
            dest,
            planner,
            known_zero,
            resume,
            broke_lock_of: fencing.fenced.into_iter().next(),
        })
    }

    /// Opens the destination read-only, for a plan.
    pub(crate) fn look_at(
        &self,
        reporter: &mut Reporter,
        target: &Target,
    ) -> Result<Arc<dyn DestImage>> {
        let (conn, spec) = (target.conn.clone(), target.spec.clone());
        reporter.detached(
            &target.label,
            format!("{} to open", target.label),
            move || conn.open_dest(&spec, false),
        )
    }

    /// Creates the destination if it is missing (full transfers), claims it, opens it for
    /// writing, fences off its dead predecessor and takes its exclusive lock. Returns it, the
    /// claim, who was fenced off, and whether it was created. A refusal gives the claim
    /// back.
    pub(crate) fn take_destination(
        &self,
        reporter: &mut Reporter,
        target: &Target,
        source: &Source,
        header: Option<Arc<dyn Header>>,
    ) -> Result<(Arc<dyn DestImage>, Claimed, Fencing, bool)> {
        let (header, created) = match header {
            Some(header) => (header, false),
            None if self.from_snap.is_some() => return Err(Error::image_not_found(&target.label)),
            None => {
                let (conn, spec) = (target.conn.clone(), target.spec.clone());
                let (size, layout) = (source.size, source.layout);
                let what = format!("{} to be created", target.label);
                let (header, created) = reporter.waited(what, move || {
                    let created = match conn.create(&spec, size, &layout) {
                        // Created by another meanwhile: claimed as any existing image.
                        Err(e) if e.kind() == ErrorKind::Exists => false,
                        other => other.map(|()| true)?,
                    };
                    let header = conn
                        .header(&spec)?
                        .ok_or_else(|| Error::image_not_found(&spec.image_path()))?;
                    Ok((header, created))
                })?;
                (header, created)
            }
        };
        let claimed = target.claim(reporter, header)?;
        match self.open_and_lock(reporter, target, source, &claimed) {
            Ok((dest, fencing)) => Ok((dest, claimed, fencing, created)),
            Err(e) => {
                target.unclaim(&claimed, true);
                Err(e)
            }
        }
    }

    /// The destination opened for writing under the claim, its predecessor fenced off, its
    /// lock taken.
    pub(crate) fn open_and_lock(
        &self,
        reporter: &mut Reporter,
        target: &Target,
        source: &Source,
        claimed: &Claimed,
    ) -> Result<(Arc<dyn DestImage>, Fencing)> {
        let (conn, spec) = (target.conn.clone(), target.spec.clone());
        let what = format!("{} to open", target.label);
        let dest = reporter.waited(what, move || conn.open_dest(&spec, true))?;
        reporter.phase(Phase::Scanning);
        let id = dest.id()?;
        let same_image = source.identity.pool_id == id.pool_id
            && source.identity.namespace == id.namespace
            && source.identity.image_id == id.image_id
            && source.identity.fsid == target.conn.fsid()?;
        if same_image {
            return Err(Error::invalid(format!(
                "source {} and destination {} are the same image",
                source.spec, target.label
            ))
            .with_image(&target.label));
        }
        let mut fencing = target.fence_predecessors(reporter, &dest, claimed)?;
        target.lock(reporter, &dest, &mut fencing)?;
        Ok((dest, fencing))
    }

    /// The checks of an existing destination (see [`Checks`]), under its lock and claim: its
    /// snapshots, its changes since `from`, or for a full transfer its allocated ranges.
    /// Reads only. The default for one to be created.
    pub(crate) fn check_destination(
        &self,
        reporter: &mut Reporter,
        target: &Target,
        source: &Source,
        dest: Option<&Arc<dyn DestImage>>,
    ) -> Result<Found> {
        let Some(dest) = dest else {
            return Ok(Found::default());
        };
        let (image, conn, spec) = (dest.clone(), target.conn.clone(), target.spec.clone());
        let (end, from) = (source.spec.snap().map(str::to_owned), source.from.clone());
        let (mine, force) = (target.mine.clone(), self.settings.overwrite_existing);
        let stop = reporter.stop_check();
        let what = format!("the checks of {}", target.label);
        reporter
            .detached(&target.label, what, move || {
                let header = conn
                    .header(&spec)?
                    .ok_or_else(|| Error::image_not_found(&spec.image_path()))?;
                check_existing(&*image, &*header, end, from, &mine, force, &stop)
            })
            .map_err(|e| self.stopped_or(reporter, e))
    }
}

/// The checks of an existing destination under its lock (see [`Checks`]): its snapshots, its
/// changes since `from`, or for a full transfer its allocated ranges. Reads only.
pub(crate) fn check_existing(
    dest: &dyn DestImage,
    header: &dyn Header,
    end: Option<String>,
    from: Option<Snapshot>,
    mine: &Record,
    force: bool,
    stop: &StopCheck,
) -> Result<Found> {
    let label = dest.path().to_owned();
    let snaps = dest.snapshots()?;
    if let Some(end) = end.filter(|end| snaps.iter().any(|s| s.name == *end)) {
        return Err(Error::snap_exists(&label, &end));
    }
    // Read now, under the lock: what a predecessor wrote before it was fenced off is in.
    let previous = header.read()?.record.as_deref().and_then(Record::decode);
    let size = dest.size()?;
    let checks = Checks {
        dest,
        dest_size: size,
        snaps: &snaps,
        me: &mine.client.address,
        record: mine,
        previous: previous.as_ref(),
        force,
        stop,
    };
    Ok(match &from {
        Some(from) => Found {
            size: Some(size),
            verdict: checks.incremental(from)?,
            allocated: None,
            previous,
        },
        None => {
            let allocated = dest.allocated(size, stop)?;
            Found {
                size: Some(size),
                verdict: checks.full(&allocated)?,
                allocated: Some(allocated),
                previous,
            }
        }
    })
}

/// Connects to the cluster of `spec` on `world`, on a helper thread.
fn connect(
    world: &Arc<dyn World>,
    reporter: &mut Reporter,
    dest: &str,
    spec: &ClusterSpec,
) -> Result<Arc<dyn Conn>> {
    let (world, owned) = (world.clone(), spec.clone());
    reporter.connecting(dest, format!("the monitors of {spec}"), move || {
        world.connect(&owned)
    })
}

/// Opens the source at its end snapshot and checks its snapshots: `from_name` must be one of
/// them, not newer than the end.
fn open_source(conn: &dyn Conn, spec: &ImageSpec, from_name: Option<&str>) -> Result<Source> {
    let spec = conn.resolve(spec)?;
    let image = conn.open_source(&spec)?;
    let facts = image.facts()?;
    let path = spec.image_path();
    let find = |name: &str| facts.snapshots.iter().find(|s| s.name == name).cloned();
    // Opened at it, so it was there; gone now means removed meanwhile.
    let end = match spec.snap() {
        Some(name) => Some(find(name).ok_or_else(|| Error::snap_not_found(&path, name))?),
        None => None,
    };
    let from = match from_name {
        Some(name) => Some(find(name).ok_or_else(|| Error::snap_not_found(&path, name))?),
        None => None,
    };
    if let (Some(from), Some(end)) = (&from, &end) {
        if end.id < from.id {
            return Err(Error::invalid(format!(
                "from_snap {:?} is newer than the end snapshot {:?} of {path}",
                from.name, end.name
            ))
            .with_image(path)
            .with_snap(&from.name));
        }
    }
    let snap_ref = |s: &Snapshot| SnapRef {
        id: s.id,
        name: s.name.clone(),
    };
    let identity = Record {
        fsid: conn.fsid()?,
        pool_id: facts.pool_id,
        namespace: facts.namespace,
        image_id: facts.image_id,
        source: path,
        from: from.as_ref().map(snap_ref),
        end: end.as_ref().map(snap_ref),
        client: Default::default(),
        started: unix_now(),
        done: 0,
    };
    Ok(Source {
        spec,
        image,
        size: facts.info.size,
        layout: facts.layout,
        from,
        end,
        identity,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
