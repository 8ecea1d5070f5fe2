//! What the two property tests of the ordering rule draw alike: `ordering_props` (the pure rule)
//! and `rule_through_sqlite` (the rule through the store). One definition, so both explore the
//! same statuses and the same poll read times.

use orderwatch::observation::Status;
use proptest::prelude::*;

/// Any status an item can have: the six documented ones and an undocumented one.
pub fn any_status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Pending),
        Just(Status::Ok),
        Just(Status::Ko),
        Just(Status::RefundStarted),
        Just(Status::Refunded),
        Just(Status::CancellationError),
        Just(Status::Other("ON_HOLD".into())),
    ]
}

/// When a poll reads Musement, drawn independently of the history and resolved against it
/// ([`ReadAt::resolve`]).
#[derive(Debug, Clone)]
pub enum ReadAt {
    /// Within a second of some version's time (where ties and the lag matter), not before the
    /// first version's.
    NearVersion(prop::sample::Index, i64),
    /// Anywhere from the first version's time to a minute after the last, as millionths of
    /// that span.
    Anywhere(i64),
}

impl ReadAt {
    /// The read time, in ms, against a history whose versions' times are `times_ms` (in
    /// version order, never empty).
    pub fn resolve(&self, times_ms: &[i64]) -> i64 {
        let first_ms = times_ms[0];
        let last_ms = times_ms[times_ms.len() - 1];
        match self {
            Self::NearVersion(index, offset_ms) => (index.get(times_ms) + offset_ms).max(first_ms),
            Self::Anywhere(millionths) => {
                first_ms + (last_ms + 60_000 - first_ms) * millionths / 1_000_000
            }
        }
    }
}

/// A [`ReadAt`].
pub fn read_at() -> impl Strategy<Value = ReadAt> {
    prop_oneof![
        (any::<prop::sample::Index>(), -1000i64..=1000)
            .prop_map(|(index, offset)| ReadAt::NearVersion(index, offset)),
        (0i64..=1_000_000).prop_map(ReadAt::Anywhere),
    ]
}
