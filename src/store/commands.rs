//! Everything the writer can be asked to do, and the one place that dispatches it to the store
//! functions. The writer batches and commits; it does not know what the commands mean.

use chrono::{DateTime, Duration, Utc};
use rusqlite::Connection;
use uuid::Uuid;

use super::deliveries::{self, ForwardCommand, ForwardDone};
use super::maintenance::{self, PruneStep};
use super::polls::{self, Backoff, LeaseAnswer, PollFailure, PollRecord, PollRecorded};
use super::{RejectedWebhook, StoreSettings, apply, apply_batch, record_rejected};
use crate::observation::Observation;
use crate::store::Outcome;

/// A unit of work for the writer, committed in a batch with others.
#[derive(Debug)]
pub enum Command {
    /// Store an observation through the ordering rule.
    Apply(Box<Observation>),
    /// Keep an invalid webhook for operators.
    Reject(RejectedWebhook),
    /// Rewrite the heartbeat row (readiness: a real write that must commit).
    Ping,
    /// Store a successful poll.
    RecordPoll(Box<PollRecord>),
    /// Record a failed poll.
    RecordPollFailure(PollFailure),
    /// Register orders to poll.
    Watch(Vec<Uuid>),
    /// Stop polling orders (the partner unwatched them).
    Unwatch(Vec<Uuid>),
    /// Stop polling orders past `max_age`.
    Expire(Vec<Uuid>),
    /// Note that overdue warnings were logged.
    MarkOverdueWarned(Vec<Uuid>),
    /// Take or renew a lease.
    AcquireLease {
        name: &'static str,
        holder: String,
        ttl: Duration,
    },
    /// Give a lease back.
    ReleaseLease { name: &'static str, holder: String },
    /// Delete one batch of history received before `cutoff`, after the cursor `after`.
    Prune {
        cutoff: DateTime<Utc>,
        after: maintenance::PruneCursor,
        batch: usize,
    },
    /// Work on the outbox of signed webhooks out.
    Forward(ForwardCommand),
    /// Commit what came before, then stop the writer: later jobs are answered "shut down".
    Shutdown,
}

impl Command {
    /// Whether it may make the database or its WAL larger (refused past `max_size_bytes`);
    /// pruning and giving a lease back only delete, and shutting down writes nothing.
    pub fn may_grow(&self) -> bool {
        !matches!(
            self,
            Self::Prune { .. } | Self::ReleaseLease { .. } | Self::Shutdown
        )
    }
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Outcome(Outcome),
    Polled(PollRecorded),
    BackedOff(Option<Backoff>),
    Orders(Vec<Uuid>),
    Lease(LeaseAnswer),
    Pruned(PruneStep),
    Forward(ForwardDone),
    Nothing,
}

/// One step of running a batch: a run of consecutive observations (stored together through
/// one `apply_batch`: one read per table for all of them), or one other command.
pub enum Step<'a> {
    Observations(Vec<&'a Observation>),
    One(&'a Command),
}

/// `commands` cut into [`Step`]s, in order: how every engine runs a batch.
pub fn steps<'a>(commands: &[&'a Command]) -> Vec<Step<'a>> {
    let mut steps: Vec<Step<'a>> = Vec::new();
    for command in commands {
        match (command, steps.last_mut()) {
            (Command::Apply(observation), Some(Step::Observations(run))) => {
                run.push(observation.as_ref())
            }
            (Command::Apply(observation), _) => {
                steps.push(Step::Observations(vec![observation.as_ref()]))
            }
            _ => steps.push(Step::One(command)),
        }
    }
    steps
}

/// Runs `commands` in order on the writer's connection at `now` ([`steps`]). Stops at the
/// first error (the caller undoes the lot).
pub fn execute_all(
    conn: &Connection,
    commands: &[&Command],
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<Vec<Done>> {
    let mut done = Vec::with_capacity(commands.len());
    for step in steps(commands) {
        match step {
            Step::Observations(observations) => {
                let outcomes = apply_batch(conn, &observations, settings, now)?;
                done.extend(outcomes.into_iter().map(Done::Outcome));
            }
            Step::One(command) => done.push(execute(conn, command, settings, now)?),
        }
    }
    Ok(done)
}

/// Runs one command on the writer's connection at `now`.
pub fn execute(
    conn: &Connection,
    command: &Command,
    settings: &StoreSettings,
    now: DateTime<Utc>,
) -> rusqlite::Result<Done> {
    Ok(match command {
        Command::Apply(observation) => Done::Outcome(apply(conn, observation, settings, now)?),
        Command::Reject(rejected) => {
            record_rejected(conn, rejected, settings.rejected_keep)?;
            Done::Nothing
        }
        Command::Ping => {
            conn.prepare_cached("INSERT OR REPLACE INTO heartbeat (id, at) VALUES (1, ?1)")?
                .execute([crate::clock::to_db_text(now)])?;
            Done::Nothing
        }
        Command::Shutdown => Done::Nothing,
        Command::RecordPoll(record) => {
            Done::Polled(polls::record_poll(conn, record, settings, now)?)
        }
        Command::RecordPollFailure(failure) => {
            Done::BackedOff(polls::record_poll_failure(conn, failure, settings, now)?)
        }
        Command::Watch(orders) => Done::Orders(polls::watch(conn, orders, settings, now)?),
        Command::Unwatch(orders) => Done::Orders(polls::unwatch(conn, orders, settings, now)?),
        Command::Expire(orders) => Done::Orders(polls::expire(conn, orders, now)?),
        Command::MarkOverdueWarned(items) => {
            polls::mark_overdue_warned(conn, items, now)?;
            Done::Nothing
        }
        Command::AcquireLease { name, holder, ttl } => {
            Done::Lease(polls::acquire_lease(conn, name, holder, *ttl, now)?)
        }
        Command::ReleaseLease { name, holder } => {
            polls::release_lease(conn, name, holder)?;
            Done::Nothing
        }
        Command::Prune {
            cutoff,
            after,
            batch,
        } => Done::Pruned(maintenance::prune_step(conn, *cutoff, *after, *batch)?),
        Command::Forward(command) => Done::Forward(deliveries::execute(conn, command, now)?),
    })
}
