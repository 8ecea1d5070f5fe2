//! When passes run: a first one at start (catching up after downtime), then one per tick of
//! `[reconciler] interval` or `cron` (tokio-cron-scheduler); a reload can change the schedule.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use super::Reconciler;
use crate::config::Schedule;

/// The reconciler's scheduler and its one job, which a reload can replace.
pub struct ScheduledPasses {
    scheduler: JobScheduler,
    /// The job running passes now.
    job: uuid::Uuid,
    reconciler: Arc<Reconciler>,
}

impl ScheduledPasses {
    /// Runs a first pass right away (catching up after downtime), then one per scheduled tick.
    pub async fn start(reconciler: Arc<Reconciler>, schedule: Schedule) -> Result<Self, String> {
        let failed = |e: JobSchedulerError| e.to_string();
        let scheduler = JobScheduler::new().await.map_err(failed)?;
        let job = scheduler
            .add(pass_job(&reconciler, &schedule).map_err(failed)?)
            .await
            .map_err(failed)?;
        scheduler.start().await.map_err(failed)?;
        tracing::info!(?schedule, "the reconciler is on");
        let first = reconciler.clone();
        tokio::spawn(async move { first.tick().await });
        Ok(Self {
            scheduler,
            job,
            reconciler,
        })
    }

    /// Replaces the schedule: the new job is added before the old one goes, so no tick is lost
    /// and a bad schedule leaves the old one running.
    pub async fn reschedule(&mut self, schedule: Schedule) -> Result<(), String> {
        let job = pass_job(&self.reconciler, &schedule).map_err(|e| e.to_string())?;
        let added = self.scheduler.add(job).await.map_err(|e| e.to_string())?;
        let _ = self.scheduler.remove(&self.job).await;
        self.job = added;
        tracing::info!(?schedule, "the reconciler's schedule changed");
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.scheduler.shutdown().await;
    }
}

/// A job that runs one pass per tick of `schedule` (a pass still running makes the tick a no-op).
fn pass_job(reconciler: &Arc<Reconciler>, schedule: &Schedule) -> Result<Job, JobSchedulerError> {
    let ticking = reconciler.clone();
    let run = move |_, _| -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let reconciler = ticking.clone();
        Box::pin(async move { reconciler.tick().await })
    };
    match schedule {
        Schedule::Every(interval) => Job::new_repeated_async(*interval, run),
        Schedule::Cron(cron) => Job::new_async(cron.as_str(), run),
    }
}
