//! The state of the simulated cluster: images with their data, snapshots, header metadata,
//! exclusive lock and watchers; clients and their processes; the blocklist. Every change is
//! made by one call at a time (the baton), and the events that the invariants need are kept.

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::{DiffExtent, ZERO_BLOCK};
use crate::sim::sched::ClientId;

/// Bytes of a block: the unit of writes, diffs and allocation.
pub const BLOCK: u64 = ZERO_BLOCK;

/// The content of an image at HEAD or at a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Data {
    pub bytes: Vec<u8>,
    /// Per block: the epoch of its last write (0: never written since creation), and whether
    /// it holds data (a zeroed or discarded block does not).
    pub blocks: Vec<(u64, bool)>,
}

impl Data {
    pub fn new(size: u64) -> Data {
        Data {
            bytes: vec![0; size as usize],
            blocks: vec![(0, false); size.div_ceil(BLOCK) as usize],
        }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn resize(&mut self, size: u64) {
        self.bytes.resize(size as usize, 0);
        // A block cut in two by a shrink keeps its state; bytes beyond are gone.
        self.blocks
            .resize(size.div_ceil(BLOCK) as usize, (0, false));
    }

    /// Writes `data` at `off` (within the size), as epoch `epoch`.
    pub fn write(&mut self, off: u64, data: &[u8], epoch: u64) {
        let end = (off + data.len() as u64).min(self.size());
        if off >= end {
            return;
        }
        self.bytes[off as usize..end as usize].copy_from_slice(&data[..(end - off) as usize]);
        for b in off / BLOCK..end.div_ceil(BLOCK) {
            self.blocks[b as usize] = (epoch, true);
        }
    }

    /// Makes `[off, off + len)` read as zeros, as epoch `epoch`: whole blocks stop holding
    /// data; the parts of others hold zeros.
    pub fn zero(&mut self, off: u64, len: u64, epoch: u64) {
        let end = (off + len).min(self.size());
        if off >= end {
            return;
        }
        self.bytes[off as usize..end as usize].fill(0);
        for b in off / BLOCK..end.div_ceil(BLOCK) {
            let (start, stop) = (b * BLOCK, ((b + 1) * BLOCK).min(self.size()));
            let whole = off <= start && stop <= end;
            let held = self.blocks[b as usize].1;
            self.blocks[b as usize] = (epoch, held && !whole);
        }
    }

    pub fn read(&self, off: u64, buf: &mut [u8]) {
        let end = (off + buf.len() as u64).min(self.size());
        buf.fill(0);
        if off < end {
            buf[..(end - off) as usize].copy_from_slice(&self.bytes[off as usize..end as usize]);
        }
    }

    /// The extents that differ from `from` (or hold data, with `None`) within
    /// `[off, off + len)`, block by block, or whole objects of `object` bytes; as librbd's
    /// diff, `exists` says whether the range holds data now.
    pub fn diff(
        &self,
        from: Option<&Data>,
        off: u64,
        len: u64,
        object: Option<u64>,
    ) -> Vec<DiffExtent> {
        let end = (off + len).min(self.size());
        let unit = object.unwrap_or(BLOCK);
        let mut out: Vec<DiffExtent> = Vec::new();
        let mut at = off / unit * unit;
        while at < end {
            let stop = (at + unit).min(self.size());
            let changed = (at / BLOCK..stop.div_ceil(BLOCK)).any(|b| {
                let now = self.blocks[b as usize];
                match from {
                    None => now.1,
                    Some(from) => match from.blocks.get(b as usize) {
                        Some(&then) => then.0 != now.0,
                        None => now.1,
                    },
                }
            });
            if changed {
                let exists = (at / BLOCK..stop.div_ceil(BLOCK)).any(|b| self.blocks[b as usize].1);
                let (s, e) = (at.max(off), stop.min(end));
                out.push(DiffExtent {
                    offset: s,
                    len: e - s,
                    exists,
                });
            }
            at += unit;
        }
        out
    }
}

/// A snapshot of an image.
#[derive(Clone, Debug)]
pub struct SnapState {
    pub id: u64,
    pub name: String,
    pub data: Data,
}

/// An image.
#[derive(Clone, Debug)]
pub struct ImageState {
    pub pool: String,
    pub name: String,
    pub id: String,
    pub order: u8,
    pub lockable: bool,
    pub head: Data,
    pub snaps: Vec<SnapState>,
    /// Snapshots removed: reads at them give zeros, as librbd's do once the OSDs trimmed them.
    pub removed: Vec<SnapState>,
    /// The header's metadata.
    pub meta: BTreeMap<String, String>,
    pub lock: Option<ClientId>,
    /// Clients that have it open for writing (their watch).
    pub watchers: Vec<ClientId>,
}

impl ImageState {
    pub fn object(&self) -> u64 {
        1 << self.order
    }

    pub fn snap(&self, name: &str) -> Option<&SnapState> {
        self.snaps.iter().find(|s| s.name == name)
    }
}

/// What a process is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proc {
    Running,
    /// SIGSTOP: alive, answers nothing, runs nothing.
    Stopped,
    /// Ended or killed: its memory is gone; what it left on the cluster stays.
    Ended,
}

/// A client: one process's connection to the cluster.
#[derive(Clone, Debug)]
pub struct ClientState {
    pub address: String,
    pub host: u32,
    pub pid: u32,
    pub start: u64,
    pub proc: Proc,
    /// Killed (rather than ended on its own): whatever it still runs has no effect.
    pub killed: bool,
    /// Whether other transfers share it.
    pub shared: bool,
}

/// Something that happened, for the invariants and for a failing schedule's trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client was blocklisted by another (`by`): by the protocol, or by librbd breaking a
    /// dead owner's lock (`librbd`). `state` and `killed` are those of its process then;
    /// `seen` what `by` last learnt of it: whether it answered a notification, and the state
    /// of its process (when on the same host).
    Fenced {
        by: ClientId,
        whom: ClientId,
        step: u64,
        librbd: bool,
        state: Proc,
        killed: bool,
        seen: Seen,
        /// Whether it watched the image then.
        watching: bool,
    },
    /// A lock held by `owner` was broken by `by`: by the protocol, or by librbd taking a dead
    /// owner's lock (`librbd`); `fenced_first` if its owner was blocklisted before.
    LockBroken {
        by: ClientId,
        owner: ClientId,
        step: u64,
        fenced_first: bool,
        librbd: bool,
    },
    /// A snapshot was created on an image.
    Snapshot {
        by: ClientId,
        image: String,
        name: String,
        step: u64,
    },
    /// Data was written bypassing the transfers' guards (a RADOS writer, or any writer on an
    /// image without the exclusive lock).
    Bypass { image: String, step: u64 },
}

/// What a client last learnt of another's liveness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub answered: Option<bool>,
    pub process: Option<Proc>,
}

/// The whole cluster.
#[derive(Debug, Default)]
pub struct State {
    pub images: Vec<ImageState>,
    pub clients: Vec<ClientState>,
    pub blocklist: BTreeSet<String>,
    pub next_snap_id: u64,
    /// Calls made so far.
    pub step: u64,
    /// Writes made so far (the epochs of blocks).
    pub epoch: u64,
    pub events: Vec<Event>,
    /// Whether librbd blocklists the owner of a lock it breaks (`rbd_blocklist_on_break_lock`).
    pub blocklist_on_break: bool,
    /// What each client last learnt of each other's liveness: (who, of whom).
    pub seen: BTreeMap<(ClientId, ClientId), Seen>,
}

pub const POOLS: [&str; 2] = ["rbd", "backups"];

impl State {
    pub fn pool_id(pool: &str) -> i64 {
        POOLS
            .iter()
            .position(|p| *p == pool)
            .map_or(99, |i| i as i64 + 1)
    }

    pub fn find(&self, pool: &str, name: &str) -> Option<usize> {
        self.images
            .iter()
            .position(|i| i.pool == pool && i.name == name)
    }

    pub fn client_at(&self, address: &str) -> Option<ClientId> {
        self.clients.iter().position(|c| c.address == address)
    }

    /// Whether the client can still act on the cluster: its process lives and it is not
    /// blocklisted.
    pub fn blocklisted(&self, who: ClientId) -> bool {
        self.blocklist.contains(&self.clients[who].address)
    }

    /// The client's watches go: what the OSDs do once a killed client's watch timed out, or
    /// at once for a blocklisted one.
    pub fn drop_watches(&mut self, who: ClientId) {
        for image in &mut self.images {
            image.watchers.retain(|&w| w != who);
        }
    }

    pub fn fence(&mut self, by: ClientId, whom: ClientId, librbd: bool) {
        let watching = self.images.iter().any(|i| i.watchers.contains(&whom));
        let address = self.clients[whom].address.clone();
        self.blocklist.insert(address);
        self.drop_watches(whom);
        let (step, state, killed) = (
            self.step,
            self.clients[whom].proc,
            self.clients[whom].killed,
        );
        let seen = self.seen.get(&(by, whom)).copied().unwrap_or_default();
        self.events.push(Event::Fenced {
            by,
            whom,
            step,
            librbd,
            state,
            killed,
            seen,
            watching,
        });
    }

    /// A new write epoch.
    pub fn next_epoch(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }
}
