//! The one backoff policy: a wait that doubles with every attempt, from a base up to a cap.
//! Failed polls use it with jitter and let a server's `Retry-After` win
//! ([`BackoffPolicy::after_failure`]); a doubt that keeps coming back uses it for the re-poll
//! mark ([`BackoffPolicy::delay`]).

use chrono::Duration;

/// The longest `Retry-After` honoured for one order: a day.
pub const MAX_RETRY_AFTER: Duration = Duration::hours(24);

/// Waits of `base × 2^attempts`, never longer than `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl BackoffPolicy {
    /// The wait after `attempts` earlier attempts (0: the first wait is `base`).
    pub fn delay(&self, attempts: i64) -> Duration {
        let doublings = attempts.clamp(0, 30) as u32;
        self.base
            .checked_mul(2i32.saturating_pow(doublings))
            .map_or(self.cap, |wait| wait.min(self.cap))
    }

    /// The wait after the `failures`th consecutive failure: [`delay`](Self::delay) times
    /// `jitter` (clamped to [0.5, 1], so orders that failed together do not retry together),
    /// unless the server said how long to wait (`retry_after`, at most [`MAX_RETRY_AFTER`]).
    pub fn after_failure(
        &self,
        failures: i64,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(MAX_RETRY_AFTER);
        }
        let wait = self.delay(failures);
        Duration::milliseconds((wait.num_milliseconds() as f64 * jitter.clamp(0.5, 1.0)) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        base: Duration::seconds(30),
        cap: Duration::minutes(10),
    };

    #[test]
    fn doubles_from_the_base_up_to_the_cap_and_never_overflows() {
        let waits: Vec<i64> = (0..7).map(|n| POLICY.delay(n).num_seconds()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(POLICY.delay(-3), Duration::seconds(30));
        assert_eq!(POLICY.delay(i64::MAX), Duration::minutes(10));
        let huge = BackoffPolicy {
            base: Duration::days(10_000),
            cap: Duration::MAX,
        };
        assert_eq!(huge.delay(40), Duration::MAX);
    }

    #[test]
    fn jitter_shortens_by_at_most_half_and_retry_after_wins_up_to_a_day() {
        assert_eq!(POLICY.after_failure(1, 0.5, None), Duration::seconds(30));
        assert_eq!(POLICY.after_failure(1, 1.0, None), Duration::seconds(60));
        assert_eq!(POLICY.after_failure(1, 0.1, None), Duration::seconds(30));
        assert_eq!(POLICY.after_failure(1, 7.0, None), Duration::seconds(60));
        let asked = Some(Duration::seconds(120));
        assert_eq!(POLICY.after_failure(9, 0.5, asked), Duration::seconds(120));
        let absurd = Some(Duration::days(30));
        assert_eq!(POLICY.after_failure(0, 1.0, absurd), MAX_RETRY_AFTER);
    }
}
