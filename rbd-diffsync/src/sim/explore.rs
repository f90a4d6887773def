//! The fault-schedule explorer: one seed, one schedule of transfers on the simulated cluster,
//! with kills, pauses, cancels, concurrent starts, foreign writes and a vanished source
//! snapshot drawn from it; then the invariants.
//!
//! A schedule builds a source with three snapshots and a chain of commands to move them into
//! a destination (a full transfer, then incrementals), each run as a process of its own on
//! one of two hosts, some twice at once. While faults are drawn, a failed or killed command
//! is run again as its error advises (the same command; with `force` after
//! `DestinationChanged`). Then the faults stop, stopped processes continue, and each command
//! left is run until it completes or is refused for good. After the schedule:
//!
//! - **I1** every end snapshot on the destination reads exactly as the source's snapshot of
//!   that name. Exempt (and counted) is only a snapshot made after a write that bypassed every
//!   guard (a RADOS writer, or any writer of an image without the exclusive lock) by a run
//!   that did not verify after that write: no protocol can see such a write without reading.
//! - **I2** each command completes once the faults stop, or is refused for good with a reason
//!   (its source snapshot was removed).
//! - **I3** the protocol fences off only a transfer's own predecessor that does not answer
//!   (killed, stopped, or gone), blocklisting it before it breaks its lock; librbd breaks
//!   only dead owners' locks.
//! - **I4** a run that returned Ok made its end snapshot, and one that returned an error made
//!   none.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{ErrorKind, Result};
use crate::locks::lock;
use crate::progress::{CancelToken, Phase, TransferStats};
use crate::protocol::world::World;
use crate::sim::cluster::{Data, Event, ImageState, Proc, Seen, SnapState, State, BLOCK};
use crate::sim::sched::ClientId;
use crate::sim::world::{Inner, SimWorld};
use crate::DiffTransfer;

/// Calls into the cluster a schedule may make before it counts as stuck.
const STEP_LIMIT: u64 = 60_000;
/// Runs of one command while faults are drawn, after which they stop.
const FAULTY_RUNS: usize = 30;
/// Runs of one command at most once the faults stopped: each follows the advice of the error
/// before it, so two should do; more means a rerun does not complete the job.
const CLEAN_RUNS: usize = 4;

/// What one schedule did and found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    /// Broken invariants; empty when the schedule is sound.
    pub violations: Vec<String>,
    /// What happened, in order.
    pub trace: Vec<String>,
    /// Calls made into the cluster.
    pub steps: u64,
    /// Runs of a transfer.
    pub runs: usize,
    /// End snapshots made.
    pub commits: usize,
    /// End snapshots exempt from I1 (made without a verification after a bypassing write).
    pub unprotected: usize,
    /// Faults drawn.
    pub faults: usize,
}

/// A small, fast, seeded generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One command of the chain: `from` (none for a full transfer) to `end`.
#[derive(Clone, Copy, Debug)]
struct Command {
    from: Option<usize>,
    end: usize,
}

const SNAPS: [&str; 3] = ["s1", "s2", "s3"];
const SOURCE: &str = "rbd/src";
const DEST: &str = "backups/dst";

/// A run that panicked, and what it said.
struct Panicked(String);

/// What a run returned, or its panic.
type Ran = std::result::Result<Result<TransferStats>, Panicked>;

/// One run of a command: a process of its own.
struct Run {
    command: usize,
    client: ClientId,
    verify: bool,
    token: CancelToken,
    result: Arc<Mutex<Option<Ran>>>,
    /// The step at which its last verification started.
    verified_at: Arc<Mutex<Option<u64>>>,
    thread: Option<JoinHandle<()>>,
    /// How it ended: `None` while it runs, or when it was killed.
    ended: Option<Result<TransferStats, (ErrorKind, String)>>,
    killed: bool,
}

struct Explorer {
    sim: Arc<Inner>,
    rng: Rng,
    commands: Vec<Command>,
    /// Per command: whether it completed, its runs so far, and those once the faults
    /// stopped.
    done: Vec<bool>,
    attempts: Vec<usize>,
    clean: Vec<usize>,
    /// Per command, whether its next run is forced (the advice of `DestinationChanged`).
    forced: Vec<bool>,
    runs: Vec<Run>,
    /// Stopped processes, and the step at which they go on.
    stopped: BTreeMap<ClientId, u64>,
    /// Whether faults are still drawn.
    faults_until: u64,
    source_removed: Option<usize>,
    out: Outcome,
}

/// Random writes into `data` (a tenth to a half of its blocks), some of them zeroing.
fn scribble(rng: &mut Rng, data: &mut Data, epoch: &mut u64) {
    let blocks = data.size() / BLOCK;
    let writes = 1 + rng.below(blocks / 2 + 1);
    for _ in 0..writes {
        *epoch += 1;
        let at = rng.below(blocks) * BLOCK;
        let len = (1 + rng.below(3)) * BLOCK;
        if rng.chance(20) {
            data.zero(at, len, *epoch);
        } else {
            let byte = (rng.below(255) + 1) as u8;
            let partial = rng.below(BLOCK);
            let mut bytes = vec![byte; (len - partial) as usize];
            bytes[0] = byte.wrapping_add(1);
            data.write(at + partial, &bytes, *epoch);
        }
    }
}

/// The source's snapshots and its head after them, written at random into an image of
/// `objects` objects of `1 << order` bytes (sometimes resized between snapshots), and the last
/// write's epoch.
fn source_data(rng: &mut Rng, objects: u64, order: u8) -> (Vec<SnapState>, Data, u64) {
    let mut head = Data::new(objects << order);
    let mut epoch = 0;
    let mut snaps = Vec::new();
    for (i, name) in SNAPS.iter().enumerate() {
        scribble(rng, &mut head, &mut epoch);
        if i > 0 && rng.chance(15) {
            let size = (objects + rng.below(3)).saturating_sub(1).max(1) << order;
            head.resize(size);
        }
        snaps.push(SnapState {
            id: i as u64 + 1,
            name: (*name).to_owned(),
            data: head.clone(),
        });
    }
    scribble(rng, &mut head, &mut epoch);
    (snaps, head, epoch)
}

/// An image `pool/name` (of id `id`), unlocked and unwatched.
fn image(
    (pool, name, id): (&str, &str, &str),
    order: u8,
    lockable: bool,
    head: Data,
    snaps: Vec<SnapState>,
) -> ImageState {
    ImageState {
        pool: pool.into(),
        name: name.into(),
        id: id.into(),
        order,
        lockable,
        head,
        snaps,
        removed: Vec::new(),
        meta: Default::default(),
        lock: None,
        watchers: Vec::new(),
    }
}

/// The chain of commands: a full transfer of s1 or s2, then incrementals up to s3 (one may
/// skip a snapshot).
fn chain(rng: &mut Rng) -> Vec<Command> {
    let first = rng.below(2) as usize;
    let mut commands = vec![Command {
        from: None,
        end: first,
    }];
    let mut at = first;
    while at < 2 {
        let end = if at == 0 && rng.chance(25) { 2 } else { at + 1 };
        commands.push(Command {
            from: Some(at),
            end,
        });
        at = end;
    }
    commands
}

impl Explorer {
    fn new(seed: u64) -> Explorer {
        let mut rng = Rng(seed.wrapping_mul(0xA24B_AED4_963E_E407) ^ 0x5EED);
        let sim = Arc::new(Inner::default());
        let order = 14;
        let objects = 2 + rng.below(5);
        let lockable = rng.chance(75);
        {
            let mut st = sim.state();
            st.blocklist_on_break = rng.chance(50);
            let (snaps, head, epoch) = source_data(&mut rng, objects, order);
            st.epoch = epoch;
            st.next_snap_id = 10;
            let source = image(("rbd", "src", "5c"), order, lockable, head, snaps);
            st.images.push(source);
            // Sometimes the destination is made beforehand, empty, as cinder makes it.
            if rng.chance(25) {
                let lockable = rng.chance(75);
                let empty = Data::new(objects << order);
                let dest = image(("backups", "dst", "d5"), order, lockable, empty, Vec::new());
                st.images.push(dest);
            }
        }
        let commands = chain(&mut rng);
        let n = commands.len();
        let faults_until = 40 + rng.below(600);
        Explorer {
            sim,
            rng,
            commands,
            done: vec![false; n],
            attempts: vec![0; n],
            clean: vec![0; n],
            forced: vec![false; n],
            runs: Vec::new(),
            stopped: BTreeMap::new(),
            faults_until,
            source_removed: None,
            out: Outcome {
                seed,
                ..Outcome::default()
            },
        }
    }

    fn step(&self) -> u64 {
        self.sim.state().step
    }

    fn note(&mut self, what: String) {
        let step = self.step();
        self.out.trace.push(format!("[{step}] {what}"));
    }

    /// Starts a run of command `c`, as a new process on host 1 or 2.
    fn start(&mut self, c: usize) {
        self.attempts[c] += 1;
        if self.step() >= self.faults_until {
            self.clean[c] += 1;
        }
        let host = if self.rng.chance(25) { 2 } else { 1 };
        let verify = self.rng.chance(50);
        let force = self.forced[c];
        let client = self.new_client(host);
        let command = self.commands[c];
        let token = CancelToken::new();
        let verified_at = Arc::new(Mutex::new(None));
        let transfer = self.transfer(command, client, (verify, force), &token, &verified_at);
        let result = Arc::new(Mutex::new(None));
        let thread = self.spawn(client, transfer, result.clone());
        self.note(format!(
            "start client {client} (host {host}): {} {}{}{}",
            match command.from {
                Some(from) => format!("incremental {}..", SNAPS[from]),
                None => "full ".to_owned(),
            },
            SNAPS[command.end],
            if verify { " --verify" } else { "" },
            if force { " --force" } else { "" },
        ));
        self.out.runs += 1;
        self.runs.push(Run {
            command: c,
            client,
            verify,
            token,
            result,
            verified_at,
            thread: Some(thread),
            ended: None,
            killed: false,
        });
    }

    /// A new process on `host`, running.
    fn new_client(&mut self, host: u32) -> ClientId {
        let mut st = self.sim.state();
        let n = st.clients.len();
        st.clients.push(crate::sim::cluster::ClientState {
            address: format!("10.0.0.{host}:0/{}", 1000 + n),
            host,
            pid: 100 + n as u32,
            start: n as u64,
            proc: Proc::Running,
            killed: false,
            shared: false,
        });
        n
    }

    /// The transfer of `command` that `client` runs, with a chunk size and window drawn at
    /// random, verifying and forced as `(verify, force)` say, cancelled by `token`; it notes
    /// in `verified_at` the step at which its last verification started.
    fn transfer(
        &mut self,
        command: Command,
        client: ClientId,
        (verify, force): (bool, bool),
        token: &CancelToken,
        verified_at: &Arc<Mutex<Option<u64>>>,
    ) -> DiffTransfer {
        let source = format!("{SOURCE}@{}", SNAPS[command.end]);
        let chunk = BLOCK << self.rng.below(3);
        let window = 1 + self.rng.below(4) as usize;
        let seen = verified_at.clone();
        let sim = self.sim.clone();
        let world: Arc<dyn World> = Arc::new(SimWorld {
            sim: self.sim.clone(),
            me: client,
        });
        let mut transfer = DiffTransfer::new(
            source.parse().expect("a valid spec"),
            DEST.parse().expect("a valid spec"),
        )
        .chunk_size(chunk)
        .window(window)
        .verify(verify)
        .overwrite_existing(force)
        .cancel_token(token.clone())
        .on_progress({
            // The step at which the phase turned to verifying, the last time: when reported
            // (a report within a phase comes when time says, which a schedule must not see).
            let mut last = None;
            move |p| {
                if p.phase == Phase::Verifying && last != Some(Phase::Verifying) {
                    *lock(&seen) = Some(lock(&sim.state).step);
                }
                last = Some(p.phase);
            }
        })
        .on_world(world);
        if let Some(from) = command.from {
            transfer = transfer.from_snap(SNAPS[from]);
        }
        transfer
    }

    /// Runs `transfer` as `client`'s process, on a thread of its own under the scheduler; what
    /// it returns, or its panic, goes into `slot`.
    fn spawn(
        &self,
        client: ClientId,
        transfer: DiffTransfer,
        slot: Arc<Mutex<Option<Ran>>>,
    ) -> JoinHandle<()> {
        let sim = self.sim.clone();
        self.sim.sched.register(client);
        std::thread::Builder::new()
            .name(format!("sim-client-{client}"))
            .spawn(move || {
                sim.sched.enter(client);
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| transfer.run()));
                *lock(&slot) = Some(ran.map_err(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Panicked(what)
                }));
                {
                    let mut st = sim.state();
                    // Its process exits: its connections close.
                    st.clients[client].proc = Proc::Ended;
                }
                sim.sched.leave(client);
            })
            .expect("a thread for a simulated client")
    }

    /// Starts, beside command `c`, a run of a rival command: from the same base to another
    /// of the source's snapshots. It is no part of the chain (nothing waits for it to
    /// complete); what it commits is held to I1 as any snapshot.
    fn start_rival(&mut self, c: usize) {
        let Command { from, end } = self.commands[c];
        let ends: Vec<usize> = (from.map_or(0, |f| f + 1)..SNAPS.len())
            .filter(|&e| e != end)
            .collect();
        if ends.is_empty() {
            return;
        }
        let end = ends[self.rng.below(ends.len() as u64) as usize];
        self.commands.push(Command { from, end });
        self.done.push(true);
        self.attempts.push(0);
        self.clean.push(0);
        self.forced.push(false);
        self.start(self.commands.len() - 1);
    }

    fn live(&self) -> Vec<usize> {
        (0..self.runs.len())
            .filter(|&r| self.runs[r].thread.is_some())
            .collect()
    }

    /// The first command not done, unless one of its runs is live.
    fn next_to_run(&mut self) -> Option<usize> {
        let c = self.done.iter().position(|d| !d)?;
        if self.source_removed.is_some() {
            return None;
        }
        let busy = self.live().iter().any(|&r| self.runs[r].command == c);
        if self.attempts[c] >= FAULTY_RUNS {
            self.faults_until = self.faults_until.min(self.step());
        }
        (!busy && self.clean[c] < CLEAN_RUNS).then_some(c)
    }

    /// Collects the runs whose process ended.
    fn reap(&mut self) {
        for r in 0..self.runs.len() {
            // A thread that left the baton has nothing left to do but return.
            if self.runs[r].thread.is_none() || self.sim.sched.is_live(self.runs[r].client) {
                continue;
            }
            if let Some(thread) = self.runs[r].thread.take() {
                let _ = thread.join();
            }
            let run = &self.runs[r];
            let result = lock(&run.result).take();
            let (client, c, killed) = (run.client, run.command, run.killed);
            match result {
                _ if killed => self.note(format!("client {client} was killed")),
                Some(Err(Panicked(what))) => {
                    self.out
                        .violations
                        .push(format!("client {client} panicked: {what}"));
                    self.faults_until = 0;
                }
                Some(Ok(Ok(stats))) => {
                    self.note(format!(
                        "client {client} ok: resumed {} rechecked {} verified {} fenced {:?}",
                        stats.bytes_resumed,
                        stats.bytes_rechecked,
                        stats.bytes_verified,
                        stats.broke_lock_of
                    ));
                    self.done[c] = true;
                    self.runs[r].ended = Some(Ok(stats));
                }
                Some(Ok(Err(e))) => {
                    self.note(format!("client {client} failed: {:?}: {}", e.kind(), e));
                    match e.kind() {
                        // The end snapshot is there: made by a run before.
                        ErrorKind::Exists if e.snap().is_some() => self.done[c] = true,
                        // What the message advises: --force.
                        ErrorKind::Exists | ErrorKind::DestinationChanged => self.forced[c] = true,
                        _ => {}
                    }
                    self.runs[r].ended = Some(Err((e.kind(), e.to_string())));
                }
                None => self.note(format!("client {client} ended without a result")),
            }
        }
    }

    /// Draws a fault, if it is time for one.
    fn fault(&mut self, parked: &[ClientId]) {
        let step = self.step();
        if step >= self.faults_until || !self.rng.chance(6) {
            return;
        }
        let running: Vec<ClientId> = parked
            .iter()
            .copied()
            .filter(|c| !self.stopped.contains_key(c) && !self.is_killed(*c))
            .collect();
        let pick = |rng: &mut Rng, from: &[ClientId]| -> Option<ClientId> {
            (!from.is_empty()).then(|| from[rng.below(from.len() as u64) as usize])
        };
        self.out.faults += 1;
        match self.rng.below(100) {
            0..=29 => {
                if let Some(c) = pick(&mut self.rng, &running) {
                    self.kill(c);
                }
            }
            30..=44 => {
                if let Some(c) = pick(&mut self.rng, &running) {
                    let until = step + 5 + self.rng.below(80);
                    self.sim.state().clients[c].proc = Proc::Stopped;
                    self.stopped.insert(c, until);
                    self.note(format!("client {c} stopped (SIGSTOP) until step {until}"));
                    // The operator takes it for hung and runs the command again meanwhile.
                    let command = self.runs.iter().find(|r| r.client == c).map(|r| r.command);
                    if let Some(command) = command.filter(|_| self.rng.chance(60)) {
                        self.start(command);
                    }
                }
            }
            45..=52 => {
                if let Some(c) = pick(&mut self.rng, &running) {
                    if let Some(run) = self.runs.iter().find(|r| r.client == c) {
                        run.token.cancel();
                    }
                    self.note(format!("client {c} cancelled"));
                }
            }
            53..=67 => self.foreign_write(false),
            68..=77 => self.foreign_write(true),
            78..=89 => self.expire_watches(),
            90..=91 if !running.is_empty() => self.remove_source_snapshot(),
            _ => {}
        }
    }

    /// Time passes: the watches of killed clients expire.
    fn expire_watches(&mut self) {
        let mut st = self.sim.state();
        let dead: Vec<ClientId> = (0..st.clients.len())
            .filter(|&c| st.clients[c].killed)
            .filter(|&c| st.images.iter().any(|i| i.watchers.contains(&c)))
            .collect();
        for c in &dead {
            st.drop_watches(*c);
        }
        drop(st);
        if !dead.is_empty() {
            self.note(format!("the watches of killed clients {dead:?} expired"));
        }
    }

    fn is_killed(&self, c: ClientId) -> bool {
        self.sim.state().clients[c].killed
    }

    fn kill(&mut self, c: ClientId) {
        {
            let mut st = self.sim.state();
            st.clients[c].killed = true;
            st.clients[c].proc = Proc::Ended;
        }
        self.stopped.remove(&c);
        if let Some(run) = self.runs.iter_mut().find(|r| r.client == c) {
            run.killed = true;
        }
        self.note(format!("client {c} killed (SIGKILL)"));
    }

    /// A write into the destination by another program: through librbd (which needs the
    /// exclusive lock where the image has it) or straight through RADOS.
    fn foreign_write(&mut self, rados: bool) {
        let mut st = self.sim.state();
        let Some(i) = st.find("backups", "dst") else {
            return;
        };
        let size = st.images[i].head.size();
        if size == 0 {
            return;
        }
        let at = self.rng.below(size / BLOCK) * BLOCK;
        let byte = (self.rng.below(200) + 40) as u8;
        let guarded = !rados && st.images[i].lockable;
        if guarded {
            if let Some(owner) = st.images[i].lock {
                let o = &st.clients[owner];
                let alive = !o.killed && o.proc != Proc::Ended && !st.blocklisted(owner);
                if alive {
                    drop(st);
                    self.note("a librbd writer was refused the destination's lock".to_owned());
                    return;
                }
                // librbd breaks a dead owner's lock once its watch expired.
                st.drop_watches(owner);
                if st.blocklist_on_break {
                    st.fence(usize::MAX, owner, true);
                }
                let step = st.step;
                st.events.push(Event::LockBroken {
                    by: usize::MAX,
                    owner,
                    step,
                    fenced_first: true,
                    librbd: true,
                });
                st.images[i].lock = None;
            }
        }
        let epoch = st.next_epoch();
        st.images[i]
            .head
            .write(at, &vec![byte; BLOCK as usize], epoch);
        if !guarded {
            let step = st.step;
            st.events.push(Event::Bypass {
                image: "dst".into(),
                step,
            });
        }
        drop(st);
        self.note(format!(
            "a {} writer wrote {byte:#x} at {at} of the destination",
            if rados { "RADOS" } else { "librbd" }
        ));
    }

    /// `rbd snap rm` of the end snapshot of a command not done yet.
    fn remove_source_snapshot(&mut self) {
        let Some(c) = self.done.iter().position(|d| !d) else {
            return;
        };
        let name = SNAPS[self.commands[c].end];
        let mut st = self.sim.state();
        let Some(i) = st.find("rbd", "src") else {
            return;
        };
        if let Some(k) = st.images[i].snaps.iter().position(|s| s.name == name) {
            let snap = st.images[i].snaps.remove(k);
            st.images[i].removed.push(snap);
            drop(st);
            self.source_removed = Some(c);
            self.note(format!("source snapshot {name} removed"));
        }
    }

    /// Runs the schedule to its end.
    fn run(&mut self) {
        loop {
            let parked: Vec<ClientId> = self.sim.sched.settled().into_iter().collect();
            self.reap();
            let step = self.step();
            if step > STEP_LIMIT {
                self.out.violations.push(format!(
                    "the schedule did not end within {STEP_LIMIT} calls"
                ));
                for c in parked.clone() {
                    self.kill(c);
                }
            }
            if self.live().is_empty() {
                if step >= self.faults_until {
                    // The operator runs the command again later: the watches of killed
                    // clients have expired by then.
                    self.expire_watches();
                }
                match self.next_to_run() {
                    Some(c) => {
                        self.start(c);
                        if step < self.faults_until {
                            match self.rng.below(100) {
                                // The same command started twice at once.
                                0..=14 => self.start(c),
                                // Another transfer from the same base to another snapshot,
                                // at once, into the same destination.
                                15..=22 => self.start_rival(c),
                                _ => {}
                            }
                        }
                    }
                    None => break,
                }
                continue;
            }
            self.fault(&parked);
            // Killed clients run to their end at once: they act on nothing any more.
            if let Some(&c) = parked.iter().find(|&&c| self.is_killed(c)) {
                self.sim.sched.run(c);
                continue;
            }
            let step = self.step();
            let due: Vec<ClientId> = self
                .stopped
                .iter()
                .filter(|&(_, &until)| until <= step || step >= self.faults_until)
                .map(|(&c, _)| c)
                .collect();
            for c in due {
                self.stopped.remove(&c);
                self.sim.state().clients[c].proc = Proc::Running;
                self.note(format!("client {c} continued (SIGCONT)"));
            }
            let runnable: Vec<ClientId> = parked
                .iter()
                .copied()
                .filter(|c| !self.stopped.contains_key(c))
                .collect();
            if runnable.is_empty() {
                // Everyone is stopped: time passes until the first goes on.
                if let Some((&c, _)) = self.stopped.iter().min_by_key(|&(_, &until)| until) {
                    self.stopped.remove(&c);
                    self.sim.state().clients[c].proc = Proc::Running;
                    self.note(format!("client {c} continued (SIGCONT)"));
                }
                continue;
            }
            let c = runnable[self.rng.below(runnable.len() as u64) as usize];
            self.sim.sched.run(c);
        }
    }

    /// The invariants, once the schedule ended.
    fn check(&mut self) {
        let st = self.sim.state();
        self.out.steps = st.step;
        let mut violations = Vec::new();
        let (commits, unprotected) = self.check_i1(&st, &mut violations);
        self.out.commits += commits;
        self.out.unprotected += unprotected;
        self.check_i2(&mut violations);
        self.check_i3(&st, &mut violations);
        self.check_i4(&st, &mut violations);
        if !violations.is_empty() {
            for e in &st.events {
                self.out.trace.push(format!("event {e:?}"));
            }
        }
        drop(st);
        self.out.violations.extend(violations);
    }

    fn run_of(&self, client: ClientId) -> Option<&Run> {
        self.runs.iter().find(|r| r.client == client)
    }

    /// I1, snapshot by snapshot in the order they were made: one is held to it unless a
    /// write bypassed every guard since its base was made (since the image was created, for
    /// a full transfer) and its run did not verify after that write, or its base was not held
    /// to it (an incremental's verification trusts its base). Returns the end snapshots
    /// checked, and those exempt.
    fn check_i1(&self, st: &State, violations: &mut Vec<String>) -> (usize, usize) {
        let src = st.find("rbd", "src").map(|i| &st.images[i]);
        let dst = st.find("backups", "dst").map(|i| &st.images[i]);
        let (Some(src), Some(dst)) = (src, dst) else {
            return (0, 0);
        };
        let (mut commits, mut unprotected) = (0, 0);
        let mut held: BTreeMap<String, (u64, bool)> = BTreeMap::new();
        let made = st.events.iter().filter_map(|e| match e {
            Event::Snapshot { by, name, step, .. } => Some((*by, name.clone(), *step)),
            _ => None,
        });
        for (by, name, at) in made {
            let Some(snap) = dst.snap(&name) else {
                continue;
            };
            commits += 1;
            let Some(origin) = src
                .snaps
                .iter()
                .chain(&src.removed)
                .find(|s| s.name == name)
            else {
                violations.push(format!("I1: {name} is no snapshot of the source"));
                continue;
            };
            let protected = self.protected(st, by, at, &held);
            held.insert(name.clone(), (at, protected));
            if !protected {
                unprotected += 1;
                continue;
            }
            if origin.data.bytes != snap.data.bytes {
                let first = origin
                    .data
                    .bytes
                    .iter()
                    .zip(&snap.data.bytes)
                    .position(|(a, b)| a != b)
                    .map_or(origin.data.size().min(snap.data.size()), |p| p as u64);
                violations.push(format!(
                    "I1: destination snapshot {name} (made by client {by}) differs from the \
                     source's from byte {first} (sizes {} and {})",
                    snap.data.size(),
                    origin.data.size()
                ));
            }
        }
        (commits, unprotected)
    }

    /// Whether the end snapshot that client `by` made at step `at` is held to I1, given
    /// those made before it (`held`: by name, the step it was made at and whether it is).
    fn protected(
        &self,
        st: &State,
        by: ClientId,
        at: u64,
        held: &BTreeMap<String, (u64, bool)>,
    ) -> bool {
        let run = self.run_of(by);
        let base = run.and_then(|r| self.commands[r.command].from);
        let (since, base_held) = match base {
            Some(base) => held.get(SNAPS[base]).copied().unwrap_or((0, false)),
            None => (0, true),
        };
        let last_bypass = st
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Bypass { step, .. } if *step > since && *step < at => Some(*step),
                _ => None,
            })
            .max();
        let verified_after =
            |b: u64| run.is_some_and(|r| r.verify && lock(&r.verified_at).is_some_and(|v| v > b));
        base_held && last_bypass.is_none_or(verified_after)
    }

    /// I2: each command completed, unless its source snapshot was removed.
    fn check_i2(&self, violations: &mut Vec<String>) {
        for (c, done) in self.done.iter().enumerate() {
            let refused = self.source_removed.is_some_and(|r| c >= r);
            if !done && !refused {
                violations.push(format!(
                    "I2: command {c} ({:?}) did not complete in {} runs once the faults \
                     stopped ({} in all)",
                    self.commands[c], self.clean[c], self.attempts[c]
                ));
            }
        }
    }

    /// I3: who was fenced off, and whose lock was broken.
    fn check_i3(&self, st: &State, violations: &mut Vec<String>) {
        for e in &st.events {
            match *e {
                Event::Fenced {
                    by,
                    whom,
                    librbd,
                    state,
                    killed,
                    step,
                    seen,
                    watching,
                } => {
                    let dead = killed || state == Proc::Ended;
                    let violation = if librbd {
                        librbd_fence(st, whom, dead, step)
                    } else {
                        self.protocol_fence(st, (by, whom, step), dead, seen, watching)
                    };
                    violations.extend(violation);
                }
                Event::LockBroken {
                    by,
                    owner,
                    fenced_first: false,
                    librbd: false,
                    step,
                } => {
                    violations.push(format!(
                        "I3: client {by} broke the lock of client {owner} at step {step} before \
                         fencing it off"
                    ));
                }
                _ => {}
            }
        }
    }

    /// What breaks I3 in client `by`'s fencing of client `whom` at `step`, by the protocol:
    /// `dead` says whether `whom` was, `seen` what `by` knew of it, `watching` whether it
    /// watched the image.
    fn protocol_fence(
        &self,
        st: &State,
        (by, whom, step): (ClientId, ClientId, u64),
        dead: bool,
        seen: Seen,
        watching: bool,
    ) -> Option<String> {
        // Fencing a client fenced before changes nothing.
        let before = st.events.iter().any(
            |e| matches!(e, Event::Fenced { whom: w, step: s, .. } if *w == whom && *s < step),
        );
        if before {
            return None;
        }
        // What the fencer knew: it did not answer a notification (or, not watching, could
        // not be asked), and its process was not seen stopped (alive) on this host.
        let answers = !dead
            && (seen.answered == Some(true)
                || seen.process == Some(Proc::Stopped)
                || (watching && seen.answered != Some(false)));
        let repeats = match (self.run_of(by), self.run_of(whom)) {
            (Some(a), Some(b)) => {
                let (ca, cb) = (self.commands[a.command], self.commands[b.command]);
                ca.from == cb.from && (ca.from.is_none() || ca.end >= cb.end)
            }
            _ => false,
        };
        (answers || !repeats).then(|| {
            format!(
                "I3: client {by} fenced client {whom} at step {step}, which {}",
                if answers {
                    "answers"
                } else {
                    "is not its own predecessor"
                }
            )
        })
    }

    /// I4: a run that returned Ok made its end snapshot, and one that returned an error made
    /// none.
    fn check_i4(&self, st: &State, violations: &mut Vec<String>) {
        for run in &self.runs {
            let made = st.events.iter().any(|e| {
                matches!(e, Event::Snapshot { by, name, .. }
                    if *by == run.client && *name == SNAPS[self.commands[run.command].end])
            });
            match &run.ended {
                Some(Ok(_)) if !made => violations.push(format!(
                    "I4: client {} returned Ok but made no end snapshot",
                    run.client
                )),
                Some(Err((kind, message))) if made => violations.push(format!(
                    "I4: client {} made its end snapshot but returned {kind:?}: {message}",
                    run.client
                )),
                _ => {}
            }
        }
    }
}

/// What breaks I3 in librbd's fencing of client `whom` at `step` (`dead` says whether it
/// was): librbd breaks the lock of an owner the protocol fenced first, or of a dead one.
fn librbd_fence(st: &State, whom: ClientId, dead: bool, step: u64) -> Option<String> {
    let fenced_before = st.events.iter().any(|e| {
        matches!(e, Event::Fenced { whom: w, librbd: false, step: s, .. }
            if *w == whom && *s <= step)
    });
    (!dead && !fenced_before)
        .then(|| format!("I3: librbd fenced client {whom}, which lives, at step {step}"))
}

/// Runs the schedule of `seed` and checks the invariants.
pub fn explore(seed: u64) -> Outcome {
    let mut explorer = Explorer::new(seed);
    explorer.run();
    explorer.check();
    explorer.out
}
