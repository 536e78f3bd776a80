//! Per-connection flood control: a token bucket over every frame a client
//! sends. Time is passed in, so the logic is tested without clocks.

use tokio::time::Instant;

use crate::address::Bucket;
use crate::config::RateConfig;

/// What to do with one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: handle it.
    Allow,
    /// Over the limit: refuse it with `rate_limited`.
    Refuse,
    /// Still flooding after `strikes` refusals in a row: close with 1008.
    Disconnect,
}

/// A token bucket ([`Bucket`]) with a count of refusals in a row.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: u32,
    burst: u32,
    max_strikes: u32,
    bucket: Bucket,
    strikes: u32,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(config: RateConfig, now: Instant) -> Self {
        Self {
            per_sec: config.per_sec,
            burst: config.burst,
            max_strikes: config.strikes,
            bucket: Bucket::full(config.burst, now.into_std()),
            strikes: 0,
        }
    }

    /// Takes one token for a frame arriving at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        if self.bucket.take(self.per_sec, self.burst, now.into_std()) {
            self.strikes = 0;
            Verdict::Allow
        } else {
            self.strikes += 1;
            if self.strikes > self.max_strikes { Verdict::Disconnect } else { Verdict::Refuse }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bucket(now: Instant) -> TokenBucket {
        TokenBucket::new(RateConfig { per_sec: 5, burst: 10, strikes: 3, ..RateConfig::default() }, now)
    }

    #[test]
    fn a_burst_passes_then_frames_are_refused() {
        let t = Instant::now();
        let mut b = bucket(t);
        for i in 0..10 {
            assert_eq!(b.take(t), Verdict::Allow, "frame {i}");
        }
        assert_eq!(b.take(t), Verdict::Refuse);
    }

    #[test]
    fn tokens_refill_at_the_sustained_rate() {
        let t = Instant::now();
        let mut b = bucket(t);
        for _ in 0..10 {
            b.take(t);
        }
        // 5/s: one token every 200 ms.
        assert_eq!(b.take(t + Duration::from_millis(150)), Verdict::Refuse);
        assert_eq!(b.take(t + Duration::from_millis(210)), Verdict::Allow);
        assert_eq!(b.take(t + Duration::from_millis(220)), Verdict::Refuse);
        // A long pause refills only up to the burst.
        let later = t + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(b.take(later), Verdict::Allow);
        }
        assert_eq!(b.take(later), Verdict::Refuse);
    }

    #[test]
    fn a_flood_that_goes_on_is_disconnected() {
        let t = Instant::now();
        let mut b = bucket(t);
        for _ in 0..10 {
            b.take(t);
        }
        assert_eq!(b.take(t), Verdict::Refuse);
        assert_eq!(b.take(t), Verdict::Refuse);
        assert_eq!(b.take(t), Verdict::Refuse);
        assert_eq!(b.take(t), Verdict::Disconnect);
    }

    #[test]
    fn an_accepted_frame_resets_the_strikes() {
        let t = Instant::now();
        let mut b = bucket(t);
        for _ in 0..10 {
            b.take(t);
        }
        assert_eq!(b.take(t), Verdict::Refuse);
        assert_eq!(b.take(t), Verdict::Refuse);
        assert_eq!(b.take(t + Duration::from_millis(250)), Verdict::Allow);
        let t2 = t + Duration::from_millis(250);
        assert_eq!(b.take(t2), Verdict::Refuse);
        assert_eq!(b.take(t2), Verdict::Refuse);
        assert_eq!(b.take(t2), Verdict::Refuse);
        assert_eq!(b.take(t2), Verdict::Disconnect);
    }
}
