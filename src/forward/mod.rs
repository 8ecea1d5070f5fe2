//! Signed webhooks out (`[[forward]]`): every status change delivered to the partner's
//! system, at least once and in order per item, on either database engine.
//!
//! - [`feeder`] reads the change feed after each destination's cursor and enqueues its changes
//!   in the outbox (`store::deliveries`), moving the cursor in the same transaction.
//! - [`sender`] claims each destination's due deliveries (an item's next change only once the
//!   one before it was acknowledged), posts them ([`attempt`], signed by [`signature`], the
//!   body built by [`message`]) and records each answer; [`retry`] says when a failed one is
//!   tried again or parked.
//!
//! Delivery state lives only in the database, so a restart or a `kill -9` loses nothing: an
//! unanswered claim expires and the delivery is sent again (at least once; receivers
//! deduplicate on `webhook-id`).

pub mod attempt;
pub mod feeder;
pub mod message;
pub mod retry;
pub mod sender;
pub mod signature;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use self::attempt::{Sender, destination_url};
use self::retry::RetryPolicy;
use self::signature::SigningSecret;
use crate::backoff::BackoffPolicy;
use crate::clock::Clock;
use crate::config::{Config, ForwardConfig, Outcome, Start};
use crate::metrics::Metrics;
use crate::store::deliveries::{ForwardCommand, StartAt};
use crate::store::inspect::Change;
use crate::store::reads::Reads;
use crate::store::writer::Writer;

/// One configured destination, ready to send to.
#[derive(Debug)]
pub struct Destination {
    /// `[[forward]] name`.
    pub name: String,
    /// Which applied observations are sent.
    pub outcomes: Vec<Outcome>,
    /// Only those to these statuses (empty: all).
    pub statuses: Vec<String>,
    pub start: StartAt,
    pub max_in_flight: usize,
    /// How long one attempt may take; a claim lasts this plus a margin.
    pub timeout: std::time::Duration,
    pub retry: RetryPolicy,
    pub secrets: Vec<SigningSecret>,
    pub sender: Sender,
}

impl Destination {
    /// The destination `config` describes (its URL and secrets were checked when the
    /// configuration loaded).
    pub fn from_config(config: &ForwardConfig) -> Result<Self, String> {
        let url = destination_url(&config.url)?;
        let chrono =
            |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Ok(Self {
            name: config.name.clone(),
            outcomes: config.outcomes.clone(),
            statuses: config.statuses.clone(),
            start: match config.start {
                Start::End => StartAt::End,
                Start::Beginning => StartAt::Beginning,
            },
            max_in_flight: config.max_in_flight,
            timeout: config.timeout,
            retry: RetryPolicy {
                backoff: BackoffPolicy {
                    base: chrono(config.retry_base),
                    cap: chrono(config.retry_cap),
                },
                give_up_after: chrono(config.give_up_after),
            },
            secrets: config.resolved_secrets.clone(),
            sender: Sender::new(url, config.timeout)?,
        })
    }

    /// Whether the applied observation `change` is sent here.
    pub fn wants(&self, change: &Change) -> bool {
        let outcome = if message::changes_status(change) {
            Outcome::StatusChanged
        } else {
            Outcome::Updated
        };
        self.outcomes.contains(&outcome)
            && (self.statuses.is_empty() || self.statuses.contains(&change.new_status))
    }
}

/// What the feeders and senders share.
#[derive(Clone)]
pub struct Context {
    pub writer: Writer,
    pub reads: Reads,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// This instance (`[server] instance_id`): who holds a claim.
    pub holder: String,
}

/// The running feeders and senders of every destination.
pub struct Forwarder {
    tasks: JoinSet<()>,
    /// The destinations' names, to give their claims back at stop.
    names: Vec<String>,
    context: Context,
}

impl Forwarder {
    /// Registers each `[[forward]]` destination in the database (so it shows in `/metrics`
    /// and `orderwatch deliveries` from the start), then starts a feeder and a sender for it
    /// (none configured: nothing runs).
    pub async fn start(config: &Config, context: Context) -> Result<Self, String> {
        let mut tasks = JoinSet::new();
        let mut names = Vec::new();
        for destination in &config.forward {
            let destination = Arc::new(
                Destination::from_config(destination)
                    .map_err(|reason| format!("forward {:?}: {reason}", destination.name))?,
            );
            tracing::info!(destination = %destination.name, outcomes = ?destination.outcomes, statuses = ?destination.statuses, "forwarding signed webhooks");
            names.push(destination.name.clone());
            let cursor = feeder::register_once(&destination, &context).await;
            let enqueued = Arc::new(Notify::new());
            tasks.spawn(feeder::run(
                destination.clone(),
                context.clone(),
                enqueued.clone(),
                cursor,
            ));
            tasks.spawn(sender::run(destination, context.clone(), enqueued));
        }
        Ok(Self {
            tasks,
            names,
            context,
        })
    }

    /// Stops feeding and sending; deliveries in flight are abandoned and their claims given
    /// back, so the next start (or another instance) sends them again.
    pub async fn stop(mut self) {
        if self.tasks.is_empty() {
            return;
        }
        self.tasks.shutdown().await;
        for destination in self.names {
            let released = self
                .context
                .writer
                .forward(ForwardCommand::ReleaseClaims {
                    destination: destination.clone(),
                    holder: self.context.holder.clone(),
                })
                .await;
            if let Err(error) = released {
                tracing::warn!(%destination, %error, "could not give back the delivery claims; they expire on their own");
            }
        }
    }
}
