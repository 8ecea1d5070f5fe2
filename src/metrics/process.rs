//! The standard `process_*` metrics, named and defined as Prometheus' own client libraries
//! define them (CPU seconds, resident and virtual memory, open and maximum file descriptors,
//! start time), read from `/proc/self` at scrape time. prometheus-client has no process
//! collector. Linux only: elsewhere [`ProcessStats::read`] fails and the metrics are left out.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// One reading of this process's resource use.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time used, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// File descriptors open now.
    pub open_fds: u64,
    /// The soft limit on open file descriptors (`RLIMIT_NOFILE`); `None` when unlimited.
    pub max_fds: Option<u64>,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self/stat`, `/proc/stat` (boot time), `/proc/self/fd` and the fd limit.
    #[cfg(target_os = "linux")]
    pub fn read() -> std::io::Result<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let boot_time = boot_time_seconds(&std::fs::read_to_string("/proc/stat")?)?;
        let open_fds = std::fs::read_dir("/proc/self/fd")?.count() as u64;
        // SAFETY: sysconf and getrlimit only read process-wide values into the given struct.
        let (ticks_per_second, page_size, limit) = unsafe {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let got_limit = libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0;
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
                got_limit.then_some(limit.rlim_cur),
            )
        };
        if ticks_per_second <= 0 || page_size <= 0 {
            return Err(std::io::Error::other(
                "sysconf gave no clock tick or page size",
            ));
        }
        // rlim_t is 32 bits wide on some targets.
        #[allow(clippy::unnecessary_cast)]
        let max_fds = limit
            .filter(|&soft| soft != libc::RLIM_INFINITY)
            .map(|soft| soft as u64);
        Self::from_proc(
            &stat,
            boot_time,
            ticks_per_second as f64,
            page_size as u64,
            open_fds,
            max_fds,
        )
    }

    /// Not on Linux: no `/proc` to read.
    #[cfg(not(target_os = "linux"))]
    pub fn read() -> std::io::Result<Self> {
        Err(std::io::Error::other(
            "process metrics are read from /proc (Linux only)",
        ))
    }

    /// The reading from the text of `/proc/self/stat` (see proc(5)), the boot time, the clock
    /// tick rate, the page size and the file descriptor counts.
    pub fn from_proc(
        stat: &str,
        boot_time_seconds: f64,
        ticks_per_second: f64,
        page_size: u64,
        open_fds: u64,
        max_fds: Option<u64>,
    ) -> std::io::Result<Self> {
        // The command name (field 2) is in parentheses and may hold spaces and parentheses:
        // the fields that follow start after the last `)`, with field 3 (state) at index 0.
        let after_name = stat
            .rfind(')')
            .map(|end| &stat[end + 1..])
            .ok_or_else(|| invalid("/proc/self/stat has no `)` after the command name"))?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |number: usize| -> std::io::Result<u64> {
            fields
                .get(number - 3)
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| invalid(&format!("/proc/self/stat: field {number} is missing")))
        };
        let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
        Ok(Self {
            cpu_seconds: (utime + stime) as f64 / ticks_per_second,
            resident_bytes: field(24)?.saturating_mul(page_size),
            virtual_bytes: field(23)?,
            open_fds,
            max_fds,
            start_time_seconds: boot_time_seconds + start_ticks as f64 / ticks_per_second,
        })
    }

    /// The metrics, unprefixed (`process_…`), as a registry of their own.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        let cpu = Counter::<f64, AtomicU64>::default();
        cpu.inc_by(self.cpu_seconds);
        registry.register_with_unit(
            "process_cpu",
            "Total user and system CPU time spent",
            Unit::Seconds,
            cpu,
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory size",
            Unit::Bytes,
            gauge(self.resident_bytes as f64),
        );
        registry.register_with_unit(
            "process_virtual_memory",
            "Virtual memory size",
            Unit::Bytes,
            gauge(self.virtual_bytes as f64),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            gauge(self.open_fds as f64),
        );
        if let Some(max) = self.max_fds {
            registry.register(
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                gauge(max as f64),
            );
        }
        registry.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            gauge(self.start_time_seconds),
        );
        registry
    }
}

fn gauge(value: f64) -> Gauge<f64, AtomicU64> {
    let gauge = Gauge::<f64, AtomicU64>::default();
    gauge.set(value);
    gauge
}

fn invalid(reason: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_owned())
}

/// `btime` of `/proc/stat`: when the system booted, in seconds since the Unix epoch.
#[cfg(target_os = "linux")]
fn boot_time_seconds(proc_stat: &str) -> std::io::Result<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| invalid("/proc/stat has no btime line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line shaped like `/proc/self/stat` (a process started 123456 ticks after boot, 250
    /// user and 50 system ticks used), with a command name holding a space and a `)`.
    const STAT: &str = "4242 (orde) rwatch x) S 1 4242 4242 0 -1 4194560 1207 0 0 0 \
        250 50 0 0 20 0 5 0 123456 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn reads_the_fields_after_the_last_parenthesis() {
        let stats =
            ProcessStats::from_proc(STAT, 1_700_000_000.0, 100.0, 4096, 12, Some(8192)).unwrap();
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 2560 * 4096,
                virtual_bytes: 104_857_600,
                open_fds: 12,
                max_fds: Some(8192),
                start_time_seconds: 1_700_000_000.0 + 1234.56,
            }
        );
    }

    #[test]
    fn a_truncated_line_is_an_error_not_a_zero() {
        let error = ProcessStats::from_proc("4242 (x) S 1 2 3", 0.0, 100.0, 4096, 1, None);
        assert!(error.unwrap_err().to_string().contains("field 14"));
        assert!(ProcessStats::from_proc("no parenthesis", 0.0, 100.0, 4096, 1, None).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_as_alive_and_started_in_the_past() {
        let stats = ProcessStats::read().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(stats.resident_bytes > 0 && stats.virtual_bytes >= stats.resident_bytes);
        assert!(stats.open_fds >= 3, "{stats:?}");
        assert!(stats.start_time_seconds <= now + 1.0, "{stats:?}");
        assert!(
            stats.start_time_seconds > now - 24.0 * 3600.0 * 365.0,
            "{stats:?}"
        );
    }
}
