//! When a failed delivery is tried again, and when it is parked: the daemon's one backoff
//! policy ([`BackoffPolicy`]: doubling from `base` to `cap`, jittered, a receiver's
//! `Retry-After` winning), bounded by `give_up_after` from the delivery's first attempt.

use chrono::{DateTime, Duration, Utc};

use crate::backoff::BackoffPolicy;

/// A destination's retry schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub backoff: BackoffPolicy,
    /// How long after its first attempt a delivery is given up on (parked).
    pub give_up_after: Duration,
}

impl RetryPolicy {
    /// 10 s doubling to an hour; parked after 3 days.
    pub const DEFAULT: Self = Self {
        backoff: BackoffPolicy {
            base: Duration::seconds(10),
            cap: Duration::hours(1),
        },
        give_up_after: Duration::days(3),
    };
}

/// What becomes of a delivery after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Past `give_up_after`: parked until an operator retries or skips it.
    Park,
}

impl RetryPolicy {
    /// After the `failures`th failed attempt (1 for the first) of a delivery first tried at
    /// `first_attempt`, failing at `now`: the next try, jittered (`jitter` in [0.5, 1]) or at
    /// the receiver's `retry_after`, but never later than the give-up time, which is tried
    /// once more; at or past it, [`Next::Park`].
    pub fn after_failure(
        &self,
        failures: i64,
        first_attempt: DateTime<Utc>,
        now: DateTime<Utc>,
        retry_after: Option<std::time::Duration>,
        jitter: f64,
    ) -> Next {
        let give_up_at = first_attempt + self.give_up_after;
        if now >= give_up_at {
            return Next::Park;
        }
        let asked = retry_after.and_then(|wait| Duration::from_std(wait).ok());
        let wait = self
            .backoff
            .after_failure(failures.saturating_sub(1), jitter, asked);
        Next::RetryAt((now + wait).min(give_up_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn retries_double_with_jitter_honour_retry_after_and_park_at_the_give_up_time() {
        let policy = RetryPolicy::DEFAULT;
        let first = at(0);
        let waits: Vec<i64> = (1..=11)
            .map(
                |failures| match policy.after_failure(failures, first, at(100), None, 1.0) {
                    Next::RetryAt(next) => (next - at(100)).num_seconds(),
                    Next::Park => -1,
                },
            )
            .collect();
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600],
            "doubling from 10 s to the hour"
        );
        assert_eq!(
            policy.after_failure(1, first, at(100), None, 0.5),
            Next::RetryAt(at(105)),
            "jitter shortens the wait, by half at most"
        );
        let asked = Some(std::time::Duration::from_secs(600));
        assert_eq!(
            policy.after_failure(1, first, at(100), asked, 1.0),
            Next::RetryAt(at(700)),
            "the receiver's Retry-After wins"
        );
        let give_up = 3 * 24 * 3600;
        assert_eq!(
            policy.after_failure(9, first, at(give_up - 60), None, 1.0),
            Next::RetryAt(at(give_up)),
            "a last try at the give-up time"
        );
        assert_eq!(
            policy.after_failure(10, first, at(give_up), None, 1.0),
            Next::Park
        );
    }
}
