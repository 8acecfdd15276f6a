//! The bandwidth cap (`--max-bandwidth`): paces a byte stream to a rate, token-bucket style.
//!
//! The bucket holds at most a tenth of a second of traffic, so a pause in the transfer does not
//! build up a burst that would exceed the cap afterwards.

use std::time::Duration;

use tokio::time::Instant;

/// Paces bytes to `rate` bytes per second.
#[derive(Debug)]
pub struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    pub fn new(rate: u64) -> Throttle {
        let rate = rate.max(1) as f64;
        Throttle {
            rate,
            burst: rate / 10.0,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Takes `n` bytes from the bucket, sleeping until they have been earned.
    pub async fn take(&mut self, n: usize) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst) - n as f64;
        self.last = now;
        if self.tokens < 0.0 {
            // Going into debt and sleeping it off keeps the average exact for any chunk size.
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / self.rate)).await;
            self.last = Instant::now();
            self.tokens = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_the_average_rate() {
        // 200 KB at 1 MB/s: 0.2 s, whatever the chunk size.
        let mut throttle = Throttle::new(1_000_000);
        let start = Instant::now();
        for _ in 0..20 {
            throttle.take(10_000).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        // Generous: a loaded CI box oversleeps, but not by ten times.
        assert!(took <= Duration::from_secs(2), "{took:?}");
    }
}
