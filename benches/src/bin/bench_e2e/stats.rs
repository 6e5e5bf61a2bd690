//! Clocks and counters: process CPU time, wall clock, peak RSS, a child's CPU time.

use std::time::{SystemTime, UNIX_EPOCH};

/// CPU time (user + system, all threads) of this process so far, in nanoseconds.
pub(crate) fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Wall clock in nanoseconds since the epoch (comparable across processes on one machine).
pub(crate) fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Peak resident set size of this process, in KiB (`VmHWM`).
pub(crate) fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) of process `pid` so far, in nanoseconds, from `/proc/PID/stat`
/// (clock-tick resolution).
pub(crate) fn pid_cpu_ns(pid: u32) -> Option<u64> {
    let (user, system) = stat_times(&format!("/proc/{pid}/stat"))?;
    Some(user + system)
}

/// System (kernel) CPU time of this process so far, in nanoseconds (clock-tick resolution,
/// 10 ms on Linux): the part of [`process_cpu_ns`] spent in system calls.
pub(crate) fn process_system_ns() -> u64 {
    stat_times("/proc/self/stat").map_or(0, |(_, system)| system)
}

/// (user, system) CPU time in nanoseconds from a `/proc/.../stat` file.
fn stat_times(path: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 11 and 12 here.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some((user * 1_000_000_000 / hz, system * 1_000_000_000 / hz))
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Smallest and largest.
pub(crate) fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}
