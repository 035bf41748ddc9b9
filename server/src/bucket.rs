//! A token bucket: the one rate limit of duet — the server's per-connection message rate and
//! per-client room creations, and the bridge's pace of sending. It fills at a steady rate up to
//! its capacity (the burst it allows); each event takes one token.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket that refills `per_second` tokens a second, up to `capacity`.
    pub fn new(per_second: f64, capacity: f64) -> TokenBucket {
        TokenBucket {
            per_second,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one; else says how long until there is.
    pub fn take(&mut self) -> Result<(), Duration> {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }

    /// Whether the bucket has filled up again: nothing taken lately counts any more.
    pub fn is_full(&self) -> bool {
        self.tokens + self.last.elapsed().as_secs_f64() * self.per_second >= self.capacity
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.capacity);
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_its_capacity_then_says_how_long_to_wait() {
        let mut bucket = TokenBucket::new(2.0, 3.0);
        assert!(bucket.is_full());
        assert!((0..3).all(|_| bucket.take().is_ok()));
        assert!(!bucket.is_full());
        let wait = bucket.take().unwrap_err();
        // One token at 2 a second: at most half a second.
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }
}
