//! Telling a service manager how the daemon is doing, by the `sd_notify` protocol: `READY=1`
//! once webhooks can be taken, `STOPPING=1` when shutdown begins, `STATUS=` lines for
//! `systemctl status`, and `WATCHDOG=1` keep-alives when the unit sets `WatchdogSec=`.
//!
//! Everything here does nothing when `NOTIFY_SOCKET` is unset (a terminal, Docker, the tests),
//! and a failure to notify is logged, never fatal: the daemon works the same without systemd.

use std::net::SocketAddr;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

use crate::store::writer::{WriteError, Writer};
use crate::telemetry;

/// Says the daemon is ready: the listener is bound, the store open and the writer running.
pub fn ready(listen: Option<SocketAddr>, reconciler_on: bool) {
    let listen = listen.map_or_else(|| "?".to_owned(), |a| a.to_string());
    let reconciler = if reconciler_on { "on" } else { "off" };
    let status = format!("receiving webhooks on {listen}; reconciler {reconciler}");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Says shutdown has begun, so systemd shows `deactivating` and counts `TimeoutStopSec` from
/// here, while in-flight requests and a running pass finish.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("shutting down: finishing in-flight requests"),
    ]);
}

fn notify(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// The `WATCHDOG=1` keep-alive task; stopped when dropped.
pub struct Watchdog(Option<JoinHandle<()>>);

impl Watchdog {
    /// Starts pinging when the service manager asked for it (`WATCHDOG_USEC`), else does nothing.
    ///
    /// A keep-alive is sent only after a write transaction went through the writer thread and
    /// came back, so a wedged writer (the one thing a restart cures) stops the pings and
    /// systemd restarts the daemon. A database that answers with an error (locked by another
    /// process, full) still proves the writer alive: that is unreadiness (`/readyz` says so),
    /// and a restart would not cure it.
    pub fn start(writer: &Writer) -> Self {
        let Some(timeout) = sd_notify::watchdog_enabled() else {
            return Self(None);
        };
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Self(None);
        }
        // A tick and a ping each take at most a third, so two keep-alives are never further
        // apart than two thirds of the timeout.
        let period = (timeout / 3).max(Duration::from_millis(10));
        tracing::info!(timeout = %telemetry::duration(timeout), "systemd watchdog on");
        let writer = writer.clone();
        Self(Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match tokio::time::timeout(period, writer_answers(&writer)).await {
                    Ok(true) => notify(&[NotifyState::Watchdog]),
                    Ok(false) => return,
                    Err(_) => tracing::warn!(
                        period = %telemetry::duration(period),
                        "the writer did not answer a ping; withholding the watchdog keep-alive"
                    ),
                }
            }
        })))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Pings the writer until it answers; `false` once it is shut down. A full queue is not an
/// answer (it is refused before reaching the writer), so it is retried shortly.
async fn writer_answers(writer: &Writer) -> bool {
    loop {
        match writer.ping().await {
            Ok(()) => return true,
            Err(WriteError::Storage(error)) => {
                tracing::debug!(%error, "watchdog ping failed in the database; the writer is alive");
                return true;
            }
            // Replaced: only a restart opens the file that is there now.
            Err(WriteError::Closed | WriteError::Replaced(_)) => return false,
            Err(WriteError::QueueFull) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
