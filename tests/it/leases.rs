//! The reconciler lease on a `ManualClock`: a lease left by a pass that died is taken over
//! exactly when it expires, a pass that outlasts the lease keeps renewing it so nobody else
//! polls meanwhile, and a pass whose lease was taken stops. Expiry is judged by the clock the
//! test moves; renewal runs on real time, so the renewal tests shorten the lease to seconds
//! (`Reconciler::with_lease_ttl`) instead of waiting 20 s per renewal.

use std::future::Future;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use orderwatch::clock::{Clock, from_db_text};
use orderwatch::reconciler::{LEASE_TTL, PassError, PassSummary};
use orderwatch::store::LeaseAnswer;
use rusqlite::OptionalExtension;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::helpers::api::{Harness, START, at};
use crate::helpers::harness;

/// Bound on every wait for something the reconciler does in real time (a renewal comes every
/// second with the short lease; this only stops a broken run from hanging).
const LIMIT: StdDuration = StdDuration::from_secs(20);

/// The short lease of the renewal tests, renewed every second of real time.
const SHORT_TTL: StdDuration = StdDuration::from_secs(3);

/// `[reconciler]` for these tests: a poll the fake holds waits as long as a test needs.
const HELD_POLLS_WAIT: &str = "request_timeout = \"5m\"";

/// The reconciler lease row: `(holder, expires_at)`, `None` when nobody holds it.
fn lease(h: &Harness) -> Option<(String, DateTime<Utc>)> {
    h.db()
        .query_row(
            "SELECT holder, expires_at FROM leases WHERE name = 'reconciler'",
            [],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()
        .unwrap()
        .map(|(holder, expires)| (holder, from_db_text(&expires).unwrap()))
}

/// Waits (bounded by [`LIMIT`]) until `done` holds, checking every 10 ms.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {LIMIT:?}");
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
}

/// Awaits `task` (bounded by [`LIMIT`]).
async fn finished<T>(what: &str, task: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, task)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {LIMIT:?}"))
}

fn chrono(duration: StdDuration) -> Duration {
    Duration::from_std(duration).unwrap()
}

/// A pass running in the background, held up polling its one order.
struct HeldPass {
    /// The order, whose `GET` the fake holds.
    order: Uuid,
    /// Its one item, `OK` at Musement.
    item: Uuid,
    /// The path the fake holds; `h.fake().release(&path)` lets the `GET` through.
    path: String,
    /// The pass.
    pass: JoinHandle<Result<PassSummary, PassError>>,
}

/// Starts a pass of a reconciler in `role`, with leases of `ttl`, on a new order the fake holds
/// the `GET` of; returns once that `GET` has arrived (the pass holds the lease by then).
async fn start_held_pass(h: &Harness, role: &str, ttl: StdDuration) -> HeldPass {
    let (order, item) = h.watch_new_order("OK").await;
    let path = format!("/orders/{order}");
    h.fake().hold(&path);
    let reconciler = h.reconciler_as(role).with_lease_ttl(ttl);
    let pass = tokio::spawn(async move { reconciler.run_once().await });
    wait_until(&format!("the {role} polls"), || h.gets(order) == 1).await;
    HeldPass {
        order,
        item,
        path,
        pass,
    }
}

/// Asserts that the pass stored `item`'s status and gave the lease back, and closes `h`.
async fn assert_stored_and_released(h: Harness, item: Uuid) {
    assert_eq!(h.item(item).0, "OK");
    assert_eq!(lease(&h), None, "released at the end of the pass");
    h.close().await;
}

/// A pass killed while it polls leaves its lease in the table (nothing released it). Another
/// reconciler is refused, naming the holder, until the clock reaches `LEASE_TTL` after the
/// dead pass took it, and takes it over at that instant.
#[tokio::test]
async fn a_lease_left_by_a_dead_pass_is_taken_over_when_it_expires_and_not_before() {
    let h = harness(HELD_POLLS_WAIT).await;
    h.pin_date(at(START));
    let held = start_held_pass(&h, "dead pass", LEASE_TTL).await;
    let (holder, expires) = lease(&h).expect("the running pass holds the lease");
    assert!(holder.contains("dead pass"), "{holder}");
    assert_eq!(expires, at(START) + chrono(LEASE_TTL));
    // Killed mid-pass: no release runs.
    held.pass.abort();
    assert!(held.pass.await.unwrap_err().is_cancelled());
    assert_eq!(lease(&h), Some((holder.clone(), expires)), "left behind");
    h.fake().release(&held.path);

    h.clock.set(expires - Duration::milliseconds(1));
    match h.reconciler.run_once().await {
        Err(PassError::LeaseHeld {
            holder: named,
            until,
        }) => assert_eq!((named, until), (holder.clone(), expires)),
        other => panic!("a lease 1 ms from expiry is still held: {other:?}"),
    }
    assert_eq!(h.gets(held.order), 1, "the refused pass polled nothing");

    h.clock.set(expires);
    let summary = h.pass().await;
    assert_eq!(summary.polled, 1, "taken over at expiry: {summary:?}");
    assert_stored_and_released(h, held.item).await;
}

/// A pass held up three times as long as its lease renews the lease as it goes: at every
/// point the row runs `ttl` past the clock, and another reconciler is refused even once the
/// clock is well past the first expiry. When the pass ends it gives the lease back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_longer_than_its_lease_keeps_renewing_it() {
    let h = harness(HELD_POLLS_WAIT).await;
    h.pin_date(at(START));
    let held = start_held_pass(&h, "long pass", SHORT_TTL).await;
    let (holder, first_expiry) = lease(&h).unwrap();
    assert!(holder.contains("long pass"), "{holder}");
    assert_eq!(first_expiry, h.clock.now() + chrono(SHORT_TTL));

    for step in 1..=4 {
        // Two thirds of a lease at a time: past the first expiry from the second step on.
        h.advance(Duration::seconds(2));
        let wanted = h.clock.now() + chrono(SHORT_TTL);
        wait_until(&format!("renewal {step}"), || {
            lease(&h).is_some_and(|(_, expires)| expires == wanted)
        })
        .await;
        match h.reconciler.run_once().await {
            Err(PassError::LeaseHeld { holder: named, .. }) => assert_eq!(named, holder),
            other => panic!("step {step}: the renewed lease must refuse others: {other:?}"),
        }
    }
    assert!(h.clock.now() > first_expiry + chrono(SHORT_TTL));
    assert_eq!(h.gets(held.order), 1, "nobody else polled meanwhile");

    h.fake().release(&held.path);
    let summary = finished("the long pass", held.pass).await.unwrap().unwrap();
    assert_eq!(
        (summary.polled, &summary.stopped),
        (1, &None),
        "{summary:?}"
    );
    assert_stored_and_released(h, held.item).await;
}

/// When the clock passes a running pass's lease before it is renewed (a wall clock stepped
/// forward), another process may take it; the pass's next renewal then finds it held and the
/// pass stops, storing nothing more and leaving the other holder's lease alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_whose_lease_was_taken_stops_at_its_next_renewal() {
    let h = harness(HELD_POLLS_WAIT).await;
    let held = start_held_pass(&h, "overtaken pass", SHORT_TTL).await;

    // Jump past the expiry and take the lease; should a renewal slip in between (it comes
    // every second), the lease is the pass's again and the jump is repeated.
    let other = "another process (pid 1)";
    let mut taken = false;
    for _ in 0..10 {
        let (_, expires) = lease(&h).unwrap();
        h.clock.set(expires);
        let answer = h
            .writer
            .acquire_lease("reconciler", other, Duration::minutes(10))
            .await
            .unwrap();
        if matches!(answer, LeaseAnswer::Acquired { .. }) {
            taken = true;
            break;
        }
    }
    assert!(taken, "the expired lease could never be taken");

    let result = finished("the overtaken pass", held.pass).await.unwrap();
    match result {
        Err(PassError::LeaseHeld { holder, .. }) => assert_eq!(holder, other),
        other => panic!("the pass must stop once its lease is taken: {other:?}"),
    }
    assert_eq!(
        lease(&h).map(|(holder, _)| holder).as_deref(),
        Some(other),
        "the stopped pass left the new holder's lease alone"
    );
    h.close().await;
}
