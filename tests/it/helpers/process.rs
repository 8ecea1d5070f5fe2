//! The child processes tests start (the daemon, the CLI, the simulator, nginx): reaped
//! whatever way a test ends ([`KillOnDrop`]), their output read line by line on a thread
//! ([`lines_of`]), signals ([`signal`]), bounded waits ([`wait_bounded`]), and whether a
//! command that ran to its end succeeded ([`assert_succeeded`]).

use std::io::{BufRead, BufReader, Read};
use std::ops::{Deref, DerefMut};
use std::process::{Child, ExitStatus, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process that is killed (SIGKILL) and reaped when dropped, unless it has exited, so
/// nothing a test starts outlives it, however the test ends.
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Every line `reader` gives (a child's stdout or stderr), read on a thread of its own. The
/// thread reads on to the end after the receiver is dropped, so the child never blocks on a
/// full pipe.
pub fn lines_of(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    received
}

/// Sends `signal` (e.g. `"INT"`, `"TERM"`, `"HUP"`) to process `pid` with `kill`.
pub fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// Asserts that a command that ran to its end (`what` names it) succeeded, showing what it
/// printed when it did not; that text (stdout, then stderr), for further checks.
pub fn assert_succeeded(what: &str, output: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what}: {text}");
    text
}

/// How `child` ended, waiting at most `limit`; `None` when it was still running (it is then
/// killed and reaped).
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
