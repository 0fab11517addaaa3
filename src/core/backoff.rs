//! The one backoff every wait of stratus uses: pauses that start short and double up to a
//! ceiling, with optional jitter (so a class of launches polling at once spreads out instead of
//! arriving together), never running past a deadline.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    /// Each pause is lengthened by a random part of itself, up to this many thousandths.
    jitter_per_mille: u32,
    deadline: Option<Instant>,
}

impl Backoff {
    /// Pauses from `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first.min(max),
            max,
            jitter_per_mille: 0,
            deadline: None,
        }
    }

    /// Each pause lengthened by up to `per_mille` thousandths of itself, at random: with a
    /// ceiling of 10 s and 500, pauses settle between 10 and 15 s.
    pub fn jitter(mut self, per_mille: u32) -> Self {
        self.jitter_per_mille = per_mille;
        self
    }

    /// No pause ends after `deadline`.
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The next pause, cut short at the deadline; `None` once the deadline has passed.
    pub fn next_pause(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut pause = base + self.jitter_of(base);
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            pause = pause.min(left);
        }
        Some(pause)
    }

    /// Whether a full next pause would still end before the deadline (a caller that gives up
    /// rather than try once more with less time than it needs).
    pub fn room_for_another(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() + self.next < d)
    }

    fn jitter_of(&self, base: Duration) -> Duration {
        if self.jitter_per_mille == 0 {
            return Duration::ZERO;
        }
        use rand::RngExt;
        let k: u32 = rand::rng().random_range(0..=self.jitter_per_mille);
        base * k / 1000
    }

    /// Sleeps the next pause; `false` (at once) if the deadline has passed.
    pub async fn wait(&mut self) -> bool {
        match self.next_pause() {
            Some(p) => {
                tokio::time::sleep(p).await;
                true
            }
            None => false,
        }
    }

    /// `wait`, for a thread outside the async runtime.
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
    fn jitter_only_lengthens_and_stays_within_its_bound() {
        let mut b = Backoff::new(10 * MS, 10 * MS).jitter(500);
        let pauses: Vec<Duration> = (0..200).map(|_| b.next_pause().unwrap()).collect();
        assert!(
            pauses.iter().all(|p| (10 * MS..=15 * MS).contains(p)),
            "{pauses:?}"
        );
        // 200 draws of 501 values: not all the same.
        assert!(pauses.iter().any(|p| *p != pauses[0]), "no jitter at all");
    }

    #[test]
    fn no_pause_runs_past_the_deadline() {
        let deadline = Instant::now() + 50 * MS;
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).until(deadline);
        assert!(!b.room_for_another());
        let p = b.next_pause().unwrap();
        assert!(p <= 50 * MS, "{p:?}");
        std::thread::sleep(60 * MS);
        assert!(b.expired());
        assert_eq!(b.next_pause(), None);
        assert!(!b.wait_blocking());
    }
}
