//! The protocol's world on librbd and librados: what production runs on.

use std::panic::resume_unwind;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::plan::scan;
use crate::plan::{self, DiffExtent};
use crate::progress::StopCheck;
use crate::protocol::batch::BatchLink;
use crate::protocol::record::{Client, HOLDER_KEY, KEY};
use crate::protocol::world::{
    Conn, DestImage, Header, HeaderState, ImageId, Process, Scan, SourceFacts, SourceImage,
    Threads, World,
};
use crate::rbd::cluster::Cluster;
use crate::rbd::image::{Image, Layout, Snapshot};
use crate::spec::{ClusterSpec, ImageSpec};

/// Connections of this process, or of a batch, which shares one per cluster.
pub(crate) struct RbdWorld {
    pub batch: Option<Arc<BatchLink>>,
}

impl World for RbdWorld {
    fn threads(&self) -> Threads {
        Threads::Spawn
    }

    fn connect(&self, spec: &ClusterSpec) -> Result<Arc<dyn Conn>> {
        let (cluster, shared) = match &self.batch {
            Some(batch) => (batch.connections.get(spec)?, true),
            None => (Cluster::connect(spec)?, false),
        };
        Ok(Arc::new(RbdConn { cluster, shared }))
    }
}

/// A connection of this process.
pub(crate) struct RbdConn {
    pub cluster: Cluster,
    /// Whether other transfers share it.
    pub shared: bool,
}

/// This process as a claim names it: its host and pid namespace, pid and start time.
fn this_process() -> (String, u32, u64) {
    let pid = std::process::id();
    let start = process_state(pid).map_or(0, |(_, start)| start);
    (host_key().unwrap_or_default(), pid, start)
}

/// The boot id of this host and the pid namespace of this process: two processes with these
/// equal see each other's pids.
fn host_key() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), ns.to_string_lossy()))
}

/// The state of process `pid` and its start time (clock ticks since boot), unless it is gone
/// or a zombie (killed, not yet reaped: its threads and connections are gone already).
fn process_state(pid: u32) -> Option<(Process, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold anything.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = match *fields.first()? {
        "Z" | "X" | "x" => return None,
        "T" | "t" => Process::Stopped,
        _ => Process::Running,
    };
    // Field 22 of the line is the 20th after the name.
    Some((state, fields.get(19)?.parse().ok()?))
}

impl Conn for RbdConn {
    fn fsid(&self) -> Result<String> {
        self.cluster.fsid()
    }

    fn client(&self) -> Result<Client> {
        let (host, pid, start) = this_process();
        Ok(Client {
            address: self.cluster.address()?,
            host,
            pid,
            start,
            shared: self.shared,
        })
    }

    fn resolve(&self, spec: &ImageSpec) -> Result<ImageSpec> {
        Ok(match spec.pool() {
            Some(_) => spec.clone(),
            None => spec.in_default_pool(&self.cluster.config("rbd_default_pool")?),
        })
    }

    fn open_source(&self, spec: &ImageSpec) -> Result<Arc<dyn SourceImage>> {
        let pool = self
            .cluster
            .pool(spec.pool().unwrap_or_default(), spec.namespace())?;
        Ok(Arc::new(Image::open_read_only(
            &pool,
            spec.image(),
            spec.snap(),
        )?))
    }

    fn header(&self, spec: &ImageSpec) -> Result<Option<Arc<dyn Header>>> {
        let pool = self
            .cluster
            .pool(spec.pool().unwrap_or_default(), spec.namespace())?;
        Ok(crate::rbd::image::Header::find(&pool, spec.image())?.map(|h| Arc::new(h) as _))
    }

    fn open_dest(&self, spec: &ImageSpec, write: bool) -> Result<Arc<dyn DestImage>> {
        let pool = self
            .cluster
            .pool(spec.pool().unwrap_or_default(), spec.namespace())?;
        let image = if write {
            Image::open(&pool, spec.image())?
        } else {
            Image::open_read_only(&pool, spec.image(), None)?
        };
        Ok(Arc::new(image))
    }

    fn create(&self, spec: &ImageSpec, size: u64, layout: &Layout) -> Result<()> {
        let pool = self
            .cluster
            .pool(spec.pool().unwrap_or_default(), spec.namespace())?;
        Image::create(&pool, spec.image(), size, Some(layout))
    }

    fn fence(&self, address: &str) -> Result<()> {
        self.cluster.fence(address)
    }

    fn process(&self, client: &Client) -> Option<Process> {
        if client.host.is_empty() || client.pid == 0 {
            return None;
        }
        let (host, _, _) = this_process();
        if host.is_empty() || host != client.host {
            return None;
        }
        Some(match process_state(client.pid) {
            Some((state, start)) if start == client.start => state,
            _ => Process::Ended,
        })
    }

    fn pool_full(&self, pool: &str) -> Option<String> {
        self.cluster.pool_full(pool)
    }
}

fn ranges(extents: Vec<DiffExtent>) -> Vec<(u64, u64)> {
    extents.iter().map(|e| (e.offset, e.len)).collect()
}

impl SourceImage for Image {
    fn label(&self) -> &str {
        Image::label(self)
    }

    fn facts(&self) -> Result<SourceFacts> {
        Ok(SourceFacts {
            info: self.info()?,
            layout: self.layout()?,
            image_id: self.id()?,
            pool_id: self.pool().id(),
            namespace: self.pool().namespace().unwrap_or_default().to_owned(),
            snapshots: self.snapshots()?,
        })
    }

    /// The two scans at once (with the object map, each is a pass over it).
    fn scan(
        &self,
        from: Option<&Snapshot>,
        size: u64,
        whole_object: bool,
        stop: &StopCheck,
    ) -> Result<Scan> {
        let Some(from) = from else {
            let method = scan::Method::choose(whole_object, &[self])?;
            return Ok(Scan {
                outline: scan::outline(self, None, size, method, stop)?,
                zero_at_from: Vec::new(),
            });
        };
        // The base too must have a valid object map for the diff to be read from it.
        let at_from = Image::open_read_only(self.pool(), self.name(), Some(&from.name))?;
        let method = scan::Method::choose(whole_object, &[self, &at_from])?;
        std::thread::scope(|s| {
            let zeros = s.spawn(|| {
                let allocated = scan::allocated(&at_from, from.size, true, stop)?;
                Ok(plan::complement(&allocated, size))
            });
            let outline = scan::outline(self, Some(&from.name), size, method, stop);
            let zero_at_from = zeros.join().unwrap_or_else(|panic| resume_unwind(panic));
            Ok(Scan {
                outline: outline?,
                zero_at_from: zero_at_from?,
            })
        })
    }

    fn exact(
        &self,
        from: Option<&str>,
        offset: u64,
        len: u64,
        stop: &StopCheck,
    ) -> Result<Vec<DiffExtent>> {
        scan::exact(self, from, offset, len, stop)
    }

    fn snapshots_now(&self) -> Result<Vec<Snapshot>> {
        // An image open at a snapshot does not watch its header: a fresh one sees the
        // snapshots as they are now.
        Image::open_read_only(self.pool(), self.name(), None)?.snapshots()
    }
}

impl DestImage for Image {
    fn path(&self) -> &str {
        Image::path(self)
    }

    fn id(&self) -> Result<ImageId> {
        Ok(ImageId {
            pool_id: self.pool().id(),
            namespace: self.pool().namespace().unwrap_or_default().to_owned(),
            image_id: Image::id(self)?,
        })
    }

    fn size(&self) -> Result<u64> {
        Image::size(self)
    }

    fn snapshots(&self) -> Result<Vec<Snapshot>> {
        Image::snapshots(self)
    }

    fn lockable(&self) -> Result<bool> {
        Image::lockable(self)
    }

    fn lock_owners(&self) -> Result<Vec<String>> {
        Image::lock_owners(self)
    }

    fn watchers(&self) -> Result<Vec<String>> {
        let mut addresses: Vec<String> = Image::watchers(self)?
            .into_iter()
            .map(|w| w.address)
            .collect();
        addresses.dedup();
        Ok(addresses)
    }

    fn answers(&self, address: &str, timeout: Duration) -> Result<Option<bool>> {
        Image::answers(self, address, timeout)
    }

    fn acquire_lock(&self) -> Result<()> {
        self.acquire_exclusive_lock()
    }

    fn holds_lock(&self) -> Result<bool> {
        self.holds_exclusive_lock()
    }

    fn take_over_lock(&self, owner: &str) -> Result<bool> {
        let broke = match Image::break_lock(self, owner) {
            Ok(()) => true,
            // Gone meanwhile: its watch expired, or another took it.
            Err(e) if e.errno() == libc::ENOENT => false,
            Err(e) => return Err(e),
        };
        self.acquire_exclusive_lock()?;
        Ok(broke)
    }

    fn changed_since(
        &self,
        from: &Snapshot,
        size: u64,
        exact: bool,
        stop: &StopCheck,
    ) -> Result<Vec<(u64, u64)>> {
        let mut changed = Vec::new();
        self.diff_iterate(Some(&from.name), 0, size, true, true, |e| {
            changed.push(DiffExtent { exists: true, ..e });
            !stop.stopped()
        })?;
        if exact {
            let objects = scan::coalesce(&changed, 0);
            changed.clear();
            for (offset, len) in objects {
                self.diff_iterate(Some(&from.name), offset, len, true, false, |e| {
                    changed.push(DiffExtent { exists: true, ..e });
                    !stop.stopped()
                })?;
            }
        }
        let resized = (size != from.size).then(|| (size.min(from.size), size.abs_diff(from.size)));
        // What the diff reports of a grown range overlaps the range itself: merged.
        Ok(plan::union(&ranges(changed), &Vec::from_iter(resized)))
    }

    fn allocated(&self, size: u64, stop: &StopCheck) -> Result<Vec<(u64, u64)>> {
        scan::allocated(self, size, false, stop)
    }

    fn resize(&self, size: u64) -> Result<()> {
        Image::resize(self, size)
    }

    fn flush(&self) -> Result<()> {
        Image::flush(self)
    }

    fn create_snapshot(&self, name: &str) -> Result<()> {
        Image::create_snapshot(self, name, false)
    }
}

impl Header for crate::rbd::image::Header {
    fn read(&self) -> Result<HeaderState> {
        let mut values = self.metadata_get(&[HOLDER_KEY, KEY])?.into_iter();
        Ok(HeaderState {
            claim: values.next().flatten(),
            record: values.next().flatten(),
        })
    }

    fn swap_claim(&self, expected: Option<&str>, new: Option<&str>) -> Result<bool> {
        let guard = (HOLDER_KEY, expected.unwrap_or_default());
        match new {
            Some(new) => self.metadata_write_if(guard, &[(HOLDER_KEY, new)], &[]),
            None => self.metadata_write_if(guard, &[], &[HOLDER_KEY]),
        }
    }

    fn write_record(
        &self,
        holder: &str,
        record: Option<&str>,
        release_claim: bool,
    ) -> Result<bool> {
        let set: Vec<(&str, &str)> = record.map(|r| (KEY, r)).into_iter().collect();
        let mut remove = Vec::new();
        if record.is_none() {
            remove.push(KEY);
        }
        if release_claim {
            remove.push(HOLDER_KEY);
        }
        if holder.is_empty() {
            return Err(Error::invalid("a record is written by a named holder"));
        }
        self.metadata_write_if((HOLDER_KEY, holder), &set, &remove)
    }
}
