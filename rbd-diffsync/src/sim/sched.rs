//! One baton for all the simulated clients: each runs on a thread of its own, but only the one
//! holding the baton runs, and it gives the baton back at every call into the simulated
//! cluster. Which client runs next, and what happens to the world in between, is the
//! explorer's choice, drawn from its seed: the same seed gives the same interleaving.

use crate::locks::{lock, wait};
use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex, MutexGuard};

/// A client of the simulated cluster: one process's connection.
pub type ClientId = usize;

#[derive(Default)]
struct Baton {
    /// Who runs now; `None` while the explorer decides.
    running: Option<ClientId>,
    /// Clients waiting for the baton at a call into the cluster.
    parked: BTreeSet<ClientId>,
    /// Clients whose thread runs (started and not ended).
    live: BTreeSet<ClientId>,
}

/// The baton.
#[derive(Default)]
pub(crate) struct Sched {
    baton: Mutex<Baton>,
    turn: Condvar,
}

impl Sched {
    /// `me`'s thread is about to start: the explorer waits for it from now on.
    pub(crate) fn register(&self, me: ClientId) {
        lock(&self.baton).live.insert(me);
    }

    /// Whether `me`'s thread still runs (registered, and not left).
    pub(crate) fn is_live(&self, me: ClientId) -> bool {
        lock(&self.baton).live.contains(&me)
    }

    /// `me`'s thread starts: it waits for its first turn.
    pub(crate) fn enter(&self, me: ClientId) {
        let b = lock(&self.baton);
        self.park(b, me);
    }

    /// Gives the baton back and waits until `me` is given it again.
    pub(crate) fn yield_now(&self, me: ClientId) {
        let mut b = lock(&self.baton);
        if b.running == Some(me) {
            b.running = None;
        }
        self.park(b, me);
    }

    fn park(&self, mut b: MutexGuard<'_, Baton>, me: ClientId) {
        b.parked.insert(me);
        self.turn.notify_all();
        while b.running != Some(me) {
            b = wait(&self.turn, b);
        }
        b.parked.remove(&me);
    }

    /// `me`'s thread ends: the baton goes back.
    pub(crate) fn leave(&self, me: ClientId) {
        let mut b = lock(&self.baton);
        b.live.remove(&me);
        if b.running == Some(me) {
            b.running = None;
        }
        self.turn.notify_all();
    }

    /// Waits until nobody runs: every live client is parked. Returns the parked ones.
    pub(crate) fn settled(&self) -> BTreeSet<ClientId> {
        let mut b = lock(&self.baton);
        while b.running.is_some() || b.parked.len() < b.live.len() {
            b = wait(&self.turn, b);
        }
        b.parked.clone()
    }

    /// Gives the baton to `who`, which must be parked, and waits until it is back.
    pub(crate) fn run(&self, who: ClientId) {
        let mut b = lock(&self.baton);
        assert!(b.parked.contains(&who), "client {who} is not parked");
        b.running = Some(who);
        self.turn.notify_all();
        while b.running == Some(who) {
            b = wait(&self.turn, b);
        }
    }
}
