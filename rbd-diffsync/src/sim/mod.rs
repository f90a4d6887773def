//! A simulated cluster, and the fault-schedule explorer that runs the transfer's real protocol
//! on it (feature `sim`; no stable API).
//!
//! The simulated cluster holds images (data, snapshots, header metadata, exclusive lock,
//! watchers), clients and their processes, and the blocklist, as [`cluster`] models them. The
//! transfers that run on it are the library's own [`DiffTransfer`](crate::DiffTransfer)s,
//! every step of their protocol through the traits of `crate::protocol::world`, the copy
//! through the real engine. Each client runs on a thread of its own, but one at a time: at
//! every call into the cluster it gives a baton back, and the explorer, from its seed, either
//! lets one client go on or changes the world first (a kill, a pause, a write that bypasses
//! the transfer, a snapshot removed...). A seed gives one schedule, and the same one again.
//!
//! The invariants checked after every schedule are in [`explore`].

pub(crate) mod cluster;
pub mod explore;
pub(crate) mod sched;
pub(crate) mod world;
