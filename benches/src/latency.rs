//! The latency rig: a user-space delay proxy between the clients and the OSDs, and the
//! `LD_PRELOAD` shim (`benches/latency/shim.c`) that sends the clients' connections to it.
//!
//! The machines this runs on have no kernel traffic shaping, so the delay is added in user
//! space. The proxy listens on one local port per OSD address; for each connection it accepts
//! it opens one to the real OSD and forwards both directions, each chunk released half the
//! round-trip delay after it was read, so that a request and its reply cost one round trip.
//! Nothing caps the bandwidth: reading never waits for the delayed writes. Only the traffic
//! between clients and OSDs is delayed; the monitor's is not.
//!
//! The proxy runs as a child process of the benchmark ([`PROXY_CMD`]), so that its CPU time
//! is its own and can be reported next to the clients'.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rbd_diffsync_tests::TestCluster;

/// First argument that makes the benchmark binary run the proxy:
/// `PROXY_CMD DELAY_US TARGET...`.
pub const PROXY_CMD: &str = "__latency-proxy";
/// The shim's variable: `ip:port=ip:port,...`, from the OSD's address to the proxy's.
pub const MAP_VAR: &str = "RBD_DIFFSYNC_LAT_MAP";

/// Largest chunk read at once.
const CHUNK: usize = 256 * 1024;

/// Forwards connections accepted on `listener` to `target`, delaying each direction by `half`.
pub fn serve(listener: TcpListener, target: SocketAddr, half: Duration, bytes: Arc<AtomicU64>) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let bytes = Arc::clone(&bytes);
        thread::spawn(move || {
            if let Err(e) = connection(client, target, half, bytes) {
                eprintln!("latency proxy: connection to {target}: {e}");
            }
        });
    }
}

fn connection(
    client: TcpStream,
    target: SocketAddr,
    half: Duration,
    bytes: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(target)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let up_bytes = Arc::clone(&bytes);
    thread::spawn(move || pump(c2, s2, half, &up_bytes));
    pump(server, client, half, &bytes);
    Ok(())
}

/// Copies `from` to `to`, each chunk written `half` after it was read. A reader thread (this
/// one) never waits for the writer, so the delay adds latency and no bandwidth limit.
fn pump(from: TcpStream, to: TcpStream, half: Duration, bytes: &AtomicU64) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let Ok(from_again) = from.try_clone() else {
        return;
    };
    let writer = thread::spawn(move || {
        let mut to = to;
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                // The peer is gone: stop reading from the other side too.
                let _ = from_again.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut from = from;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if tx.send((Instant::now() + half, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// The proxy's process: `DELAY_US TARGET...`. Prints `TARGET=LISTEN` per target and then
/// `ready`; runs until its stdin closes, then prints the bytes it forwarded to stderr.
pub fn proxy_child(args: Vec<String>) -> i32 {
    let Some((delay, targets)) = args.split_first() else {
        eprintln!("usage: {PROXY_CMD} DELAY_US TARGET...");
        return 2;
    };
    let Ok(delay_us) = delay.parse::<u64>() else {
        eprintln!("{PROXY_CMD}: bad delay {delay}");
        return 2;
    };
    // Sleeps end within a few microseconds of their due time rather than the default 50.
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let half = Duration::from_micros(delay_us) / 2;
    let bytes = Arc::new(AtomicU64::new(0));
    let mut out = std::io::stdout().lock();
    for target in targets {
        let Ok(addr) = target.parse::<SocketAddr>() else {
            eprintln!("{PROXY_CMD}: bad address {target}");
            return 2;
        };
        let listener = match TcpListener::bind(("127.0.0.1", 0)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{PROXY_CMD}: bind: {e}");
                return 1;
            }
        };
        let local = listener.local_addr().expect("bound");
        let _ = writeln!(out, "{addr}={local}");
        let bytes = Arc::clone(&bytes);
        thread::spawn(move || serve(listener, addr, half, bytes));
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    eprintln!(
        "latency proxy: {} bytes forwarded",
        bytes.load(Ordering::Relaxed)
    );
    0
}

/// The public addresses (v2 and v1) of every OSD of the cluster.
pub fn osd_addrs(cluster: &TestCluster) -> Vec<SocketAddr> {
    let dump: serde_json::Value =
        serde_json::from_str(&cluster.ceph(&["osd", "dump", "--format", "json"]))
            .expect("osd dump is JSON");
    let mut addrs = Vec::new();
    for osd in dump["osds"].as_array().into_iter().flatten() {
        for a in osd["public_addrs"]["addrvec"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(addr) = a["addr"].as_str().and_then(|s| s.parse().ok()) {
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
    }
    assert!(!addrs.is_empty(), "no OSD address in `ceph osd dump`");
    addrs
}

/// Builds the shim from its source next to the benchmark's sources with gcc, into `dir`.
pub fn build_shim(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("latency/shim.c");
    let so = dir.join("rbd-diffsync-latency-shim.so");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("gcc runs (apt-get install gcc)");
    assert!(status.success(), "gcc failed to build {}", src.display());
    so
}

/// A running proxy and what its clients need to go through it.
#[derive(Debug)]
pub struct Rig {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Environment for the clients: `LD_PRELOAD` and the shim's map.
    pub env: Vec<(String, String)>,
}

impl Rig {
    /// Starts the proxy in front of every OSD of `cluster`, adding `delay_ms` of round trip.
    pub fn start(cluster: &TestCluster, shim: &Path, delay_ms: f64) -> Rig {
        let targets: Vec<String> = osd_addrs(cluster).iter().map(|a| a.to_string()).collect();
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .arg(PROXY_CMD)
            .arg(((delay_ms * 1000.0).round() as u64).to_string())
            .args(&targets)
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the benchmark binary runs itself");
        let stdin = child.stdin.take();
        let mut routes = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        loop {
            let line = lines
                .next()
                .expect("the proxy says it is ready")
                .expect("read the proxy's output");
            if line == "ready" {
                break;
            }
            routes.push(line);
        }
        Rig {
            child,
            stdin,
            env: vec![
                ("LD_PRELOAD".into(), shim.display().to_string()),
                (MAP_VAR.into(), routes.join(",")),
            ],
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the proxy (closing its stdin) and waits for it.
    pub fn stop(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) process `pid` has used so far, from /proc/PID/stat.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends with the last ')': state is field 3, utime
    // and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) as f64 / ticks.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy: the bytes come back intact, and each round trip takes
    /// at least the delay.
    #[test]
    fn the_proxy_forwards_every_byte_after_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        thread::spawn(move || {
            for s in echo.incoming() {
                let mut s = s.unwrap();
                let mut r = s.try_clone().unwrap();
                thread::spawn(move || {
                    let _ = std::io::copy(&mut r, &mut s);
                });
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_addr = front.local_addr().unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        let delay = Duration::from_millis(20);
        let counted = Arc::clone(&bytes);
        thread::spawn(move || serve(front, echo_addr, delay / 2, counted));

        let mut s = TcpStream::connect(front_addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut reply = [0u8; 4];
        for i in 0..3u32 {
            let started = Instant::now();
            s.write_all(&i.to_be_bytes()).unwrap();
            s.read_exact(&mut reply).unwrap();
            assert_eq!(reply, i.to_be_bytes());
            let rtt = started.elapsed();
            assert!(rtt >= delay, "round trip {rtt:?} is shorter than {delay:?}");
            assert!(rtt < delay * 5, "round trip {rtt:?} is far above {delay:?}");
        }
        // A large burst arrives whole: about 1 round trip, not one per chunk.
        let big: Vec<u8> = (0..8 << 20).map(|i: u32| (i * 7) as u8).collect();
        let started = Instant::now();
        let mut w = s.try_clone().unwrap();
        let sent = big.clone();
        let writer = thread::spawn(move || w.write_all(&sent).unwrap());
        let mut back = vec![0u8; big.len()];
        s.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == big, "the burst came back altered");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "8 MiB took {:?}",
            started.elapsed()
        );
        assert_eq!(bytes.load(Ordering::Relaxed), 2 * (12 + big.len() as u64));
    }

    #[test]
    fn cpu_of_this_process_is_read() {
        assert!(cpu_secs(std::process::id()).is_some());
    }
}
