//! The sender of one destination: claims its due deliveries (each the next undelivered change
//! of its item, so an item's changes go out one at a time and in order while other items go
//! on in parallel), keeps up to `max_in_flight` attempts running, and records each answer.
//! A claim lasts the attempt's timeout plus [`CLAIM_MARGIN`]: if this instance dies
//! mid-attempt, another one (or this one restarted) sends the delivery again after that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::attempt::Attempt;
use super::message;
use super::retry::Next;
use super::{Context, Destination};
use crate::store::deliveries::{Claimed, Finish, ForwardCommand, ForwardDone};

/// How long a claim outlives the attempt's timeout: recording the answer takes a commit. It
/// starts when the claim commits (on PostgreSQL by the database's clock), so a queue in
/// front of the writer does not eat into it.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// How long the sender waits for a new delivery before looking again anyway (retries that
/// came due, deliveries another instance enqueued or gave back).
const IDLE: Duration = Duration::from_millis(500);

/// Wait after a failed claim before trying again.
const AFTER_ERROR: Duration = Duration::from_secs(1);

/// Sends `destination`'s deliveries until the task is aborted; `enqueued` says new ones wait.
pub async fn run(destination: Arc<Destination>, context: Context, enqueued: Arc<Notify>) {
    release_stale_claims(&destination, &context).await;
    let mut in_flight = JoinSet::new();
    let mut disabled = false;
    loop {
        let free = destination.max_in_flight.saturating_sub(in_flight.len());
        if free > 0 {
            match claim(&destination, &context, free).await {
                Ok(Claim::Disabled) => {
                    if !disabled {
                        tracing::error!(destination = %destination.name, "the destination is disabled (it answered 410 Gone); nothing is sent until `orderwatch deliveries enable {}`", destination.name);
                    }
                    disabled = true;
                }
                Ok(Claim::Deliveries(claimed)) => {
                    if disabled {
                        tracing::info!(destination = %destination.name, "the destination is enabled again");
                    }
                    disabled = false;
                    for delivery in claimed {
                        in_flight.spawn(deliver(destination.clone(), context.clone(), delivery));
                    }
                }
                Err(error) => {
                    tracing::warn!(destination = %destination.name, %error, "cannot claim deliveries; trying again");
                    tokio::time::sleep(AFTER_ERROR).await;
                    continue;
                }
            }
        }
        tokio::select! {
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = enqueued.notified() => {}
            _ = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// Claims left by an earlier run of this instance (killed mid-attempt) are given back at
/// once instead of waiting for them to expire.
async fn release_stale_claims(destination: &Destination, context: &Context) {
    let released = context
        .writer
        .forward(ForwardCommand::ReleaseClaims {
            destination: destination.name.clone(),
            holder: context.holder.clone(),
        })
        .await;
    if let Err(error) = released {
        tracing::warn!(destination = %destination.name, %error, "could not give back earlier claims; they expire on their own");
    }
}

enum Claim {
    Disabled,
    Deliveries(Vec<Claimed>),
}

async fn claim(
    destination: &Destination,
    context: &Context,
    limit: usize,
) -> Result<Claim, String> {
    let ttl = chrono::Duration::from_std(destination.timeout + CLAIM_MARGIN)
        .unwrap_or(chrono::Duration::MAX);
    let answer = context
        .writer
        .forward(ForwardCommand::Claim {
            destination: destination.name.clone(),
            holder: context.holder.clone(),
            limit,
            ttl,
        })
        .await
        .map_err(|e| e.to_string())?;
    match answer {
        ForwardDone::Claimed { disabled: true, .. } => Ok(Claim::Disabled),
        ForwardDone::Claimed { deliveries, .. } => Ok(Claim::Deliveries(deliveries)),
        other => Err(format!("unexpected answer to a claim: {other:?}")),
    }
}

/// One attempt of `delivery`, and its answer recorded.
async fn deliver(destination: Arc<Destination>, context: Context, delivery: Claimed) {
    let attempted_at = context.clock.now();
    let started = Instant::now();
    let attempt = destination
        .sender
        .send(
            &destination.secrets,
            &message::id_of(delivery.event_id),
            delivery.body.clone().into_bytes(),
            attempted_at,
        )
        .await;
    let result = decide(&destination, &delivery, attempt, attempted_at, &context);
    context
        .metrics
        .forward_attempt(&destination.name, result_label(&result), started.elapsed());
    log(&destination, &delivery, &result);
    let recorded = context
        .writer
        .forward(ForwardCommand::Finish {
            id: delivery.id,
            destination: destination.name.clone(),
            holder: context.holder.clone(),
            attempted_at,
            result,
        })
        .await;
    if let Err(error) = recorded {
        // The claim expires and the delivery is sent again: at least once.
        tracing::warn!(destination = %destination.name, delivery = delivery.id, %error, "could not record the attempt; it will be sent again");
    }
}

/// What the attempt's answer means for the delivery.
fn decide(
    destination: &Destination,
    delivery: &Claimed,
    attempt: Attempt,
    attempted_at: chrono::DateTime<chrono::Utc>,
    context: &Context,
) -> Finish {
    match attempt {
        Attempt::Delivered { status } => Finish::Delivered { status },
        Attempt::Gone => Finish::Gone {
            status: 410,
            error: "the destination answered 410 Gone".into(),
        },
        Attempt::Failed {
            status,
            reason,
            retry_after,
        } => {
            let next = destination.retry.after_failure(
                delivery.attempts + 1,
                delivery.first_attempt_at.unwrap_or(attempted_at),
                context.clock.now(),
                retry_after,
                0.5 + fastrand::f64() * 0.5,
            );
            match next {
                Next::RetryAt(at) => Finish::Retry {
                    status,
                    error: reason,
                    at,
                },
                Next::Park => Finish::Park {
                    status,
                    error: reason,
                },
            }
        }
    }
}

/// The `result` label of `orderwatch_forward_attempts_total`.
fn result_label(result: &Finish) -> &'static str {
    match result {
        Finish::Delivered { .. } => "delivered",
        Finish::Retry { .. } => "failed",
        Finish::Park { .. } => "parked",
        Finish::Gone { .. } => "gone",
    }
}

fn log(destination: &Destination, delivery: &Claimed, result: &Finish) {
    let name = &destination.name;
    let (id, item) = (delivery.id, &delivery.item);
    match result {
        Finish::Delivered { status } => {
            tracing::debug!(destination = %name, delivery = id, %item, status, "delivered")
        }
        Finish::Retry { status, error, at } => tracing::warn!(
            destination = %name, delivery = id, %item, status = ?status, %error,
            retry_at = %crate::clock::to_db_text(*at), "delivery failed; trying again later"
        ),
        Finish::Park { status, error } => tracing::error!(
            destination = %name, delivery = id, %item, status = ?status, %error,
            "delivery parked after give_up_after; the item's later changes wait for `orderwatch deliveries retry {id}` or `skip {id}`"
        ),
        Finish::Gone { .. } => tracing::error!(
            destination = %name, delivery = id,
            "the destination answered 410 Gone and is disabled until `orderwatch deliveries enable {name}`"
        ),
    }
}
