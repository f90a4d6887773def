//! The protocol's world traits on the simulated cluster: every call is a point where the baton
//! goes back to the explorer, which may run another client or change the world first.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::copy::engine::{Completion, DiffSink, DiffSource};
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::plan::pipeline::Outline;
use crate::plan::{self, DiffExtent};
use crate::progress::StopCheck;
use crate::protocol::record::{Client, HOLDER_KEY, KEY};
use crate::protocol::world::{
    Conn, DestImage, Header, HeaderState, ImageId, Process, Scan, SourceFacts, SourceImage,
    Threads, World,
};
use crate::rbd::image::{ImageInfo, Layout, Snapshot};
use crate::rbd::sys;
use crate::sim::cluster::{Data, Event, ImageState, Proc, SnapState, State};
use crate::sim::sched::{ClientId, Sched};
use crate::spec::{ClusterSpec, ImageSpec};

/// The simulated cluster and its baton.
#[derive(Default)]
pub(crate) struct Inner {
    pub sched: Sched,
    pub state: Mutex<State>,
}

impl Inner {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn killed(&self, me: ClientId) -> bool {
        self.state().clients[me].killed
    }

    /// One call of client `me` into the cluster: the baton goes back first; then, unless
    /// `me` was killed or blocklisted meanwhile, `f` acts on the cluster.
    pub(crate) fn call<T>(
        &self,
        me: ClientId,
        f: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<T> {
        if self.killed(me) {
            return Err(gone());
        }
        self.sched.yield_now(me);
        let mut st = self.state();
        st.step += 1;
        if st.clients[me].killed {
            return Err(gone());
        }
        if st.blocklisted(me) {
            return Err(Error::from_errno(
                libc::ESHUTDOWN,
                format!("client {} is blocklisted", st.clients[me].address),
            ));
        }
        f(&mut st)
    }
}

/// What a killed client's calls get: nothing happens, and nobody reads the answer.
fn gone() -> Error {
    Error::from_errno(libc::ESHUTDOWN, "the process was killed")
}

fn not_found(what: String) -> Error {
    Error::from_errno(libc::ENOENT, what)
}

/// The world as client `me` sees it.
pub(crate) struct SimWorld {
    pub sim: Arc<Inner>,
    pub me: ClientId,
}

impl World for SimWorld {
    fn threads(&self) -> Threads {
        Threads::Inline
    }

    fn connect(&self, _spec: &ClusterSpec) -> Result<Arc<dyn Conn>> {
        self.sim.call(self.me, |_| Ok(()))?;
        Ok(Arc::new(SimConn {
            sim: self.sim.clone(),
            me: self.me,
        }))
    }
}

struct SimConn {
    sim: Arc<Inner>,
    me: ClientId,
}

fn host_name(host: u32) -> String {
    format!("host{host}")
}

fn image_index(st: &State, spec: &ImageSpec) -> Result<usize> {
    st.find(spec.pool().unwrap_or("rbd"), spec.image())
        .ok_or_else(|| Error::image_not_found(&spec.image_path()))
}

impl Conn for SimConn {
    fn fsid(&self) -> Result<String> {
        Ok("sim".to_owned())
    }

    fn client(&self) -> Result<Client> {
        let st = self.sim.state();
        let c = &st.clients[self.me];
        Ok(Client {
            address: c.address.clone(),
            host: host_name(c.host),
            pid: c.pid,
            start: c.start,
            shared: c.shared,
        })
    }

    fn resolve(&self, spec: &ImageSpec) -> Result<ImageSpec> {
        Ok(match spec.pool() {
            Some(_) => spec.clone(),
            None => spec.in_default_pool("rbd"),
        })
    }

    fn open_source(&self, spec: &ImageSpec) -> Result<Arc<dyn SourceImage>> {
        let index = self.sim.call(self.me, |st| {
            let index = image_index(st, spec)?;
            if let Some(snap) = spec.snap() {
                st.images[index]
                    .snap(snap)
                    .ok_or_else(|| Error::snap_not_found(&spec.image_path(), snap))?;
            }
            Ok(index)
        })?;
        Ok(Arc::new(SimSource {
            sim: self.sim.clone(),
            me: self.me,
            index,
            snap: spec.snap().map(str::to_owned),
            label: spec.to_string(),
        }))
    }

    fn header(&self, spec: &ImageSpec) -> Result<Option<Arc<dyn Header>>> {
        let index = self.sim.call(self.me, |st| {
            Ok(st.find(spec.pool().unwrap_or("rbd"), spec.image()))
        })?;
        Ok(index.map(|index| {
            Arc::new(SimHeader {
                sim: self.sim.clone(),
                me: self.me,
                index,
            }) as _
        }))
    }

    fn open_dest(&self, spec: &ImageSpec, write: bool) -> Result<Arc<dyn DestImage>> {
        let me = self.me;
        let index = self.sim.call(me, |st| {
            let index = image_index(st, spec)?;
            if write && !st.images[index].watchers.contains(&me) {
                st.images[index].watchers.push(me);
            }
            Ok(index)
        })?;
        Ok(Arc::new(SimDest {
            sim: self.sim.clone(),
            me,
            index,
            write,
            path: spec.image_path(),
        }))
    }

    fn create(&self, spec: &ImageSpec, size: u64, layout: &Layout) -> Result<()> {
        self.sim.call(self.me, |st| {
            let pool = spec.pool().unwrap_or("rbd").to_owned();
            if st.find(&pool, spec.image()).is_some() {
                return Err(Error::from_errno(
                    libc::EEXIST,
                    format!("image {} exists", spec.image_path()),
                ));
            }
            let id = format!("{:x}", 0x1000 + st.images.len());
            st.images.push(ImageState {
                pool,
                name: spec.image().to_owned(),
                id,
                order: layout.order,
                lockable: layout.features & sys::RBD_FEATURE_EXCLUSIVE_LOCK != 0,
                head: Data::new(size),
                snaps: Vec::new(),
                removed: Vec::new(),
                meta: Default::default(),
                lock: None,
                watchers: Vec::new(),
            });
            Ok(())
        })
    }

    fn fence(&self, address: &str) -> Result<()> {
        let me = self.me;
        self.sim.call(me, |st| {
            match st.client_at(address) {
                Some(whom) => st.fence(me, whom, false),
                None => {
                    st.blocklist.insert(address.to_owned());
                }
            }
            Ok(())
        })
    }

    fn process(&self, client: &Client) -> Option<Process> {
        let mut st = self.sim.state();
        if client.host != host_name(st.clients[self.me].host) {
            return None;
        }
        let found = st
            .clients
            .iter()
            .position(|c| c.pid == client.pid && c.start == client.start);
        let proc = found.map_or(Proc::Ended, |c| st.clients[c].proc);
        if let Some(whom) = found {
            st.seen.entry((self.me, whom)).or_default().process = Some(proc);
        }
        Some(match proc {
            Proc::Running => Process::Running,
            Proc::Stopped => Process::Stopped,
            Proc::Ended => Process::Ended,
        })
    }

    fn pool_full(&self, _pool: &str) -> Option<String> {
        None
    }
}

/// Completes a read into `buf` with `bytes`, at once.
///
/// # Safety
/// `buf` must be valid for writes of `bytes.len()` bytes.
unsafe fn deliver(bytes: &[u8], buf: *mut u8, done: Completion) {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
    done.complete(bytes.len() as i64);
}

/// The source, open at its end snapshot (or HEAD).
struct SimSource {
    sim: Arc<Inner>,
    me: ClientId,
    index: usize,
    snap: Option<String>,
    label: String,
}

impl SimSource {
    /// The data at the snapshot opened, as it was scanned (a removed snapshot's too).
    fn data<'a>(&self, image: &'a ImageState) -> &'a Data {
        match &self.snap {
            None => &image.head,
            Some(name) => {
                let snap = image
                    .snaps
                    .iter()
                    .chain(&image.removed)
                    .find(|s| s.name == *name);
                &snap.expect("a snapshot opened stays known").data
            }
        }
    }

    /// Whether the snapshot opened was removed: reads then give zeros.
    fn removed(&self, image: &ImageState) -> bool {
        self.snap
            .as_ref()
            .is_some_and(|name| image.snap(name).is_none())
    }

    fn at_snap<'a>(image: &'a ImageState, name: &str) -> Result<&'a Data> {
        image
            .snaps
            .iter()
            .chain(&image.removed)
            .find(|s| s.name == name)
            .map(|s| &s.data)
            .ok_or_else(|| not_found(format!("snapshot {name}")))
    }
}

fn snapshots(image: &ImageState) -> Vec<Snapshot> {
    image
        .snaps
        .iter()
        .map(|s| Snapshot {
            id: s.id,
            name: s.name.clone(),
            size: s.data.size(),
        })
        .collect()
}

fn layout(image: &ImageState) -> Layout {
    Layout {
        order: image.order,
        stripe_unit: image.object(),
        stripe_count: 1,
        features: if image.lockable {
            sys::RBD_FEATURE_EXCLUSIVE_LOCK | sys::RBD_FEATURE_LAYERING
        } else {
            sys::RBD_FEATURE_LAYERING
        },
    }
}

impl DiffSource for SimSource {
    unsafe fn start_read(
        &self,
        off: u64,
        len: usize,
        buf: *mut u8,
        done: Completion,
    ) -> Result<()> {
        let bytes = self.sim.call(self.me, |st| {
            let image = &st.images[self.index];
            let mut bytes = vec![0; len];
            if !self.removed(image) {
                self.data(image).read(off, &mut bytes);
            }
            Ok(bytes)
        })?;
        // SAFETY: the caller keeps `buf` valid for `len` bytes until `done` completes.
        unsafe { deliver(&bytes, buf, done) };
        Ok(())
    }

    fn read_error(&self, off: u64, len: u64, ret: i64) -> Error {
        Error::io("read", &self.label, off, len, ret)
    }
}

impl SourceImage for SimSource {
    fn label(&self) -> &str {
        &self.label
    }

    fn facts(&self) -> Result<SourceFacts> {
        self.sim.call(self.me, |st| {
            let image = &st.images[self.index];
            let order = image.order;
            Ok(SourceFacts {
                info: ImageInfo {
                    size: self.data(image).size(),
                    object_size: 1 << order,
                    order,
                },
                layout: layout(image),
                image_id: image.id.clone(),
                pool_id: State::pool_id(&image.pool),
                namespace: String::new(),
                snapshots: snapshots(image),
            })
        })
    }

    fn scan(
        &self,
        from: Option<&Snapshot>,
        size: u64,
        whole_object: bool,
        _stop: &StopCheck,
    ) -> Result<Scan> {
        self.sim.call(self.me, |st| {
            let image = &st.images[self.index];
            let object = image.object();
            let from_data = from.map(|f| Self::at_snap(image, &f.name)).transpose()?;
            let unit = whole_object.then_some(object);
            let extents = self.data(image).diff(from_data, 0, size, unit);
            let zero_at_from = match from_data {
                None => Vec::new(),
                Some(from) => {
                    let held: Vec<(u64, u64)> = from
                        .diff(None, 0, from.size(), Some(object))
                        .iter()
                        .filter(|e| e.exists)
                        .map(|e| (e.offset, e.len))
                        .collect();
                    plan::complement(&held, size)
                }
            };
            Ok(Scan {
                outline: Outline::Known(plan::normalize(extents)),
                zero_at_from,
            })
        })
    }

    fn exact(
        &self,
        from: Option<&str>,
        offset: u64,
        len: u64,
        _stop: &StopCheck,
    ) -> Result<Vec<DiffExtent>> {
        self.sim.call(self.me, |st| {
            let image = &st.images[self.index];
            let from_data = from.map(|f| Self::at_snap(image, f)).transpose()?;
            Ok(self.data(image).diff(from_data, offset, len, None))
        })
    }

    fn snapshots_now(&self) -> Result<Vec<Snapshot>> {
        self.sim
            .call(self.me, |st| Ok(snapshots(&st.images[self.index])))
    }
}

/// The destination, open at HEAD.
struct SimDest {
    sim: Arc<Inner>,
    me: ClientId,
    index: usize,
    /// Open for writing: it watches the image.
    write: bool,
    path: String,
}

impl SimDest {
    fn image<T>(&self, f: impl FnOnce(&mut State, usize) -> Result<T>) -> Result<T> {
        self.sim.call(self.me, |st| f(st, self.index))
    }

    /// Whether `me` may write: it holds the lock of a lockable image, taking it if it is
    /// free (as librbd does on a write).
    fn may_write(st: &mut State, index: usize, me: ClientId) -> Result<()> {
        let image = &mut st.images[index];
        if !image.lockable {
            return Ok(());
        }
        match image.lock {
            Some(owner) if owner == me => Ok(()),
            None => {
                image.lock = Some(me);
                Ok(())
            }
            Some(_) => Err(Error::from_errno(
                libc::EROFS,
                "the image is locked by another client",
            )),
        }
    }
}

impl Drop for SimDest {
    fn drop(&mut self) {
        if !self.write {
            return;
        }
        // Closing: librbd releases the lock and the watch (a killed client does neither).
        let me = self.me;
        let _ = self.sim.call(me, |st| {
            let image = &mut st.images[self.index];
            image.watchers.retain(|&w| w != me);
            if image.lock == Some(me) {
                image.lock = None;
            }
            Ok(())
        });
    }
}

impl DiffSource for SimDest {
    unsafe fn start_read(
        &self,
        off: u64,
        len: usize,
        buf: *mut u8,
        done: Completion,
    ) -> Result<()> {
        let bytes = self.image(|st, i| {
            let mut bytes = vec![0; len];
            st.images[i].head.read(off, &mut bytes);
            Ok(bytes)
        })?;
        // SAFETY: the caller keeps `buf` valid for `len` bytes until `done` completes.
        unsafe { deliver(&bytes, buf, done) };
        Ok(())
    }

    fn read_error(&self, off: u64, len: u64, ret: i64) -> Error {
        Error::io("read", &self.path, off, len, ret)
    }
}

impl DiffSink for SimDest {
    unsafe fn start_write(
        &self,
        off: u64,
        len: usize,
        buf: *const u8,
        done: Completion,
    ) -> Result<()> {
        // SAFETY: the caller keeps `buf` valid and unchanged until `done` completes.
        let data = unsafe { std::slice::from_raw_parts(buf, len) }.to_vec();
        let me = self.me;
        self.image(|st, i| {
            Self::may_write(st, i, me)?;
            let epoch = st.next_epoch();
            st.images[i].head.write(off, &data, epoch);
            Ok(())
        })?;
        done.complete(len as i64);
        Ok(())
    }

    fn start_zero(&self, off: u64, len: u64, done: Completion) -> Result<()> {
        let me = self.me;
        self.image(|st, i| {
            Self::may_write(st, i, me)?;
            let epoch = st.next_epoch();
            st.images[i].head.zero(off, len, epoch);
            Ok(())
        })?;
        done.complete(len as i64);
        Ok(())
    }

    fn write_error(&self, op: &'static str, off: u64, len: u64, ret: i64) -> Error {
        Error::io(op, &self.path, off, len, ret)
    }
}

impl DestImage for SimDest {
    fn path(&self) -> &str {
        &self.path
    }

    fn id(&self) -> Result<ImageId> {
        self.image(|st, i| {
            let image = &st.images[i];
            Ok(ImageId {
                pool_id: State::pool_id(&image.pool),
                namespace: String::new(),
                image_id: image.id.clone(),
            })
        })
    }

    fn size(&self) -> Result<u64> {
        self.image(|st, i| Ok(st.images[i].head.size()))
    }

    fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.image(|st, i| Ok(snapshots(&st.images[i])))
    }

    fn lockable(&self) -> Result<bool> {
        self.image(|st, i| Ok(st.images[i].lockable))
    }

    fn lock_owners(&self) -> Result<Vec<String>> {
        self.image(|st, i| {
            Ok(st.images[i]
                .lock
                .map(|o| st.clients[o].address.clone())
                .into_iter()
                .collect())
        })
    }

    fn watchers(&self) -> Result<Vec<String>> {
        self.image(|st, i| {
            Ok(st.images[i]
                .watchers
                .iter()
                .map(|&w| st.clients[w].address.clone())
                .collect())
        })
    }

    fn answers(&self, address: &str, _timeout: Duration) -> Result<Option<bool>> {
        let me = self.me;
        self.image(|st, i| {
            let Some(who) = st.client_at(address) else {
                return Ok(None);
            };
            if !st.images[i].watchers.contains(&who) {
                return Ok(None);
            }
            let c = &st.clients[who];
            let answers = c.proc == Proc::Running && !c.killed && !st.blocklisted(who);
            st.seen.entry((me, who)).or_default().answered = Some(answers);
            Ok(Some(answers))
        })
    }

    fn acquire_lock(&self) -> Result<()> {
        let me = self.me;
        self.image(|st, i| {
            let Some(owner) = st.images[i].lock.filter(|&o| o != me) else {
                st.images[i].lock = Some(me);
                return Ok(());
            };
            let o = &st.clients[owner];
            let alive = !o.killed && o.proc != Proc::Ended && !st.blocklisted(owner);
            if alive && st.images[i].watchers.contains(&owner) {
                return Err(Error::from_errno(
                    libc::EROFS,
                    "the lock is held by another client, which keeps it",
                ));
            }
            // A dead owner: librbd waits for its watch to expire, then breaks its lock.
            st.drop_watches(owner);
            if st.blocklist_on_break {
                st.fence(me, owner, true);
            }
            let step = st.step;
            st.events.push(Event::LockBroken {
                by: me,
                owner,
                step,
                fenced_first: true,
                librbd: true,
            });
            st.images[i].lock = Some(me);
            Ok(())
        })
    }

    fn holds_lock(&self) -> Result<bool> {
        let me = self.me;
        self.image(|st, i| Ok(st.images[i].lock == Some(me)))
    }

    fn take_over_lock(&self, owner: &str) -> Result<bool> {
        let me = self.me;
        self.image(|st, i| {
            let held = st.images[i]
                .lock
                .filter(|&o| st.clients[o].address == owner);
            let Some(owner) = held else {
                return match st.images[i].lock {
                    None => {
                        st.images[i].lock = Some(me);
                        Ok(false)
                    }
                    Some(o) if o == me => Ok(false),
                    Some(_) => Err(Error::from_errno(
                        libc::EROFS,
                        "the lock is held by another client, which keeps it",
                    )),
                };
            };
            let fenced_first = st.blocklisted(owner);
            if st.blocklist_on_break {
                st.fence(me, owner, true);
            }
            let step = st.step;
            st.events.push(Event::LockBroken {
                by: me,
                owner,
                step,
                fenced_first,
                librbd: false,
            });
            st.images[i].lock = Some(me);
            Ok(true)
        })
    }

    fn changed_since(
        &self,
        from: &Snapshot,
        size: u64,
        exact: bool,
        _stop: &StopCheck,
    ) -> Result<Vec<(u64, u64)>> {
        self.image(|st, i| {
            let image = &st.images[i];
            let snap = image
                .snap(&from.name)
                .ok_or_else(|| Error::snap_not_found(&image.name, &from.name))?;
            let unit = (!exact).then_some(image.object());
            let changed: Vec<(u64, u64)> = image
                .head
                .diff(Some(&snap.data), 0, size, unit)
                .iter()
                .map(|e| (e.offset, e.len))
                .collect();
            let resized =
                (size != from.size).then(|| (size.min(from.size), size.abs_diff(from.size)));
            Ok(plan::union(&changed, &Vec::from_iter(resized)))
        })
    }

    fn allocated(&self, size: u64, _stop: &StopCheck) -> Result<Vec<(u64, u64)>> {
        self.image(|st, i| {
            let extents = st.images[i].head.diff(None, 0, size, None);
            let held: Vec<DiffExtent> = extents.into_iter().filter(|e| e.exists).collect();
            Ok(plan::normalize(held)
                .iter()
                .map(|e| (e.offset, e.len))
                .collect())
        })
    }

    fn resize(&self, size: u64) -> Result<()> {
        let me = self.me;
        self.image(|st, i| {
            Self::may_write(st, i, me)?;
            st.images[i].head.resize(size);
            Ok(())
        })
    }

    fn flush(&self) -> Result<()> {
        self.image(|_, _| Ok(()))
    }

    fn create_snapshot(&self, name: &str) -> Result<()> {
        let me = self.me;
        self.image(|st, i| {
            Self::may_write(st, i, me)?;
            if st.images[i].snap(name).is_some() {
                return Err(Error::snap_exists(&st.images[i].name, name));
            }
            st.next_snap_id += 1;
            let id = st.next_snap_id;
            let data = st.images[i].head.clone();
            st.images[i].snaps.push(SnapState {
                id,
                name: name.to_owned(),
                data,
            });
            let (image, step) = (st.images[i].name.clone(), st.step);
            st.events.push(Event::Snapshot {
                by: me,
                image,
                name: name.to_owned(),
                step,
            });
            Ok(())
        })
    }
}

/// The header of a destination.
struct SimHeader {
    sim: Arc<Inner>,
    me: ClientId,
    index: usize,
}

impl Header for SimHeader {
    fn read(&self) -> Result<HeaderState> {
        self.sim.call(self.me, |st| {
            let meta = &st.images[self.index].meta;
            Ok(HeaderState {
                claim: meta.get(HOLDER_KEY).cloned(),
                record: meta.get(KEY).cloned(),
            })
        })
    }

    fn swap_claim(&self, expected: Option<&str>, new: Option<&str>) -> Result<bool> {
        self.sim.call(self.me, |st| {
            let meta = &mut st.images[self.index].meta;
            if meta.get(HOLDER_KEY).map(String::as_str).unwrap_or_default()
                != expected.unwrap_or_default()
            {
                return Ok(false);
            }
            match new {
                Some(new) => meta.insert(HOLDER_KEY.to_owned(), new.to_owned()),
                None => meta.remove(HOLDER_KEY),
            };
            Ok(true)
        })
    }

    fn write_record(
        &self,
        holder: &str,
        record: Option<&str>,
        release_claim: bool,
    ) -> Result<bool> {
        self.sim.call(self.me, |st| {
            let meta = &mut st.images[self.index].meta;
            if meta.get(HOLDER_KEY).map(String::as_str) != Some(holder) {
                return Ok(false);
            }
            match record {
                Some(record) => meta.insert(KEY.to_owned(), record.to_owned()),
                None => meta.remove(KEY),
            };
            if release_claim {
                meta.remove(HOLDER_KEY);
            }
            Ok(true)
        })
    }
}
