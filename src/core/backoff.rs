//! A backoff for a wait outside the async runtime: pauses that start short and double up to a
//! ceiling, never running past a deadline.

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
