//! The reconciler's request-rate ceiling at its default, `max_requests_per_second = 5` (every
//! other reconciler test turns it off): across concurrent polls, GETs reach Musement at least
//! 200 ms apart. Spacing is measured where the fake API received them; the bounds leave room
//! for a loaded machine delaying one request, and a ceiling needs no upper bound.

use std::time::Duration;

use crate::helpers::api::harness_on;
use crate::helpers::fake_musement::{
    APPLICATION, CLIENT_ID, CLIENT_SECRET, FakeMusement, new_uuid, order_json,
};

/// The spacing the default rate asks for.
const GAP: Duration = Duration::from_millis(200);

/// How much closer than [`GAP`] two requests may arrive: one delayed between its slot and the
/// fake (a busy machine) brings it nearer to the next one.
const TOLERANCE: Duration = Duration::from_millis(100);

/// Orders polled in the measured pass.
const ORDERS: usize = 11;

/// `[musement]` for `fake` and a `[reconciler]` that leaves the rate and concurrency at their
/// defaults.
fn config_with_default_rate(fake: &FakeMusement) -> String {
    format!(
        "[musement]\nbase_url = \"{}\"\napplication = \"{APPLICATION}\"\n\
         client_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n\n\
         [reconciler]\ninterval = \"1h\"\n",
        fake.base_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_are_spaced_by_the_default_rate_ceiling_across_concurrent_polls() {
    let fake = FakeMusement::start().await;
    let h = harness_on(&config_with_default_rate(&fake)).await;
    assert_eq!(
        h.config.reconciler.max_requests_per_second, 5.0,
        "the default"
    );
    assert!(h.config.reconciler.concurrency > 1, "polls overlap");
    // Answers slower than the gap: several polls are in flight at once, so the limiter, not
    // the concurrency, is what spaces them.
    fake.set_latency(Duration::from_millis(250));
    // A first pass logs in, so the measured one holds nothing but GETs. (Polls whose slots
    // come while the login is answered all send their GET when the token arrives, closer than
    // the gap: the limiter spaces the polls' starts, not the requests after a login.)
    let warm_up = new_uuid();
    fake.put_order(order_json(warm_up, &[(new_uuid(), "PENDING")]));
    h.watch(&[warm_up]).await;
    assert_eq!(h.pass().await.polled, 1);
    let orders: Vec<_> = (0..ORDERS).map(|_| new_uuid()).collect();
    for order in &orders {
        fake.put_order(order_json(*order, &[(new_uuid(), "PENDING")]));
    }
    h.watch(&orders).await;
    let before = fake.requests().len();

    let summary = h.pass().await;
    assert!(summary.polled >= ORDERS, "{summary:?}");
    let gets: Vec<_> = fake.requests()[before..]
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.received)
        .collect();
    assert_eq!(
        gets.len(),
        summary.polled,
        "one GET per polled order, nothing else"
    );
    let gaps: Vec<Duration> = gets.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("GET spacing at the default 5/s: {gaps:?}");
    for (n, gap) in gaps.iter().enumerate() {
        assert!(
            *gap >= GAP - TOLERANCE,
            "GETs {n} and {} arrived {gap:?} apart; the ceiling asks for {GAP:?}: {gaps:?}",
            n + 1
        );
    }
    let span = *gets.last().unwrap() - gets[0];
    let least = GAP * gaps.len() as u32 - TOLERANCE;
    assert!(
        span >= least,
        "{} GETs within {span:?}: faster than 5 per second ({gaps:?})",
        gets.len()
    );
    h.close().await;
}
