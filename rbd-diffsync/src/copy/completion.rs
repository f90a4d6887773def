//! How a request's result reaches the engine that waits for it: a [`Completion`] that
//! whoever finishes the request (librbd's callback threads, or the caller's own thread)
//! completes once, and the wake-up a shared budget sends on the same channel.

use std::sync::mpsc::Sender;

/// The token of a wake-up that a shared [`Budget`](super::budget::Budget) sends to an engine waiting for it: no
/// request's completion.
pub(crate) const WAKE: u64 = u64::MAX;

/// The result of one request as the engine receives it.
#[derive(Debug)]
pub(crate) struct Done {
    pub token: u64,
    pub ret: i64,
}

/// The engine's handle on one request: whoever finishes the request calls
/// [`complete`](Completion::complete) once, from any thread.
#[derive(Debug)]
pub(crate) struct Completion {
    tx: Sender<Done>,
    token: u64,
}

impl Completion {
    pub(crate) fn new(tx: Sender<Done>, token: u64) -> Completion {
        Completion { tx, token }
    }

    /// Reports the request's result: the bytes it moved (`>= 0`), or a negative errno.
    pub(crate) fn complete(self, ret: i64) {
        // A receiver that is gone waits for nothing any more.
        let _ = self.tx.send(Done {
            token: self.token,
            ret,
        });
    }
}
