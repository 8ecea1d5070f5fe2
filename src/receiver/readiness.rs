//! `/readyz`: is the writer taking work? One answer is reused for [`READINESS_TTL`], whoever
//! asks, so probes (which need no credentials: load balancers and Kubernetes send none) cost
//! at most one heartbeat write per interval however fast they come. A "ready" is looked at
//! again at once after a batch of writes failed, a "not ready" after one went through.

use std::time::{Duration, Instant};

use crate::store::writer::Writer;

/// How long one readiness answer is reused.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// The last readiness answer and when it was found.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Held while an answer is being found, so concurrent probes wait for that one.
    last: tokio::sync::Mutex<Option<Answer>>,
}

/// One readiness answer.
#[derive(Debug)]
struct Answer {
    /// When it was found.
    at: Instant,
    /// The count of batches that would make it stale (with failures for a "ready",
    /// without for a "not ready"), then.
    stale_after: u64,
    /// Ready, or why not.
    ready: Result<(), String>,
}

impl Readiness {
    /// Whether `writer` takes work: the answer of the last [`READINESS_TTL`], or a fresh one
    /// (its health, then a heartbeat write that must commit within `deadline`). A change of
    /// answer is logged once.
    pub async fn check(&self, writer: &Writer, deadline: Duration) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some(answer) = &*last
            && answer.at.elapsed() < READINESS_TTL
            && answer.stale_after == stale_after(writer, &answer.ready)
        {
            return answer.ready.clone();
        }
        let ready = evaluate(writer, deadline).await;
        let was_ready = last.as_ref().is_none_or(|answer| answer.ready.is_ok());
        match &ready {
            Err(reason) if was_ready => tracing::warn!(%reason, "not ready"),
            Ok(()) if !was_ready => tracing::info!("ready again"),
            _ => {}
        }
        *last = Some(Answer {
            at: Instant::now(),
            // Read after the heartbeat, so the heartbeat itself does not void the answer.
            stale_after: stale_after(writer, &ready),
            ready: ready.clone(),
        });
        ready
    }
}

/// The writer's count of batches whose change voids an answer like `ready`.
fn stale_after(writer: &Writer, ready: &Result<(), String>) -> u64 {
    match ready {
        Ok(()) => writer.health().batches_with_failures(),
        Err(_) => writer.health().batches_without_failures(),
    }
}

async fn evaluate(writer: &Writer, deadline: Duration) -> Result<(), String> {
    if let Some(reason) = writer.health().unready() {
        return Err(reason);
    }
    match tokio::time::timeout(deadline, writer.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("database did not answer in time".into()),
    }
}
