//! Measuring a process: latency percentiles, its resident memory from
//! `/proc/self/status`, and the size of a gallery's segment files. Shared by
//! `visage-bench`'s subcommands.

use std::path::Path;
use std::time::Duration;

/// Milliseconds of `d`.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// This process's memory, in bytes, from `/proc/self/status` (Linux; `None`
/// where a field is missing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcMemory {
    /// Resident set (`VmRSS`): `anon + file` (and shared memory).
    pub rss: Option<u64>,
    /// Peak resident set (`VmHWM`), since the start or the last [`reset_hwm`].
    pub hwm: Option<u64>,
    /// Resident anonymous memory (`RssAnon`): the heap, which no file backs.
    pub anon: Option<u64>,
    /// Resident file-backed memory (`RssFile`): pages of mapped files, which
    /// the kernel can drop and read again.
    pub file: Option<u64>,
}

impl ProcMemory {
    /// Read it now.
    pub fn now() -> ProcMemory {
        let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
            return ProcMemory::default();
        };
        let field = |name: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
        };
        ProcMemory {
            rss: field("VmRSS:"),
            hwm: field("VmHWM:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
        }
    }

    /// As JSON (bytes; null where unknown).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "vm_rss_bytes": self.rss,
            "vm_hwm_bytes": self.hwm,
            "rss_anon_bytes": self.anon,
            "rss_file_bytes": self.file,
        })
    }
}

/// Reset `VmHWM` to the current RSS (Linux ≥ 4.0); false where that is not possible.
pub fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Sum of the sizes of a gallery directory's segment files (what search maps).
pub fn segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "vseg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// What this process has used so far, from `/proc/self/stat` and
/// `/proc/self/io` (Linux; `None` elsewhere): differences of two readings
/// measure what happened between them, on every thread of the process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcUsage {
    /// CPU time, user and system, of every thread (in the kernel's
    /// `USER_HZ` ticks of 10 ms).
    pub cpu: Option<Duration>,
    /// Bytes the process sent, or caused to be sent, to the storage layer
    /// (`write_bytes`: page-cache writes as they are made, direct writes).
    pub written: Option<u64>,
}

impl ProcUsage {
    /// Read it now.
    pub fn now() -> ProcUsage {
        // Fields 14 and 15 of /proc/self/stat, counted after the command
        // name's closing parenthesis (the name may hold spaces).
        let cpu = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                // USER_HZ is 100 on every Linux architecture's ABI.
                Some(Duration::from_millis(ticks * 10))
            });
        let written = std::fs::read_to_string("/proc/self/io").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        ProcUsage { cpu, written }
    }

    /// What was used since `before` (`None` where either reading lacks it).
    pub fn since(&self, before: &ProcUsage) -> ProcUsage {
        ProcUsage {
            cpu: self.cpu.zip(before.cpu).map(|(a, b)| a.saturating_sub(b)),
            written: self
                .written
                .zip(before.written)
                .map(|(a, b)| a.saturating_sub(b)),
        }
    }
}
