//! A token bucket of stratus's own, for the calls a whole class makes at once. EC2 keeps a
//! bucket per action per account (its documented example: 100 calls, refilled at 20 a second);
//! a call finding it empty is throttled, and the SDK's adaptive retry then slows every later
//! call of that action, the more so the more calls were throttled at once. A class service
//! whose 40 launches wait together asks for 840 consoles in one round: without a pace of its
//! own it drains GetConsoleOutput's bucket at once, hundreds of calls are throttled, and the
//! SDK's rate for the action falls to its floor (half a call a second) for minutes
//! (`scripts/bench-class`, BENCHMARKS.md). Spending at most `burst` at once and then `per_sec`
//! a second, under EC2's refill, the calls are spread instead of refused.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(super) struct Bucket {
    burst: f64,
    per_sec: f64,
    /// Tokens (below zero: reserved by callers still waiting), as of when.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub(super) fn new(burst: u32, per_sec: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(per_sec.max(1)),
            state: Mutex::new((f64::from(burst.max(1)), Instant::now())),
        }
    }

    /// How long the caller must wait for its token. Each caller reserves the next token in
    /// turn, so callers are served in the order they asked and none is woken for nothing.
    fn reserve(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = *state;
        // Another caller may have read the clock later but locked first.
        let now = now.max(at);
        let refilled = tokens + now.duration_since(at).as_secs_f64() * self.per_sec;
        let left = refilled.min(self.burst) - 1.0;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.per_sec)
        }
    }

    /// Waits for a token.
    pub(super) async fn take(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_each_call_waits_its_turn_at_the_rate() {
        let b = Bucket::new(3, 10);
        let t0 = Instant::now();
        // The burst: no wait.
        for _ in 0..3 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        // Then 100 ms apart, each after the one reserved before it.
        let waits: Vec<Duration> = (0..3).map(|_| b.reserve(t0)).collect();
        let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
        assert_eq!(ms, [100, 200, 300]);
        // Two seconds later the reservations are paid and the bucket is full again, never
        // fuller than the burst.
        let later = t0 + Duration::from_secs(2);
        for _ in 0..3 {
            assert_eq!(b.reserve(later), Duration::ZERO);
        }
        assert_eq!(b.reserve(later).as_millis(), 100);
    }

    #[test]
    fn take_waits_for_the_token() {
        let b = Bucket::new(1, 20);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let t0 = Instant::now();
        rt.block_on(async {
            for _ in 0..3 {
                b.take().await;
            }
        });
        // One at once, then two at 50 ms each: it cannot have taken less.
        assert!(
            t0.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
    }
}
