//! Who may write into a destination: the claim, the fencing of a dead predecessor, and the
//! exclusive lock.
//!
//! A transfer claims the destination (an atomic compare-and-set of its claim in the header)
//! before it opens it for writing, and replaces a claim found there only when its claimant
//! cannot be writing. Once open, it fences off its own predecessor if that one is gone, then
//! takes the exclusive lock. The rules:
//!
//! - **Alive** is a client that acknowledges a notification within [`ANSWER_TIMEOUT`], or
//!   whose process, on this host, is stopped (SIGSTOP: it goes on when continued). A client
//!   whose process on this host ended is gone at once, without a notification. A client that
//!   does not answer (its process runs, but its connection was shut down; or on another
//!   host, killed, stopped or cut off) counts as gone. An alive client is never fenced: the
//!   transfer is refused ([`Busy`](crate::ErrorKind::Busy)), naming it.
//! - **Fenced** is only the transfer's own predecessor (the run the operator repeats: same
//!   source, base and a not older end, see [`Record::repeats`]), found gone, and never a
//!   connection other transfers share while its process may be alive. Fencing is an explicit
//!   blocklist, confirmed in the OSD map, before its lock is broken, whatever
//!   `rbd_blocklist_on_break_lock` says.
//! - Every other client that holds the lock or the claim refuses the transfer, naming it.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::progress::{Reporter, Waited};
use crate::protocol::record::Record;
use crate::protocol::world::{Conn, DestImage, Header, Process};
use crate::spec::ImageSpec;

/// How long a predecessor on another host that still watches the destination has to answer a
/// notification before it counts as gone: a live librbd client answers within milliseconds.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a claimant that neither watches nor locks the destination is given to open it
/// (a transfer opens it within milliseconds of its claim) before its claim counts as left
/// behind: polls of the watchers, and the pause between two.
const OPEN_POLLS: u32 = 20;
const OPEN_POLL_PAUSE: Duration = Duration::from_millis(250);

/// How long librados keeps a dead client's watch, after which librbd breaks its lock.
const WATCH_TIMEOUT_TEXT: &str = "osd_client_watch_timeout, 30 s by default";

/// The destination as the protocol works on it.
#[derive(Clone)]
pub(crate) struct Target {
    pub conn: Arc<dyn Conn>,
    /// Resolved.
    pub spec: ImageSpec,
    /// `pool[/namespace]/image`.
    pub label: String,
    /// This transfer, as its claim and record name it (with no checkpoint).
    pub mine: Record,
    /// This transfer's claim, as stored.
    pub text: String,
}

/// A claim this transfer holds.
pub(crate) struct Claimed {
    pub header: Arc<dyn Header>,
    /// The claim it replaced, as stored: given back if the transfer is refused.
    pub replaced: Option<String>,
    /// The clients named by the claim it replaced and by the in-progress record it found:
    /// the only ones it may fence off.
    pub named: Vec<Record>,
    /// Those of them that were fenced off while claiming.
    pub fenced: Vec<String>,
}

/// What became of the predecessors named by the claim and the record, once the destination
/// is open for writing.
#[derive(Debug, Default)]
pub(crate) struct Fencing {
    /// The clients fenced off.
    pub fenced: Vec<String>,
    /// The fenced client that held the exclusive lock, to be taken over from it.
    pub lock_of: Option<String>,
    /// Whether the lock passed from that client to this transfer, and no other in between.
    pub took_lock: bool,
}

/// Whether a client is alive, as far as can be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Liveness {
    Alive,
    /// Its process ended (told on this host).
    Ended,
    /// It did not answer a notification in time (or could not be asked).
    Unresponsive,
}

impl Target {
    fn busy(&self, message: String) -> Error {
        Error::new(ErrorKind::Busy, libc::EBUSY, message).with_image(&self.label)
    }

    fn still_running(&self, who: &Record) -> Error {
        let process = match (&who.client.host.is_empty(), who.client.pid) {
            (false, pid) if pid > 0 => format!(", process {pid}"),
            _ => String::new(),
        };
        self.busy(format!(
            "image {} is being written by another transfer that is still running (client {}{process}, \
             which answers or whose process lives): wait for it to end, or stop it and run this \
             again",
            self.label, who.client.address
        ))
    }

    fn locked_by(&self, owner: &str) -> Error {
        self.busy(format!(
            "image {} is locked by the client at {owner}, which is not a transfer this one \
             repeats: stop that client or choose another destination (a client that was killed \
             loses its lock when its watch expires, {WATCH_TIMEOUT_TEXT})",
            self.label
        ))
    }

    /// Whether the client `who` names may be fenced off once found gone: this transfer's own
    /// predecessor, whose connection no other transfer shares unless its process ended.
    fn may_fence(&self, who: &Record, liveness: Liveness) -> bool {
        self.mine.repeats(who) && (liveness == Liveness::Ended || !who.client.shared)
    }

    fn refuse_unfenceable(&self, who: &Record) -> Error {
        if who.client.shared {
            return self.busy(format!(
                "image {} is held by client {}, the shared connection of a batch (sync-many) \
                 that does not answer: it is never fenced off while it may be alive; if that \
                 process is gone, its watch expires within {WATCH_TIMEOUT_TEXT}, then run this \
                 again",
                self.label, who.client.address
            ));
        }
        self.busy(format!(
            "image {} is held by client {} of another transfer (from {}), which does not \
             answer: only a transfer's own predecessor is fenced off; wait for its watch to \
             expire ({WATCH_TIMEOUT_TEXT}) or stop it, then run this again",
            self.label,
            who.client.address,
            if who.source.is_empty() {
                "an unknown source"
            } else {
                &who.source
            }
        ))
    }

    /// Whether `who`, which has the image `image` open or locked, is alive.
    fn liveness(
        &self,
        reporter: &mut Reporter,
        image: &Arc<dyn DestImage>,
        who: &Record,
    ) -> Result<Option<Liveness>> {
        match self.conn.process(&who.client) {
            Some(Process::Stopped) => return Ok(Some(Liveness::Alive)),
            Some(Process::Ended) => return Ok(Some(Liveness::Ended)),
            Some(Process::Running) | None => {}
        }
        let (image, address) = (image.clone(), who.client.address.clone());
        let what = format!(
            "an answer from the client at {address}, which holds {}",
            self.label
        );
        let answers = reporter.detached(&self.label, what, move || {
            image.answers(&address, ANSWER_TIMEOUT)
        })?;
        Ok(
            answers.map(|answers| match (answers, self.conn.process(&who.client)) {
                (true, _) => Liveness::Alive,
                // Stopped while it was asked: alive all the same.
                (false, Some(Process::Stopped)) => Liveness::Alive,
                (false, Some(Process::Ended)) => Liveness::Ended,
                (false, _) => Liveness::Unresponsive,
            }),
        )
    }

    /// Fences off the client at `address`: blocklisted, confirmed in the OSD map. Its lock, if
    /// it holds one, is taken over by [`lock`](Self::lock).
    fn fence(&self, reporter: &mut Reporter, address: &str) -> Result<()> {
        let (conn, client) = (self.conn.clone(), address.to_owned());
        let what = format!("the client at {address} to be fenced off {}", self.label);
        reporter.waited(what, move || conn.fence(&client))
    }

    /// Claims the destination, whose header is `header`: replaces the claim found there only
    /// when its claimant cannot be writing (see the module documentation), atomically.
    pub(crate) fn claim(
        &self,
        reporter: &mut Reporter,
        header: Arc<dyn Header>,
    ) -> Result<Claimed> {
        for _ in 0..4 {
            let h = header.clone();
            let what = "the claim on the destination".to_owned();
            let state = reporter.detached(&self.label, what, move || h.read())?;
            let previous = state.claim.as_deref().and_then(Record::decode_claim);
            let record = state.record.as_deref().and_then(Record::decode);
            let mut fenced = Vec::new();
            if let Some(p) = previous
                .as_ref()
                .filter(|p| p.client.address != self.mine.client.address)
            {
                if let Some(address) = self.may_replace(reporter, p)? {
                    fenced.push(address);
                }
            }
            let (h, expected, text) = (header.clone(), state.claim.clone(), self.text.clone());
            let swapped = reporter.waited("the claim on the destination", move || {
                h.swap_claim(expected.as_deref(), Some(&text))
            })?;
            if swapped {
                let named = previous.into_iter().chain(record).collect();
                return Ok(Claimed {
                    header,
                    replaced: state.claim,
                    named,
                    fenced,
                });
            }
            // Claimed by another meanwhile: look again.
        }
        Err(self.busy(format!(
            "image {} is being claimed by other transfers at the same time: run this again \
             once they are done",
            self.label
        )))
    }

    /// Whether the claim of `p` may be replaced: `Ok` when it cannot be writing (perhaps
    /// after fencing it off: its address is returned), `Busy` when it may.
    fn may_replace(&self, reporter: &mut Reporter, p: &Record) -> Result<Option<String>> {
        let process = self.conn.process(&p.client);
        if process == Some(Process::Ended) {
            // It can neither write nor answer; a watch or lock it left is fenced once open.
            return Ok(None);
        }
        // Who has the image open or locked, seen without opening it for writing.
        let (conn, spec) = (self.conn.clone(), self.spec.clone());
        let what = "the destination to open for reading".to_owned();
        let look = reporter.detached(&self.label, what, move || conn.open_dest(&spec, false))?;
        // A claimant that has not opened the image yet may be about to: it is given a moment.
        // One that does not is left behind: its claim is replaced. Should it open the image
        // after all, it writes nothing: its record, which comes before its first write, is
        // written only under its claim (and on an image with the exclusive lock, the lock
        // keeps two writers apart besides).
        let mut polls = 0;
        while !self.present(&look, &p.client.address)? {
            polls += 1;
            if polls >= OPEN_POLLS {
                return Ok(None);
            }
            if reporter.stop().is_some() {
                return Err(reporter.stopped_error(&self.label));
            }
            reporter.pause(OPEN_POLL_PAUSE);
        }
        let liveness = match self.liveness(reporter, &look, p)? {
            // Its watch went meanwhile.
            None => return Ok(None),
            Some(liveness) => liveness,
        };
        match liveness {
            Liveness::Alive => Err(self.still_running(p)),
            Liveness::Ended => Ok(None),
            Liveness::Unresponsive if self.may_fence(p, liveness) => {
                // Its lock is taken over once the destination is open for writing.
                self.fence(reporter, &p.client.address)?;
                Ok(Some(p.client.address.clone()))
            }
            Liveness::Unresponsive => Err(self.refuse_unfenceable(p)),
        }
    }

    /// Whether the client at `address` watches or locks the image.
    fn present(&self, image: &Arc<dyn DestImage>, address: &str) -> Result<bool> {
        Ok(image.watchers()?.iter().any(|w| w == address)
            || image.lock_owners()?.iter().any(|o| o == address))
    }

    /// Gives a claim back after a refusal, or after a failure once nothing of this transfer
    /// remains to be recognised by a rerun (best effort).
    pub(crate) fn unclaim(&self, claimed: &Claimed, restore: bool) {
        let previous = if restore {
            claimed.replaced.as_deref()
        } else {
            None
        };
        let _ = claimed.header.swap_claim(Some(&self.text), previous);
    }

    /// With the destination open for writing as `image`: fences off the predecessors named
    /// when claiming (`named`) that still watch or lock it and are gone, and refuses a live
    /// one or another client holding the lock.
    pub(crate) fn fence_predecessors(
        &self,
        reporter: &mut Reporter,
        image: &Arc<dyn DestImage>,
        claimed: &Claimed,
    ) -> Result<Fencing> {
        let me = &self.mine.client.address;
        let owners: Vec<String> = image
            .lock_owners()?
            .into_iter()
            .filter(|o| o != me)
            .collect();
        let watching: Vec<String> = image.watchers()?.into_iter().filter(|w| w != me).collect();
        let named = |address: &str| claimed.named.iter().find(|r| r.client.address == address);
        if let Some(owner) = owners.iter().find(|o| named(o).is_none()) {
            if watching.contains(owner) {
                return Err(self.locked_by(owner));
            }
        }
        let mut fencing = Fencing::default();
        let mut present: Vec<&String> = watching.iter().chain(&owners).collect();
        present.sort();
        present.dedup();
        for address in present {
            let Some(who) = named(address) else { continue };
            let holds_lock = owners.contains(address);
            let liveness = if claimed.fenced.contains(address) {
                Liveness::Unresponsive
            } else {
                match self.liveness(reporter, image, who)? {
                    None if !holds_lock => continue,
                    None => Liveness::Unresponsive,
                    Some(liveness) => liveness,
                }
            };
            match liveness {
                Liveness::Alive => return Err(self.still_running(who)),
                _ if self.may_fence(who, liveness) || claimed.fenced.contains(address) => {
                    self.fence(reporter, address)?;
                    if holds_lock {
                        fencing.lock_of = Some(address.clone());
                    }
                    fencing.fenced.push(address.clone());
                }
                // Another transfer's client that still watches and holds the lock: it may
                // be alive (it is not this transfer's to fence off).
                _ if holds_lock && watching.contains(address) => {
                    return Err(self.refuse_unfenceable(who))
                }
                // Its lock without its watch: a dead owner's, which librbd breaks when the lock
                // is taken. Or watching only, as a reader would: the checks decide.
                _ => {}
            }
        }
        Ok(fencing)
    }

    /// Takes the destination's exclusive lock, unless its image lacks the feature: over from
    /// the fenced client that held it, if any (`fencing.took_lock` then says whether it
    /// passed from it to this transfer directly). Waited for even when the transfer is asked
    /// to stop meanwhile (it changes who may write).
    pub(crate) fn lock(
        &self,
        reporter: &mut Reporter,
        image: &Arc<dyn DestImage>,
        fencing: &mut Fencing,
    ) -> Result<()> {
        if !image.lockable()? {
            return Ok(());
        }
        let (owned, from) = (image.clone(), fencing.lock_of.clone());
        let what = format!("the exclusive lock of {}", self.label);
        let taken = reporter.wait(what, false, move || match &from {
            Some(owner) => owned.take_over_lock(owner),
            None => owned.acquire_lock().map(|()| false),
        });
        match taken {
            Waited::Done(Ok(took)) => {
                fencing.took_lock = took;
                Ok(())
            }
            Waited::Done(Err(e)) if e.errno() == libc::EROFS => {
                let owner = image
                    .lock_owners()
                    .ok()
                    .and_then(|o| o.into_iter().next())
                    .unwrap_or_else(|| "another client".to_owned());
                Err(self.locked_by(&owner))
            }
            Waited::Done(Err(e)) => Err(e),
            Waited::Stopped => unreachable!("a step that writes is not detached"),
        }
    }

    /// Writes this transfer's record with checkpoint `done` (`None`: removes it, and the
    /// claim with it), if the claim is still this transfer's; a claim taken over means this
    /// client was fenced off.
    pub(crate) fn write_record(&self, header: &dyn Header, done: Option<u64>) -> Result<()> {
        let text = done.map(|done| {
            Record {
                done,
                ..self.mine.clone()
            }
            .encode()
        });
        if header.write_record(&self.text, text.as_deref(), done.is_none())? {
            Ok(())
        } else {
            Err(self.fenced_error("its claim on the destination was taken over"))
        }
    }

    /// The error of a transfer whose client was fenced off.
    pub(crate) fn fenced_error(&self, how: &str) -> Error {
        fenced(&self.label, how)
    }
}

/// The error of a transfer into `label` whose client was fenced off (`how`).
pub(crate) fn fenced(label: &str, how: &str) -> Error {
    Error::new(
        ErrorKind::Fenced,
        libc::ESHUTDOWN,
        format!(
            "the transfer into {label} was fenced off ({how}): a rerun of it found this client \
             unresponsive and took the destination over, or an operator blocklisted it; it \
             wrote nothing more, and no end snapshot was created by it"
        ),
    )
    .with_image(label)
}
