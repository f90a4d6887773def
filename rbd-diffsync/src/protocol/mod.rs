//! The transfer's protocol: what decides whether, where and how a transfer writes, and what
//! makes its end snapshot mean "equal to the source": the claim on the destination, the
//! fencing of a gone predecessor, the exclusive lock, the checks, the in-progress record and
//! its checkpoint (trusted, or compared again), the verification and the commit.
//!
//! A run is a [`job::Job`]: [`open`] opens both images, claims and locks the destination and
//! checks it; [`diff`] scans the source's diff and plans it ahead of the copy; [`write`]
//! prepares the destination and copies, with checkpoints, comparing again what a predecessor
//! wrote when its lock did not pass straight to this run; [`commit`] verifies and makes the
//! end snapshot. [`claim`], [`record`] and [`checks`] are the rules those steps follow;
//! [`batch`] is what the transfers of a batch share.
//!
//! It runs against the traits of [`world`]: on librbd ([`rbd`]) in production, and on the
//! simulated cluster of the fault-schedule explorer (feature `sim`), which checks after every
//! schedule that an end snapshot reads as the source's and that the caller's result says
//! whether it exists.
//!
//! It may call: [`crate::verify`] (the comparison of what was written), [`crate::copy`] (the
//! engine, its budget and checkpoints), [`crate::plan`], [`crate::rbd`] (only in [`rbd`]),
//! and the shared vocabulary (`error`, `spec`, `progress`).

pub(crate) mod batch;
pub(crate) mod checks;
pub(crate) mod claim;
pub(crate) mod commit;
pub(crate) mod diff;
pub(crate) mod job;
pub(crate) mod open;
pub(crate) mod rbd;
pub(crate) mod record;
pub(crate) mod world;
pub(crate) mod write;
