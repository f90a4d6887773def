//! The librbd pair of source and sink: an open image read at its snapshot, or written at
//! HEAD, through librbd's asynchronous calls, each request's result handed to the engine.

use crate::copy::engine::{Completion, DiffSink, DiffSource};
use crate::error::{Error, Result};
use crate::rbd::image::Image;

impl DiffSource for Image {
    unsafe fn start_read(
        &self,
        off: u64,
        len: usize,
        buf: *mut u8,
        done: Completion,
    ) -> Result<()> {
        // SAFETY: the engine keeps `buf` valid until `done` is completed.
        unsafe { self.aio_read(off, len, buf, move |ret| done.complete(ret)) }
    }

    fn read_error(&self, off: u64, len: u64, ret: i64) -> Error {
        self.io_error("read", off, len, ret)
    }
}

impl DiffSink for Image {
    unsafe fn start_write(
        &self,
        off: u64,
        len: usize,
        buf: *const u8,
        done: Completion,
    ) -> Result<()> {
        // SAFETY: the engine keeps `buf` valid until `done` is completed.
        unsafe { self.aio_write(off, len, buf, move |ret| done.complete(ret)) }
    }

    /// Starts making `[off, off + len)` read as zeros, deallocating whole objects.
    fn start_zero(&self, off: u64, len: u64, done: Completion) -> Result<()> {
        self.aio_write_zeroes(off, len, move |ret| done.complete(ret))
    }

    fn write_error(&self, op: &'static str, off: u64, len: u64, ret: i64) -> Error {
        self.io_error(op, off, len, ret)
    }
}
