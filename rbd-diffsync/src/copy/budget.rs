//! What several transfers share: a [`Budget`] of memory and requests in flight (their rate
//! cap is [`super::rate`]).
//!
//! Each engine draws from the budget before it starts a piece (bytes) and before it submits a
//! request (one request), and gives back what it no longer holds. A draw that does not fit
//! queues the engine, first come first served, one queue for bytes and one for requests: a
//! queued engine is refused until it is first in its queue and what it asks for fits, so no
//! engine starves. When what was given back lets the first one in a queue go, the budget wakes
//! it by sending a wake-up token on the completion channel it waits on; so an engine blocked
//! on the budget sleeps on that channel and never polls.
//!
//! No deadlock: bytes are given back when pieces finish, which needs only requests; requests
//! are given back when requests in flight complete, which needs nothing. So a request waiter
//! never waits for bytes, and the queue of requests is never behind the queue of bytes.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, MutexGuard};

use crate::copy::completion::{Done, WAKE};
use crate::error::Result;
use crate::locks::lock;
use crate::progress::Reporter;

/// A place in one of the budget's queues.
pub(crate) type Ticket = u64;

/// Memory and requests in flight shared by several engines: see the module's documentation.
#[derive(Debug)]
pub(crate) struct Budget {
    bytes: usize,
    requests: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct Waiter {
    ticket: Ticket,
    amount: usize,
    wake: Sender<Done>,
    /// Whether it was sent a wake-up since it last asked.
    woken: bool,
}

#[derive(Debug, Default)]
struct Queue {
    used: usize,
    peak: usize,
    waiters: VecDeque<Waiter>,
}

impl Queue {
    fn fits(&self, amount: usize, total: usize) -> bool {
        // Something larger than the whole budget goes once nothing else is held.
        self.used + amount <= total || self.used == 0
    }

    /// The first waiter, when what it asks for fits and it was not told so yet.
    fn wake_first(&mut self, total: usize) {
        let fits = match self.waiters.front() {
            Some(w) => !w.woken && self.fits(w.amount, total),
            None => false,
        };
        if fits {
            let w = self.waiters.front_mut().expect("checked");
            w.woken = true;
            // A receiver that is gone was an engine that has ended; it took itself out.
            let _ = w.wake.send(Done {
                token: WAKE,
                ret: 0,
            });
        }
    }

    fn take(
        &mut self,
        total: usize,
        next_ticket: &mut Ticket,
        ticket: &mut Option<Ticket>,
        amount: usize,
        wake: &Sender<Done>,
    ) -> bool {
        let first = match (*ticket, self.waiters.front()) {
            (_, None) => true,
            (Some(t), Some(w)) => w.ticket == t,
            (None, Some(_)) => false,
        };
        if first && self.fits(amount, total) {
            if ticket.take().is_some() {
                self.waiters.pop_front();
            }
            self.used += amount;
            self.peak = self.peak.max(self.used);
            // The next one may fit too.
            self.wake_first(total);
            return true;
        }
        match *ticket {
            Some(t) => {
                if let Some(w) = self.waiters.iter_mut().find(|w| w.ticket == t) {
                    w.amount = amount;
                    w.woken = false;
                }
            }
            None => {
                let t = *next_ticket;
                *next_ticket += 1;
                *ticket = Some(t);
                self.waiters.push_back(Waiter {
                    ticket: t,
                    amount,
                    wake: wake.clone(),
                    woken: false,
                });
            }
        }
        // Asked again after a wake-up that someone else's draw made stale: it may fit now.
        self.wake_first(total);
        false
    }

    fn give(&mut self, amount: usize, total: usize) {
        self.used -= amount;
        self.wake_first(total);
    }

    fn leave(&mut self, ticket: &mut Option<Ticket>, total: usize) {
        if let Some(t) = ticket.take() {
            self.waiters.retain(|w| w.ticket != t);
            self.wake_first(total);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    bytes: Queue,
    requests: Queue,
    next_ticket: Ticket,
}

impl Budget {
    /// A budget of `bytes` held at once and `requests` in flight at once, both at least 1.
    pub(crate) fn new(bytes: usize, requests: usize) -> Budget {
        Budget {
            bytes: bytes.max(1),
            requests: requests.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Draws `bytes`, or queues the caller (`ticket` then says where) and returns `false`:
    /// `wake` receives a wake-up token once it is first and they fit. Ask again then, with
    /// the same ticket. Something larger than the whole budget is granted once nothing else
    /// is held.
    pub(crate) fn take_bytes(
        &self,
        ticket: &mut Option<Ticket>,
        bytes: usize,
        wake: &Sender<Done>,
    ) -> bool {
        let st = &mut *self.state();
        st.bytes
            .take(self.bytes, &mut st.next_ticket, ticket, bytes, wake)
    }

    /// Draws one request in flight, as [`take_bytes`](Self::take_bytes) draws bytes.
    pub(crate) fn take_request(&self, ticket: &mut Option<Ticket>, wake: &Sender<Done>) -> bool {
        self.take_requests(ticket, 1, wake)
    }

    /// Draws `n` requests in flight at once, as [`take_bytes`](Self::take_bytes) draws bytes.
    fn take_requests(&self, ticket: &mut Option<Ticket>, n: usize, wake: &Sender<Done>) -> bool {
        let st = &mut *self.state();
        st.requests
            .take(self.requests, &mut st.next_ticket, ticket, n, wake)
    }

    /// Draws `bytes`, then `requests`, for a step that runs a window of its own (a transfer's
    /// verification), waiting its turn in the queues as engines do: the reporter ticks
    /// meanwhile and says what it waits for, and a stop ends the wait with the error
    /// naming `label`. What was drawn is given back when the reservation is dropped. It
    /// holds its bytes while it waits for requests, which engines give back without needing
    /// bytes, so no deadlock.
    pub(crate) fn reserve(
        &self,
        bytes: usize,
        requests: usize,
        reporter: &mut Reporter,
        label: &str,
    ) -> Result<Reserved<'_>> {
        let (tx, rx) = mpsc::channel();
        let mut reserved = Reserved {
            budget: self,
            bytes: 0,
            requests: 0,
        };
        // Where it waits for bytes, then for requests.
        let mut tickets = [None, None];
        let mut wait = |tickets: &mut [Option<Ticket>; 2]| {
            let [bytes_ticket, requests_ticket] = tickets;
            if reporter.stop().is_some() {
                self.leave(bytes_ticket, requests_ticket);
                return Err(reporter.stopped_error(label));
            }
            reporter.waiting_for(Some(format!(
                "room in the batch's budget for the verification of {label}"
            )));
            let _ = rx.recv_timeout(reporter.poll_interval());
            reporter.tick();
            Ok(())
        };
        while !self.take_bytes(&mut tickets[0], bytes, &tx) {
            wait(&mut tickets)?;
        }
        reserved.bytes = bytes;
        while !self.take_requests(&mut tickets[1], requests, &tx) {
            wait(&mut tickets)?;
        }
        reserved.requests = requests;
        reporter.waiting_for(None);
        Ok(reserved)
    }

    /// Gives back bytes and requests drawn before.
    pub(crate) fn give(&self, bytes: usize, requests: usize) {
        let mut st = self.state();
        if bytes > 0 {
            st.bytes.give(bytes, self.bytes);
        }
        if requests > 0 {
            st.requests.give(requests, self.requests);
        }
    }

    /// Leaves the queues the tickets are in (an engine that stops waiting).
    pub(crate) fn leave(&self, bytes: &mut Option<Ticket>, requests: &mut Option<Ticket>) {
        let mut st = self.state();
        st.bytes.leave(bytes, self.bytes);
        st.requests.leave(requests, self.requests);
    }

    /// The most bytes and requests held at once so far.
    #[cfg(test)]
    pub(crate) fn peaks(&self) -> (usize, usize) {
        let st = self.state();
        (st.bytes.peak, st.requests.peak)
    }

    /// Bytes and requests held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> (usize, usize) {
        let st = self.state();
        (st.bytes.used, st.requests.used)
    }
}

/// Bytes and requests drawn from a [`Budget`] by [`Budget::reserve`], given back when
/// dropped.
#[derive(Debug)]
pub(crate) struct Reserved<'a> {
    budget: &'a Budget,
    bytes: usize,
    requests: usize,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.budget.give(self.bytes, self.requests);
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::progress::CancelToken;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;
    use std::time::{Duration, Instant};

    #[test]
    fn a_draw_that_fits_is_granted_at_once_and_one_that_does_not_is_queued() {
        let b = Budget::new(100, 2);
        let (tx, rx) = mpsc::channel();
        let (mut t1, mut t2) = (None, None);
        assert!(b.take_bytes(&mut t1, 60, &tx));
        assert!(t1.is_none());
        assert!(!b.take_bytes(&mut t2, 50, &tx));
        assert!(t2.is_some());
        // A later draw that would fit waits behind the first one queued.
        let mut t3 = None;
        assert!(!b.take_bytes(&mut t3, 10, &tx));
        assert!(rx.try_recv().is_err(), "nobody woken yet");
        b.give(60, 0);
        // The first in the queue is woken, and only it.
        assert_eq!(rx.try_recv().unwrap().token, WAKE);
        assert!(rx.try_recv().is_err());
        assert!(!b.take_bytes(&mut t3, 10, &tx), "not first");
        assert!(b.take_bytes(&mut t2, 50, &tx));
        assert!(t2.is_none());
        // Its grant woke the next, which fits beside it.
        assert_eq!(rx.try_recv().unwrap().token, WAKE);
        assert!(b.take_bytes(&mut t3, 10, &tx));
        assert_eq!(b.used(), (60, 0));
        assert_eq!(b.peaks(), (60, 0));
    }

    #[test]
    fn more_than_the_whole_budget_goes_once_nothing_else_is_held() {
        let b = Budget::new(100, 1);
        let (tx, rx) = mpsc::channel();
        let (mut t1, mut t2) = (None, None);
        assert!(b.take_bytes(&mut t1, 10, &tx));
        assert!(!b.take_bytes(&mut t2, 500, &tx));
        b.give(10, 0);
        assert_eq!(rx.try_recv().unwrap().token, WAKE);
        assert!(b.take_bytes(&mut t2, 500, &tx));
        // Requests are a queue of their own: not held up by bytes.
        let mut r = None;
        assert!(b.take_request(&mut r, &tx));
        let mut r2 = None;
        assert!(!b.take_request(&mut r2, &tx));
        b.leave(&mut None, &mut r2);
        assert!(r2.is_none());
        b.give(500, 1);
        assert_eq!(b.used(), (0, 0));
    }

    #[test]
    fn a_waiter_that_leaves_passes_its_turn_on() {
        let b = Budget::new(100, 1);
        let (tx1, _rx1) = mpsc::channel();
        let (tx2, rx2) = mpsc::channel();
        let (mut t0, mut t1, mut t2) = (None, None, None);
        assert!(b.take_bytes(&mut t0, 100, &tx1));
        assert!(!b.take_bytes(&mut t1, 100, &tx1));
        assert!(!b.take_bytes(&mut t2, 50, &tx2));
        b.give(100, 0);
        b.leave(&mut t1, &mut None);
        assert_eq!(rx2.try_recv().unwrap().token, WAKE);
        assert!(b.take_bytes(&mut t2, 50, &tx2));
    }

    /// Threads drawing and giving back at random: what is held never exceeds the budget,
    /// every thread finishes (no deadlock, no starvation), and every wait ends with a
    /// wake-up.
    #[test]
    fn concurrent_users_stay_within_the_budget_and_all_finish() {
        let b = Arc::new(Budget::new(1000, 8));
        let held = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6u64)
            .map(|n| {
                let (b, held, peak) = (b.clone(), held.clone(), peak.clone());
                thread::spawn(move || {
                    let (tx, rx) = mpsc::channel();
                    let mut seed = n * 7919 + 1;
                    for _ in 0..300 {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let want = 50 + (seed >> 33) as usize % 400;
                        let mut ticket = None;
                        // A lost wake-up would leave it waiting for ever: it gives up after
                        // a minute instead of hanging the test.
                        while !b.take_bytes(&mut ticket, want, &tx) {
                            let done = rx.recv_timeout(Duration::from_secs(60)).expect("woken");
                            assert_eq!(done.token, WAKE);
                        }
                        let mut rt = None;
                        while !b.take_request(&mut rt, &tx) {
                            rx.recv_timeout(Duration::from_secs(60)).expect("woken");
                        }
                        let now = held.fetch_add(want, Ordering::SeqCst) + want;
                        peak.fetch_max(now, Ordering::SeqCst);
                        thread::yield_now();
                        held.fetch_sub(want, Ordering::SeqCst);
                        b.give(want, 1);
                        // Stale wake-ups from grants made while it did not wait.
                        while rx.try_recv().is_ok() {}
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a user finished");
        }
        assert!(peak.load(Ordering::SeqCst) <= 1000);
        assert!(b.peaks().0 <= 1000 && b.peaks().1 <= 8);
        assert_eq!(b.used(), (0, 0));
    }

    fn reporter(cancel: CancelToken) -> Reporter {
        Reporter::new(None, Duration::from_millis(5), cancel, Instant::now())
    }

    #[test]
    fn a_verification_waits_for_its_bytes_then_its_requests_and_gives_them_back() {
        let b = Arc::new(Budget::new(100, 10));
        let (tx, _rx) = mpsc::channel();
        let (mut bytes, mut requests) = (None, None);
        assert!(b.take_bytes(&mut bytes, 70, &tx));
        for _ in 0..8 {
            assert!(b.take_request(&mut requests, &tx));
        }
        let (waiting, granted) = (b.clone(), Arc::new(AtomicUsize::new(0)));
        let seen = granted.clone();
        let verification = thread::spawn(move || {
            let mut r = reporter(CancelToken::new());
            let reserved = waiting.reserve(60, 4, &mut r, "backups/v").unwrap();
            seen.store(1, Ordering::SeqCst);
            let held = waiting.used();
            drop(reserved);
            held
        });
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            granted.load(Ordering::SeqCst),
            0,
            "60 bytes do not fit beside 70"
        );
        b.give(70, 0);
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            granted.load(Ordering::SeqCst),
            0,
            "4 requests do not fit beside 8"
        );
        assert_eq!(
            b.used(),
            (60, 8),
            "its bytes are held while it waits for requests"
        );
        b.give(0, 8);
        assert_eq!(verification.join().unwrap(), (60, 4));
        assert_eq!(b.used(), (0, 0));
        assert_eq!(b.peaks(), (70, 8));
    }

    #[test]
    fn a_verification_cancelled_while_it_waits_fails_and_leaves_the_queue() {
        let b = Budget::new(100, 10);
        let (tx, _rx) = mpsc::channel();
        let mut first = None;
        assert!(b.take_bytes(&mut first, 70, &tx));
        let cancel = CancelToken::new();
        let token = cancel.clone();
        let canceller = thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            token.cancel();
        });
        let e = b
            .reserve(60, 4, &mut reporter(cancel), "backups/v")
            .unwrap_err();
        canceller.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        assert_eq!(e.errno(), libc::ECANCELED);
        assert_eq!(e.image(), Some("backups/v"));
        // Out of the queue: a draw that fits beside the first one goes at once.
        let mut next = None;
        assert!(b.take_bytes(&mut next, 30, &tx));
        assert_eq!(b.used(), (100, 0));
    }
}
