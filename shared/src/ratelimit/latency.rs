//! The latency watch: tells a registry that is slowing down sharply from one that is just
//! far away or jittery, from the latencies of its small requests (one [`LatencyWatch`] per
//! registry and operation, kept by the gate in this process). It only says how long to hold
//! off; `hold.rs` tells the fleet. Pure arithmetic on samples, so it is tested with none of
//! the rest.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many recent small requests the slowdown test looks at.
const RECENT: usize = 8;

/// One registry's recent latencies, against its usual one.
#[derive(Debug, Default)]
pub(super) struct LatencyWatch {
    /// The usual latency: the lowest seen, drifting slowly up to what is now normal.
    floor_ms: Option<f64>,
    recent: VecDeque<f64>,
    last_block: Option<Instant>,
}

impl LatencyWatch {
    /// Takes one latency; when the median of the recent ones is four times the usual latency
    /// and at least 250 ms above it, says how long the fleet should hold off (the excess,
    /// at most five seconds; at most once every five seconds).
    pub(super) fn sample(&mut self, elapsed: Duration, now: Instant) -> Option<Duration> {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let floor = match self.floor_ms {
            Some(f) if ms < f => ms,
            Some(f) => f + (ms - f) * 0.01,
            None => ms,
        };
        self.floor_ms = Some(floor);
        self.recent.push_back(ms);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        if self.recent.len() < RECENT {
            return None;
        }
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[RECENT / 2];
        let quiet = self
            .last_block
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5));
        if median >= 4.0 * floor && median - floor >= 250.0 && quiet {
            self.last_block = Some(now);
            return Some(Duration::from_millis((median - floor).min(5000.0) as u64));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(w: &mut LatencyWatch, ms: u64, n: usize, now: Instant) -> Vec<Duration> {
        (0..n)
            .filter_map(|_| w.sample(Duration::from_millis(ms), now))
            .collect()
    }

    #[test]
    fn a_sharp_slowdown_holds_the_fleet_back_once_then_waits() {
        let mut w = LatencyWatch::default();
        let t0 = Instant::now();
        assert!(feed(&mut w, 20, 50, t0).is_empty(), "steady: nothing");
        let holds = feed(&mut w, 600, RECENT, t0);
        assert_eq!(holds.len(), 1, "{holds:?}");
        assert!(holds[0] >= Duration::from_millis(500) && holds[0] <= Duration::from_millis(600));
        assert!(
            feed(&mut w, 600, RECENT, t0).is_empty(),
            "not again at once"
        );
        let later = t0 + Duration::from_secs(6);
        assert_eq!(feed(&mut w, 600, 1, later).len(), 1, "again after 5 s");
    }

    #[test]
    fn jitter_and_a_slow_but_steady_registry_are_left_alone() {
        let mut w = LatencyWatch::default();
        let t0 = Instant::now();
        // A few slow answers among fast ones do not move the median.
        for i in 0..100 {
            let ms = if i % 4 == 0 { 900 } else { 30 };
            assert!(w.sample(Duration::from_millis(ms), t0).is_none());
        }
        // A registry that is always 400 ms away is not slowing down.
        let mut w = LatencyWatch::default();
        assert!(feed(&mut w, 400, 100, t0).is_empty());
        // Small absolute rises (10 → 60 ms) are not worth holding anyone for.
        let mut w = LatencyWatch::default();
        feed(&mut w, 10, 20, t0);
        assert!(feed(&mut w, 60, 20, t0).is_empty());
    }
}
