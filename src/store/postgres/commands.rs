//! Every writer command carried out on PostgreSQL: what `store::commands::execute_all` does on
//! SQLite, with the same steps (consecutive observations through one [`apply_batch`]) and the
//! same answers.

use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use super::super::StoreSettings;
use super::super::apply::RejectedWebhook;
use super::super::commands::{Command, Done, Step, steps};
use super::super::inspect::COMMIT_LAG;
use super::super::maintenance::{PruneCursor, PruneStep};
use super::super::polls::PollFailure;
use super::apply::apply_batch;
use super::polls;
use super::session::Session;

type Result<T> = std::result::Result<T, tokio_postgres::Error>;

/// Runs `commands` in order inside `tx` at `now` (cut into steps as on SQLite:
/// `store::commands::steps`); `instance` names this instance (heartbeat row,
/// `item_events.receiver`). Stops at the first error (the caller undoes the lot).
pub async fn execute_all(
    tx: &Session<'_>,
    commands: &[&Command],
    settings: &StoreSettings,
    now: DateTime<Utc>,
    instance: &str,
) -> Result<Vec<Done>> {
    lock_orders(tx, commands).await?;
    let mut done = Vec::with_capacity(commands.len());
    for step in steps(commands) {
        match step {
            Step::Observations(observations) => {
                let outcomes = apply_batch(tx, &observations, settings, now, instance).await?;
                done.extend(outcomes.into_iter().map(Done::Outcome));
            }
            Step::One(command) => done.push(execute(tx, command, settings, now, instance).await?),
        }
    }
    Ok(done)
}

/// Locks, in UUID order, the row of every existing order the batch's commands write, before
/// the first step runs. Each step locks its own orders in UUID order too, but a batch is cut
/// into steps (a readiness ping or a poll record runs alone), so step by step two batches
/// could take the same orders in crossing order (order A in one's first step, B in its second;
/// B then A in the other's) and deadlock; taken all at once, in one order, they cannot. A
/// ping's heartbeat row is then the only row a batch locks after its orders, and a batch
/// holding it already holds every order it will lock. Orders not created yet are locked by
/// the step that creates them (a second batch creating the same one waits for the first's
/// commit).
async fn lock_orders(tx: &Session<'_>, commands: &[&Command]) -> Result<()> {
    let mut orders: Vec<Uuid> = commands
        .iter()
        .flat_map(|command| -> Vec<Uuid> {
            match command {
                Command::Apply(observation) => vec![observation.order],
                Command::RecordPoll(record) => vec![record.order],
                Command::RecordPollFailure(
                    PollFailure::NotFound { order } | PollFailure::Failed { order, .. },
                ) => vec![*order],
                Command::Watch(orders) | Command::Unwatch(orders) | Command::Expire(orders) => {
                    orders.clone()
                }
                _ => Vec::new(),
            }
        })
        .collect();
    if orders.is_empty() {
        return Ok(());
    }
    orders.sort_unstable();
    orders.dedup();
    tx.execute(
        "SELECT 1 FROM orders WHERE order_uuid = ANY($1) ORDER BY order_uuid FOR NO KEY UPDATE",
        &[&orders],
    )
    .await?;
    Ok(())
}

/// Runs one command.
async fn execute(
    tx: &Session<'_>,
    command: &Command,
    settings: &StoreSettings,
    now: DateTime<Utc>,
    instance: &str,
) -> Result<Done> {
    Ok(match command {
        Command::Apply(observation) => {
            let outcomes = apply_batch(tx, &[observation], settings, now, instance).await?;
            Done::Outcome(outcomes[0])
        }
        Command::Reject(rejected) => {
            record_rejected(tx, rejected, settings.rejected_keep).await?;
            Done::Nothing
        }
        Command::Ping => {
            tx.execute(
                "INSERT INTO heartbeat (instance, at) VALUES ($1, $2)
                 ON CONFLICT (instance) DO UPDATE SET at = excluded.at",
                &[&instance, &now.trunc_subsecs(3)],
            )
            .await?;
            Done::Nothing
        }
        Command::Shutdown => Done::Nothing,
        Command::RecordPoll(record) => {
            Done::Polled(polls::record_poll(tx, record, settings, now, instance).await?)
        }
        Command::RecordPollFailure(failure) => {
            Done::BackedOff(polls::record_poll_failure(tx, failure, settings, now).await?)
        }
        Command::Watch(orders) => Done::Orders(polls::watch(tx, orders, settings, now).await?),
        Command::Unwatch(orders) => Done::Orders(polls::unwatch(tx, orders, settings, now).await?),
        Command::Expire(orders) => Done::Orders(polls::expire(tx, orders, now).await?),
        Command::MarkOverdueWarned(items) => {
            polls::mark_overdue_warned(tx, items, now).await?;
            Done::Nothing
        }
        Command::AcquireLease { name, holder, ttl } => {
            Done::Lease(polls::acquire_lease(tx, name, holder, *ttl, now).await?)
        }
        Command::ReleaseLease { name, holder } => {
            polls::release_lease(tx, name, holder).await?;
            Done::Nothing
        }
        Command::Prune {
            cutoff,
            after,
            batch,
        } => Done::Pruned(prune_step(tx, *cutoff, *after, *batch).await?),
        Command::Forward(command) => {
            Done::Forward(super::deliveries::execute(tx, command, now).await?)
        }
    })
}

/// Stores a rejected webhook and keeps the newest `keep` rows.
pub async fn record_rejected(
    tx: &Session<'_>,
    rejected: &RejectedWebhook,
    keep: u32,
) -> Result<()> {
    let id: i64 = tx
        .query_one(
            "INSERT INTO rejected_webhooks (received_at, peer, field, error, body)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[
                &rejected.received_at.trunc_subsecs(3),
                &rejected.peer,
                &rejected.field,
                &rejected.error,
                &rejected.body,
            ],
        )
        .await?
        .get(0);
    tx.execute(
        "DELETE FROM rejected_webhooks WHERE id <= $1",
        &[&(id - i64::from(keep))],
    )
    .await?;
    Ok(())
}

/// One batch of pruning: `store::maintenance::prune_step`'s walk (each table in id order, at
/// most `batch` rows, done once a row received `COMMIT_LAG` after the cutoff is seen; an
/// item's newest event and newest applied event are kept).
pub async fn prune_step(
    tx: &Session<'_>,
    cutoff: DateTime<Utc>,
    after: PruneCursor,
    batch: usize,
) -> Result<PruneStep> {
    let batch = batch.clamp(1, i64::MAX as usize) as i64;
    let stop = cutoff + COMMIT_LAG;
    // An event a destination of signed webhooks out has not fed yet stays. An item's events
    // are found with `item_seq =` (indexed), events without one by a second lookup (see
    // `feed.rs`).
    let (events, next_event) = walk(
        tx,
        after.events,
        concat!(
            "SELECT e.id, e.received_at,
                e.received_at < $2
                AND e.id <> coalesce(
                        (SELECT max(l.id) FROM item_events l
                         WHERE l.item_seq = e.item_seq AND l.item_uuid = e.item_uuid),
                        (SELECT max(l.id) FROM item_events l
                         WHERE e.item_seq IS NULL AND l.item_seq IS NULL
                           AND l.item_uuid = e.item_uuid))
                AND e.id IS DISTINCT FROM coalesce(
                        (SELECT max(a.id) FROM item_events a
                         WHERE a.item_seq = e.item_seq AND a.item_uuid = e.item_uuid
                           AND a.outcome = 'applied'),
                        (SELECT max(a.id) FROM item_events a
                         WHERE e.item_seq IS NULL AND a.item_seq IS NULL
                           AND a.item_uuid = e.item_uuid AND a.outcome = 'applied'))
                AND NOT EXISTS (SELECT 1 FROM forward_destinations f WHERE (e.tx, e.id) > ",
            super::deliveries::cursor_of_f!(),
            ")
         FROM item_events e WHERE e.id > $1 ORDER BY e.id LIMIT $3"
        ),
        "DELETE FROM item_events WHERE id = ANY($1)",
        (cutoff, stop, batch),
    )
    .await?;
    let (rejected, next_rejected) = walk(
        tx,
        after.rejected,
        "SELECT id, received_at, received_at < $2
         FROM rejected_webhooks WHERE id > $1 ORDER BY id LIMIT $3",
        "DELETE FROM rejected_webhooks WHERE id = ANY($1)",
        (cutoff, stop, batch),
    )
    .await?;
    let (deliveries, next_delivery) = walk(
        tx,
        after.deliveries,
        "SELECT id, created_at, state IN ('delivered', 'skipped') AND created_at < $2
         FROM forward_deliveries WHERE id > $1 ORDER BY id LIMIT $3",
        "DELETE FROM forward_deliveries WHERE id = ANY($1)",
        (cutoff, stop, batch),
    )
    .await?;
    Ok(PruneStep {
        events,
        rejected,
        deliveries,
        next: PruneCursor {
            events: next_event,
            rejected: next_rejected,
            deliveries: next_delivery,
        },
    })
}

/// Reads up to `batch` rows after `after` with `select` (id, received_at, deletable; `$1` the
/// id, `$2` the cutoff, `$3` the batch) and deletes the deletable ones with `delete`. Gives the
/// rows deleted and where the table's walk goes on (`None`: done).
async fn walk(
    tx: &Session<'_>,
    after: Option<i64>,
    select: &'static str,
    delete: &'static str,
    (cutoff, stop, batch): (DateTime<Utc>, DateTime<Utc>, i64),
) -> Result<(usize, Option<i64>)> {
    let Some(after) = after else {
        return Ok((0, None));
    };
    let rows = tx.query(select, &[&after, &cutoff, &batch]).await?;
    let (mut read, mut last, mut old) = (0, after, Vec::new());
    let mut done = false;
    for row in &rows {
        let received_at: DateTime<Utc> = row.get(1);
        if received_at >= stop {
            done = true;
            break;
        }
        read += 1;
        last = row.get(0);
        if row.get(2) {
            old.push(last);
        }
    }
    let deleted = if old.is_empty() {
        0
    } else {
        tx.execute(delete, &[&old]).await? as usize
    };
    let next = (!done && read == batch).then_some(last);
    Ok((deleted, next))
}
