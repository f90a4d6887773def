//! **Planning**: what to copy. Extents and the pieces a copy moves, zero runs and range
//! arithmetic ([`extent`]), the diff scan that follows what changed rather than the image
//! size ([`scan`]), and the pipeline that scans a cell of objects at a time ahead of the copy
//! and hands it pieces in order ([`pipeline`]).
//!
//! It may call: [`crate::rbd`] (diff_iterate), and the shared vocabulary.

pub(crate) mod extent;
pub(crate) mod pipeline;
pub(crate) mod scan;

pub use extent::*;
