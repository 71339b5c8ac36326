//! Process memory, read from `/proc/<pid>/status` (Linux).

/// Resident set size now (`VmRSS`) and its peak so far (`VmHWM`), in kB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

impl Memory {
    pub fn rss_mb(&self) -> f64 {
        self.rss_kb as f64 / 1024.0
    }
    pub fn hwm_mb(&self) -> f64 {
        self.hwm_kb as f64 / 1024.0
    }
}

/// The memory of process `pid`; `None` when `/proc` is unavailable or the process is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&status)
}

/// Parses the `VmRSS:` and `VmHWM:` lines of a `/proc/<pid>/status` document.
pub fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Memory {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let doc = "Name:\tappstrate\nVmHWM:\t   12000 kB\nVmRSS:\t    9216 kB\n";
        let m = parse_status(doc).unwrap();
        assert_eq!(
            m,
            Memory {
                rss_kb: 9216,
                hwm_kb: 12000
            }
        );
        assert_eq!(m.rss_mb(), 9.0);
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn reads_own_process() {
        let m = memory(std::process::id()).expect("/proc/self/status");
        assert!(m.rss_kb > 0 && m.hwm_kb >= m.rss_kb);
    }
}

/// CPU time (user + system) process `pid` has used so far; `None` when `/proc` is unavailable.
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(std::time::Duration::from_micros(ticks * 1_000_000 / hz))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is the 12th field after it, stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn parses_stat_ticks() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 123 0 0";
        assert_eq!(parse_stat_ticks(line), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert!(cpu_time(std::process::id()).is_some());
    }
}
