//! **The copy engine**: moves pieces from a [`DiffSource`](engine::DiffSource) to a
//! [`DiffSink`](engine::DiffSink) with a window of requests in flight ([`engine`]), bounded in
//! bytes and requests, alone or inside a batch's shared budget ([`budget`]) and under a rate
//! cap ([`rate`]); the checkpoints a rerun resumes from ([`checkpoint`]); and the librbd pair
//! of source and sink ([`rbd`]). A new source or sink (an rbd diff stream, a file)
//! implements the two traits and leaves the engine alone.
//!
//! It may call: [`crate::plan`] (pieces, zero runs), [`crate::rbd`] (only in [`rbd`]), and
//! the shared vocabulary.

pub(crate) mod budget;
pub(crate) mod checkpoint;
pub(crate) mod completion;
pub(crate) mod engine;
pub(crate) mod rate;
pub(crate) mod rbd;
