//! The rate of a client's commands (spec §8 `client_rate`, `client_burst`): a token bucket,
//! `rate` tokens a second, at most `burst` saved up. Past it a command is refused with
//! `rate_limited` and the connection lives.

use std::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// `None` when `rate` is 0 (no limit). A burst of 0 means one second's worth.
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Option<Box<Bucket>> {
        if rate == 0 {
            return None;
        }
        let burst = f64::from(if burst == 0 { rate } else { burst });
        Some(Box::new(Bucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }))
    }

    /// Takes a token for one command; false when there is none.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(10, 3, t0).unwrap();
        assert!((0..3).all(|_| bucket.take(t0)), "the burst");
        assert!(!bucket.take(t0), "then nothing at once");
        assert!(
            bucket.take(t0 + Duration::from_millis(100)),
            "a tenth of a second: one"
        );
        assert!(!bucket.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert!(
            (0..3).all(|_| bucket.take(later)),
            "saved up to the burst only"
        );
        assert!(!bucket.take(later));
        assert!(Bucket::new(0, 5, t0).is_none(), "no limit");
    }
}
