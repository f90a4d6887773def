//! The settings every job shares, their defaults and their ranges, checked in one place
//! before anything connects: the command line, the C setters and the Python keywords map
//! onto them.

use crate::error::{Error, Result};
use crate::plan;

/// Default size of one data chunk: half the default RBD object size. With the default window
/// it was the fastest of 1, 2 and 4 MiB at 0 and 3 ms of round trip (the sweep behind the
/// latency proxy in BENCHMARKS.md).
pub const DEFAULT_CHUNK_SIZE: u64 = 2 << 20;
/// Default window: memory for this many chunks (64 MiB with the default chunk), our buffers,
/// librados's receive buffers and librbd's copies of writes together. 32 was the fastest of
/// 8, 16 and 32 for the full copy and the incremental, at 0 and 3 ms of round trip; 16 was up
/// to 1.14 times slower.
pub const DEFAULT_WINDOW: usize = 32;
/// Checks a chunk size and a window (in chunks).
pub(crate) fn check_io(chunk_size: u64, window: usize) -> Result<()> {
    if chunk_size < plan::ZERO_BLOCK || chunk_size % plan::ZERO_BLOCK != 0 || chunk_size > 1 << 30 {
        return Err(Error::invalid(format!(
            "chunk size {chunk_size} is not a multiple of 4096 between 4 KiB and 1 GiB"
        )));
    }
    if window == 0 || window > 1024 {
        return Err(Error::invalid(format!(
            "window {window} is not between 1 and 1024"
        )));
    }
    Ok(())
}
