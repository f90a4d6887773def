//! A cap on the bytes per second read by one transfer, or by every transfer of a batch
//! together: a token bucket on the monotonic clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::locks::lock;

/// The schedule of a rate limit, on a clock given to it (seconds since an origin): a token
/// bucket of `burst` bytes filled at `rate` bytes per second, which may go into debt for a
/// draw larger than what it holds. In the form of the generic cell rate algorithm: `tat` is
/// the time at which the bucket would be full again.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    rate: f64,
    /// Seconds the burst lasts at the rate.
    tau: f64,
    tat: f64,
}

impl Schedule {
    /// `rate` bytes per second (at least 1), `burst` bytes at most at once after a pause.
    pub(crate) fn new(rate: u64, burst: u64) -> Schedule {
        let rate = rate.max(1) as f64;
        Schedule {
            rate,
            tau: burst as f64 / rate,
            tat: f64::NEG_INFINITY,
        }
    }

    /// Reserves `bytes` at time `now`: returns how long to wait before using them (0 when
    /// they may be used at once). The bytes may go once the bucket holds them, or, when there
    /// are more of them than it holds, once it is full: it then goes into debt, which the
    /// next reservations wait for. Reservations are served in the order they are made, so
    /// every caller gets its turn.
    pub(crate) fn reserve(&mut self, now: f64, bytes: u64) -> f64 {
        let need = (bytes as f64 / self.rate).min(self.tau);
        let wait = (self.tat - now - self.tau + need).max(0.0);
        self.tat = self.tat.max(now + wait) + bytes as f64 / self.rate;
        wait
    }
}

/// A cap on the bytes per second read by one transfer, or by every transfer of a batch
/// together: a token bucket (see [`Schedule`]) on the monotonic clock.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: u64,
    origin: Instant,
    schedule: Mutex<Schedule>,
}

/// The burst of a rate limit: what it lets through at once after a pause, 50 ms at the rate,
/// at least 64 KiB.
fn burst(rate: u64) -> u64 {
    (rate / 20).max(64 << 10)
}

impl RateLimit {
    /// A cap of `bytes_per_sec` (at least 1).
    pub(crate) fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            rate: bytes_per_sec,
            origin: Instant::now(),
            schedule: Mutex::new(Schedule::new(bytes_per_sec, burst(bytes_per_sec))),
        }
    }

    /// The cap, in bytes per second.
    pub(crate) fn rate(&self) -> u64 {
        self.rate
    }

    /// Reserves `bytes`: the instant from which they may be read.
    pub(crate) fn reserve(&self, bytes: u64) -> Instant {
        let now = Instant::now();
        let since = now.saturating_duration_since(self.origin).as_secs_f64();
        let wait = lock(&self.schedule).reserve(since, bytes);
        now + Duration::from_secs_f64(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_holds_the_rate_with_a_burst_after_a_pause() {
        // 1000 bytes/s, a burst of 100 bytes.
        let mut s = Schedule::new(1000, 100);
        // At the start a burst is let through at once.
        assert!(s.reserve(10.0, 100) < 1e-9);
        // Then each 100 bytes wait 0.1 s more than the previous ones.
        let w = s.reserve(10.0, 100);
        assert!((w - 0.1).abs() < 1e-9, "{w}");
        let w = s.reserve(10.0, 100);
        assert!((w - 0.2).abs() < 1e-9, "{w}");
        // Taken on time, 1000 bytes need a second: the rate holds over any run.
        let mut now = 10.3;
        let mut sent = 0;
        while now < 20.3 {
            let w = s.reserve(now, 50);
            now += w;
            sent += 50;
        }
        let rate = sent as f64 / 10.0;
        assert!((rate - 1000.0).abs() <= 15.0, "{rate}");
        // After a long pause, no more than the burst goes at once.
        let mut now = 100.0;
        assert!(s.reserve(now, 60) < 1e-9);
        assert!(s.reserve(now, 40) < 1e-9);
        let w = s.reserve(now, 10);
        assert!((w - 0.01).abs() < 1e-9, "{w}");
        // A draw larger than the burst goes when the bucket is full, into debt that the next
        // draws wait for.
        now = 200.0;
        assert!(s.reserve(now, 1000) < 1e-9);
        let w = s.reserve(now, 100);
        assert!((w - 1.0).abs() < 1e-9, "{w}");
    }

    #[test]
    fn reservations_are_served_in_turn() {
        let mut s = Schedule::new(100, 10);
        let waits: Vec<f64> = (0..5).map(|_| s.reserve(0.0, 10)).collect();
        for (k, w) in waits.iter().enumerate() {
            assert!((w - 0.1 * k as f64).abs() < 1e-9, "{waits:?}");
        }
    }
}
