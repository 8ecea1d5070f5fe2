//! When passes run: a first one at start (catching up after downtime), then one per tick of
//! `[reconciler] interval` or `cron` (tokio-cron-scheduler); a reload can change the schedule.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
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
        show_interval(&reconciler, &schedule);
        tracing::info!(%schedule, "the reconciler is on");
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
        show_interval(&self.reconciler, &schedule);
        tracing::info!(%schedule, "the reconciler's schedule changed");
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

/// `every 1m` or `cron "0 */5 * * * *"`, for log lines.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(interval) => {
                write!(f, "every {}", humantime::format_duration(*interval))
            }
            Schedule::Cron(cron) => write!(f, "cron {cron:?}"),
        }
    }
}

/// Sets `orderwatch_reconciler_interval_seconds` to the longest gap of `schedule` from now.
fn show_interval(reconciler: &Reconciler, schedule: &Schedule) {
    let gap = longest_gap(schedule, Utc::now()).unwrap_or_default();
    reconciler
        .metrics()
        .reconciler_interval
        .set(gap.as_secs_f64());
}

/// How far ticks of `schedule` get from one another, looking at those in the 7 days after
/// `from` (at least two, at most [`TICKS_LOOKED_AT`]): the interval, or for a cron schedule its
/// longest gap (a weekday-only schedule has a weekend between two ticks). `None` for a cron
/// expression the scheduler would not accept either, or one that never ticks twice.
pub fn longest_gap(schedule: &Schedule, from: DateTime<Utc>) -> Option<Duration> {
    let cron = match schedule {
        Schedule::Every(interval) => return Some(*interval),
        Schedule::Cron(cron) => cron,
    };
    // Parsed as tokio-cron-scheduler parses it (`Job::new_async`).
    let cron = CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(cron)
        .ok()?;
    let horizon = from + chrono::Duration::days(7);
    // One tick after another, as the scheduler finds each (croner's own iterator skips a
    // second after every tick, so it would see an every-second schedule as every 2 s).
    let mut ticks = vec![cron.find_next_occurrence(&from, false).ok()?];
    while let Some(&last) = ticks.last()
        && (ticks.len() < 2 || (last <= horizon && ticks.len() < TICKS_LOOKED_AT))
    {
        ticks.push(cron.find_next_occurrence(&last, false).ok()?);
    }
    ticks
        .windows(2)
        .filter_map(|pair| (pair[1] - pair[0]).to_std().ok())
        .max()
}

/// The most ticks of a cron schedule [`longest_gap`] looks at (an every-second schedule has
/// 604,800 in a week; its gap is clear long before).
const TICKS_LOOKED_AT: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn schedules_read_as_words_in_logs() {
        assert_eq!(
            Schedule::Every(Duration::from_secs(60)).to_string(),
            "every 1m"
        );
        assert_eq!(
            Schedule::Every(Duration::from_secs(90)).to_string(),
            "every 1m 30s"
        );
        assert_eq!(
            Schedule::Cron("0 */5 * * * *".into()).to_string(),
            "cron \"0 */5 * * * *\""
        );
    }

    #[test]
    fn the_gap_is_the_interval_or_the_longest_wait_between_cron_ticks() {
        let monday = at("2024-01-01T10:00:00Z");
        let every = Schedule::Every(Duration::from_secs(45));
        assert_eq!(longest_gap(&every, monday), Some(Duration::from_secs(45)));
        let five_minutes = Schedule::Cron("0 */5 * * * *".into());
        assert_eq!(
            longest_gap(&five_minutes, monday),
            Some(Duration::from_secs(300))
        );
        // 09:00 to 17:00 on weekdays: from Friday 17:00 to Monday 09:00 is the longest wait.
        let office_hours = Schedule::Cron("0 0 9-17 * * Mon-Fri".into());
        assert_eq!(
            longest_gap(&office_hours, monday),
            Some(Duration::from_secs(64 * 3600))
        );
        // Monthly: fewer than two ticks in a week, so the next two (1 February and 1 March
        // 2024) are compared.
        let monthly = Schedule::Cron("0 0 0 1 * *".into());
        assert_eq!(
            longest_gap(&monthly, monday),
            Some(Duration::from_secs(29 * 86_400))
        );
        let every_second = Schedule::Cron("* * * * * *".into());
        assert_eq!(
            longest_gap(&every_second, monday),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            longest_gap(&Schedule::Cron("nonsense".into()), monday),
            None
        );
    }
}
