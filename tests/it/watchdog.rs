//! The systemd watchdog while the writer is stuck: a keep-alive is sent only after a write
//! transaction went through the writer and came back, so a writer that does not come back
//! (here: waiting on another process's write lock under a long `busy_timeout`) stops the
//! keep-alives, and systemd would restart the daemon; once the writer moves, they resume.
//! (A writer that answers with an error is alive; `deploy.rs` covers that case.)

use crate::helpers::notify::{Notified, start_notified};

/// What the daemon logs each time it withholds a keep-alive.
const WITHHELD: &str = "withholding the watchdog keep-alive";

#[test]
fn the_watchdog_withholds_keep_alives_while_the_writer_is_stuck() {
    // 600 ms: a ping every 200 ms, each given 200 ms to come back; a lock waited for up to
    // a minute is a writer that does not come back.
    let Notified {
        mut daemon, notify, ..
    } = start_notified("[database]\nbusy_timeout = \"60s\"\n", "600000");
    notify.until("WATCHDOG=1");

    let lock = daemon.db().lock_writes();
    // A keep-alive from a ping answered before the lock was taken is sent before this line.
    daemon.wait_for_log(WITHHELD);
    notify.drain();
    for round in 1..=3 {
        daemon.wait_for_log(WITHHELD);
        let sent = notify.drain();
        assert!(
            !sent.iter().any(|m| m.lines().any(|l| l == "WATCHDOG=1")),
            "round {round}: a keep-alive while the writer was stuck: {sent:?}"
        );
    }
    assert_eq!(daemon.exit_status(), None, "still running: systemd decides");

    drop(lock);
    notify.until("WATCHDOG=1");
    daemon.stop();
}
