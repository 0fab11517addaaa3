//! Pauses between tries. `Backoff`: pauses that start short and double up to a ceiling, never
//! running past a deadline. `Pace`: the pauses of a wait loop that polls a shared service (EC2's
//! API, a node's SSH), a few quick looks and then a random pause in a window, so that the
//! launches of a whole class neither poll in step nor faster than the window.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Option<Instant>,
}

impl Backoff {
    /// Pauses from `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first.min(max),
            max,
            deadline: None,
        }
    }

    /// No pause ends after `deadline`.
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The next pause, cut short at the deadline; `None` once the deadline has passed.
    pub fn next_pause(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut pause = base;
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            pause = pause.min(left);
        }
        Some(pause)
    }

    /// Sleeps the next pause (a thread outside the async runtime); `false` (at once) if the
    /// deadline has passed.
    pub fn wait_blocking(&mut self) -> bool {
        match self.next_pause() {
            Some(p) => {
                std::thread::sleep(p);
                true
            }
            None => false,
        }
    }
}

/// The pauses of a polling wait: `early` first (what a fast node or moto answers within), then
/// each a uniformly random pause in `window`, cut short at the deadline.
#[derive(Debug, Clone)]
pub struct Pace {
    early: &'static [Duration],
    taken: usize,
    window: (Duration, Duration),
}

/// 1 s, 2 s, 4 s: the first few seconds.
const EARLY: &[Duration] = &[
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

impl Pace {
    /// The waits of a launch: 1, 2 and 4 s, then every 10 to 15 s.
    pub fn polling() -> Self {
        Self {
            early: EARLY,
            taken: 0,
            window: (Duration::from_secs(10), Duration::from_secs(15)),
        }
    }

    /// The next pause, never past `deadline`: zero once it has passed.
    pub fn next_until(&mut self, deadline: std::time::Instant) -> Duration {
        self.next()
            .min(deadline.saturating_duration_since(std::time::Instant::now()))
    }

    /// The next pause.
    #[allow(clippy::should_implement_trait)] // Never ends, and is not an iterator of values.
    pub fn next(&mut self) -> Duration {
        if let Some(p) = self.early.get(self.taken) {
            self.taken += 1;
            return *p;
        }
        let (lo, hi) = self.window;
        let ms = rand::random_range(lo.as_millis() as u64..=hi.as_millis() as u64);
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_double_up_to_the_ceiling() {
        let mut b = Backoff::new(100 * MS, 500 * MS);
        let pauses: Vec<Duration> = (0..5).map(|_| b.next_pause().unwrap()).collect();
        assert_eq!(pauses, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
    }

    #[test]
    fn a_pace_looks_early_then_in_its_window_never_in_step() {
        let mut p = Pace::polling();
        let early: Vec<Duration> = (0..3).map(|_| p.next()).collect();
        assert_eq!(early, EARLY);
        let later: Vec<Duration> = (0..200).map(|_| p.next()).collect();
        for d in &later {
            assert!(
                (Duration::from_secs(10)..=Duration::from_secs(15)).contains(d),
                "{d:?}"
            );
        }
        // Jitter: two hundred pauses are not all one value.
        let distinct: std::collections::BTreeSet<_> = later.iter().collect();
        assert!(distinct.len() > 50, "{} distinct pauses", distinct.len());
        let soon = Instant::now() + 20 * MS;
        assert!(p.next_until(soon) <= 20 * MS);
    }

    #[test]
    fn no_pause_runs_past_the_deadline() {
        let deadline = Instant::now() + 50 * MS;
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).until(deadline);
        let p = b.next_pause().unwrap();
        assert!(p <= 50 * MS, "{p:?}");
        std::thread::sleep(60 * MS);
        assert_eq!(b.next_pause(), None);
        assert!(!b.wait_blocking());
    }
}
