//! Rate limit for log lines a guest can trigger at will (malformed descriptor chains, dropped
//! frames): at most one line per interval for each reason, and each line carries how many
//! events were kept quiet since the previous one, so a hostile guest cannot flood the host's
//! logs and nothing goes uncounted.

use std::time::{Duration, Instant};

/// Least time between two lines for the same reason.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Decides, for one reason, which events get a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimiter {
    interval: Duration,
    last_line: Option<Instant>,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(LOG_INTERVAL)
    }
}

impl LogLimiter {
    /// A limiter allowing one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_line: None,
            suppressed: 0,
        }
    }

    /// Counts one event at `now`. `Some(n)`: write a line now, saying that `n` more events
    /// happened (unlogged) since the previous line. `None`: stay quiet.
    pub fn event(&mut self, now: Instant) -> Option<u64> {
        match self.last_line {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last_line = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn one_line_per_interval_carrying_the_suppressed_count() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(10 * SEC);
        assert_eq!(l.event(t0), Some(0), "the first event is logged");
        for i in 1..=5 {
            assert_eq!(l.event(t0 + i * SEC), None, "event at +{i}s");
        }
        // Just short of the interval: still quiet.
        assert_eq!(l.event(t0 + 10 * SEC - Duration::from_nanos(1)), None);
        assert_eq!(
            l.event(t0 + 10 * SEC),
            Some(6),
            "six kept quiet since the first line"
        );
        assert_eq!(l.event(t0 + 11 * SEC), None);
        // A long pause: the next event is logged with the one quiet event before it.
        assert_eq!(l.event(t0 + 100 * SEC), Some(1));
        assert_eq!(l.event(t0 + 200 * SEC), Some(0));
    }

    #[test]
    fn a_clock_going_backwards_keeps_it_quiet_and_does_not_panic() {
        let t0 = Instant::now() + 100 * SEC;
        let mut l = LogLimiter::new(10 * SEC);
        assert_eq!(l.event(t0), Some(0));
        assert_eq!(l.event(t0 - 50 * SEC), None);
        assert_eq!(l.event(t0 + 10 * SEC), Some(1));
    }

    #[test]
    fn a_zero_interval_logs_every_event() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(l.event(t0), Some(0));
        }
    }
}
