//! **librbd and librados**: the only code that calls them. Connections and pools
//! ([`cluster`]), open images and their headers ([`image`]), and the hand-written declarations
//! of the C API ([`sys`]).
//!
//! It may call: the C libraries, and the shared vocabulary (`error`, `spec`, `progress`). It
//! knows nothing of diffs, copies or transfers.

pub(crate) mod cluster;
pub(crate) mod image;
pub(crate) mod sys;
