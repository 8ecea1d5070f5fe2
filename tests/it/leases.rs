//! How reconcilers in several processes share one database.
//!
//! On SQLite, the reconciler lease on a `ManualClock`: a lease left by a pass that died is
//! taken over exactly when it expires, a pass that outlasts the lease keeps renewing it so
//! nobody else polls meanwhile, and a pass whose lease was taken stops. Expiry is judged by
//! the clock the test moves; renewal runs on real time, so the renewal tests shorten the lease
//! to seconds (`Reconciler::with_lease_ttl`) instead of waiting 20 s per renewal.
//!
//! On PostgreSQL (`claims_*`), passes of several instances run at once and claim due orders:
//! they split them, a dead pass's claims are taken over at their expiry (database clock) and
//! not before, a pause Musement asked of one stops all, and they share one request budget.

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
use crate::helpers::backend::{postgres_only, sqlite_only};
use crate::helpers::fake_musement::FakeResponse;
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
    if sqlite_only(
        "the pass-wide reconciler lease (on PostgreSQL passes claim orders instead: leases::claims_*)",
    ) {
        return;
    }
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
    if sqlite_only(
        "the pass-wide reconciler lease (on PostgreSQL passes claim orders instead: leases::claims_*)",
    ) {
        return;
    }
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
    if sqlite_only(
        "the pass-wide reconciler lease (on PostgreSQL passes claim orders instead: leases::claims_*)",
    ) {
        return;
    }
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

// On PostgreSQL several instances reconcile at once: each claims due orders a chunk at a time
// (`store::cluster`), draws on one request budget, and pauses when Musement asked any of them
// to wait. Each reconciler below is another instance: its own API client, its own name in the
// claims, one database.

/// What the tests below are about, for the line they print on SQLite.
const CLAIMS: &str =
    "several reconciling instances on one database (on SQLite a lease lets one pass run at a time)";

/// Orders whose claim is still recorded.
fn claimed_orders(h: &Harness) -> i64 {
    h.db()
        .query_row(
            "SELECT count(*) FROM orders WHERE poll_claimed_by IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Two instances' passes at once split the due orders: every order is polled exactly once,
/// each instance polls some, and no claim is left once both are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_split_the_due_orders_between_instances_and_none_is_polled_twice() {
    if postgres_only(CLAIMS) {
        return;
    }
    let h = harness("concurrency = 2").await;
    h.fake().set_latency(StdDuration::from_millis(20));
    let orders = h.watch_new_orders(40).await;
    h.fake().set_date(Some(h.clock.now()));
    let (a, b) = (h.reconciler_as("ow-a"), h.reconciler_as("ow-b"));
    let (a, b) = tokio::join!(a.run_once(), b.run_once());
    let (a, b) = (a.unwrap(), b.unwrap());
    let twice: Vec<&Uuid> = orders.iter().filter(|o| h.gets(**o) != 1).collect();
    assert!(twice.is_empty(), "not polled exactly once: {twice:?}");
    assert_eq!(
        (a.polled + b.polled, a.due + b.due),
        (40, 40),
        "{a:?}\n{b:?}"
    );
    assert!(
        a.polled > 0 && b.polled > 0,
        "both took a share: {a:?}\n{b:?}"
    );
    assert_eq!(claimed_orders(&h), 0, "every recorded poll ended its claim");
    h.close().await;
}

/// A pass killed while it polls leaves its claim: another instance does not poll that order
/// until the claim expires (on the database clock), then takes it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_left_by_a_dead_pass_are_taken_over_when_they_expire_and_not_before() {
    if postgres_only(CLAIMS) {
        return;
    }
    let h = harness(HELD_POLLS_WAIT).await;
    let claimed_at = Instant::now();
    let held = start_held_pass(&h, "dead pass", SHORT_TTL).await;
    let holder = h.order_field(held.order, "poll_claimed_by").unwrap();
    assert!(holder.contains("dead pass"), "{holder}");
    held.pass.abort();
    assert!(held.pass.await.unwrap_err().is_cancelled());
    h.fake().release(&held.path);

    let survivor = h.reconciler_as("survivor").with_lease_ttl(SHORT_TTL);
    let summary = survivor.run_once().await.unwrap();
    assert_eq!(
        (summary.due, summary.polled),
        (0, 0),
        "still claimed: {summary:?}"
    );
    assert_eq!(h.gets(held.order), 1);

    let mut taken_over = None;
    while taken_over.is_none() {
        assert!(
            claimed_at.elapsed() < LIMIT,
            "the dead pass's claim never expired"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
        if survivor.run_once().await.unwrap().polled == 1 {
            taken_over = Some(claimed_at.elapsed());
        }
    }
    let after = taken_over.unwrap();
    assert!(
        after >= SHORT_TTL,
        "taken over {after:?} after the claim, before its {SHORT_TTL:?}"
    );
    assert_eq!(h.gets(held.order), 2);
    assert_eq!(h.item(held.item).0, "OK");
    assert_eq!(claimed_orders(&h), 0);
    h.close().await;
}

/// A 429 with `Retry-After` that one instance got pauses the others: their passes send
/// nothing until the wait ends, then poll.
#[tokio::test]
async fn claims_a_pause_musement_asked_of_one_instance_stops_every_instance() {
    if postgres_only(CLAIMS) {
        return;
    }
    let h = harness("concurrency = 1").await;
    let orders = h.watch_new_orders(3).await;
    let busy = FakeResponse::status(429).with_header("retry-after", "120");
    for order in &orders {
        h.fake()
            .set_outage(&format!("/orders/{order}"), Some(busy.clone()));
    }
    h.fake().set_date(Some(h.clock.now()));
    let first = h.reconciler_as("ow-a").run_once().await.unwrap();
    let until = h.clock.now() + Duration::seconds(120);
    assert_eq!(
        (first.failures, first.paused_until),
        (1, Some(until)),
        "{first:?}"
    );
    let other = h.reconciler_as("ow-b");
    let second = other.run_once().await.unwrap();
    assert_eq!(
        (second.polled, second.failures, second.paused_until),
        (0, 0, Some(until)),
        "{second:?}"
    );
    let gets: usize = orders.iter().map(|o| h.gets(*o)).sum();
    assert_eq!(
        gets, 1,
        "only the first instance's one GET reached Musement"
    );

    for order in &orders {
        h.fake().set_outage(&format!("/orders/{order}"), None);
    }
    h.advance(Duration::seconds(120));
    h.fake().set_date(Some(h.clock.now()));
    let after = other.run_once().await.unwrap();
    assert_eq!(after.paused_until, None, "{after:?}");
    assert_eq!(after.polled, 3, "{after:?}");
    h.close().await;
}

/// `max_requests_per_second` is the cluster's: two instances polling at once together stay
/// within it (each alone would send at the full rate, twice as fast together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_two_instances_share_one_request_budget() {
    if postgres_only(CLAIMS) {
        return;
    }
    const RATE: f64 = 10.0;
    const ORDERS: usize = 40;
    let h = harness(&format!(
        "concurrency = 4\nmax_requests_per_second = {RATE}"
    ))
    .await;
    let orders = h.watch_new_orders(ORDERS).await;
    h.fake().set_date(Some(h.clock.now()));
    let (a, b) = (h.reconciler_as("ow-a"), h.reconciler_as("ow-b"));
    let (a, b) = tokio::join!(a.run_once(), b.run_once());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.polled + b.polled, ORDERS, "{a:?}\n{b:?}");
    assert!(
        a.polled > 0 && b.polled > 0,
        "both took a share: {a:?}\n{b:?}"
    );
    let mut times: Vec<Instant> = h
        .fake()
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && orders.iter().any(|o| r.path.ends_with(&o.to_string())))
        .map(|r| r.at)
        .collect();
    times.sort();
    // The bucket starts full (one second's worth); every request after those waits for a
    // token, so the rest take (ORDERS - RATE) / RATE seconds at least. Two instances each
    // keeping to the rate alone would take half that.
    let took = times[times.len() - 1] - times[0];
    let least = StdDuration::from_secs_f64((ORDERS as f64 - RATE) / RATE * 0.9);
    assert!(
        took >= least,
        "{ORDERS} GETs within {took:?}: faster than {RATE}/s together"
    );
    h.close().await;
}
