//! A task's cgroup read into the metrics types containerd understands:
//! `io.containerd.cgroups.v1.Metrics` on cgroup v1 hosts and
//! `io.containerd.cgroups.v2.Metrics` on v2 (what `ctr task metrics` and
//! CRI's stats decode).

use crate::executor::Metrics;
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::{Message, MessageField};
use std::path::{Path, PathBuf};

/// Type URL of cgroup v1 metrics.
pub const V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
/// Type URL of cgroup v2 metrics.
pub const V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn num(path: &Path) -> u64 {
    read(path).trim().parse().unwrap_or(0)
}

/// `key value` lines.
fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// Metrics of a cgroup v1 container whose directory for each controller
/// `dir` gives.
pub fn v1_metrics(dir: impl Fn(&str) -> PathBuf) -> Metrics {
    let mem = dir("memory");
    let stat = read(&mem.join("memory.stat"));
    let mut memory = v1::MemoryStat::new();
    memory.cache = field(&stat, "cache");
    memory.rss = field(&stat, "rss");
    memory.mapped_file = field(&stat, "mapped_file");
    memory.pg_fault = field(&stat, "pgfault");
    memory.pg_maj_fault = field(&stat, "pgmajfault");
    memory.active_anon = field(&stat, "active_anon");
    memory.inactive_anon = field(&stat, "inactive_anon");
    memory.active_file = field(&stat, "active_file");
    memory.inactive_file = field(&stat, "inactive_file");
    memory.hierarchical_memory_limit = field(&stat, "hierarchical_memory_limit");
    memory.total_cache = field(&stat, "total_cache");
    memory.total_rss = field(&stat, "total_rss");
    let mut usage = v1::MemoryEntry::new();
    usage.usage = num(&mem.join("memory.usage_in_bytes"));
    usage.limit = num(&mem.join("memory.limit_in_bytes"));
    usage.max = num(&mem.join("memory.max_usage_in_bytes"));
    usage.failcnt = num(&mem.join("memory.failcnt"));
    memory.usage = MessageField::some(usage);

    let acct = dir("cpuacct");
    let mut cpu_usage = v1::CPUUsage::new();
    cpu_usage.total = num(&acct.join("cpuacct.usage"));
    cpu_usage.user = num(&acct.join("cpuacct.usage_user"));
    cpu_usage.kernel = num(&acct.join("cpuacct.usage_sys"));
    let cpu_stat = read(&dir("cpu").join("cpu.stat"));
    let mut throttle = v1::Throttle::new();
    throttle.periods = field(&cpu_stat, "nr_periods");
    throttle.throttled_periods = field(&cpu_stat, "nr_throttled");
    throttle.throttled_time = field(&cpu_stat, "throttled_time");
    let mut cpu = v1::CPUStat::new();
    cpu.usage = MessageField::some(cpu_usage);
    cpu.throttling = MessageField::some(throttle);

    let pids_dir = dir("pids");
    let mut pids = v1::PidsStat::new();
    pids.current = num(&pids_dir.join("pids.current"));
    pids.limit = num(&pids_dir.join("pids.max"));

    let oom = read(&mem.join("memory.oom_control"));
    let mut oom_control = v1::MemoryOomControl::new();
    oom_control.oom_kill_disable = field(&oom, "oom_kill_disable");
    oom_control.under_oom = field(&oom, "under_oom");
    oom_control.oom_kill = field(&oom, "oom_kill");

    let mut m = v1::Metrics::new();
    m.memory = MessageField::some(memory);
    m.cpu = MessageField::some(cpu);
    m.pids = MessageField::some(pids);
    m.memory_oom_control = MessageField::some(oom_control);
    Metrics {
        type_url: V1_METRICS.into(),
        value: m.write_to_bytes().unwrap_or_default(),
    }
}

/// Metrics of a cgroup v2 container in `dir`.
pub fn v2_metrics(dir: &Path) -> Metrics {
    let stat = read(&dir.join("memory.stat"));
    let mut memory = v2::MemoryStat::new();
    memory.anon = field(&stat, "anon");
    memory.file = field(&stat, "file");
    memory.kernel_stack = field(&stat, "kernel_stack");
    memory.slab = field(&stat, "slab");
    memory.shmem = field(&stat, "shmem");
    memory.file_mapped = field(&stat, "file_mapped");
    memory.active_anon = field(&stat, "active_anon");
    memory.inactive_anon = field(&stat, "inactive_anon");
    memory.usage = num(&dir.join("memory.current"));
    memory.usage_limit = match read(&dir.join("memory.max")).trim() {
        "max" | "" => u64::MAX,
        v => v.parse().unwrap_or(u64::MAX),
    };
    memory.max_usage = num(&dir.join("memory.peak"));
    let cpu_stat = read(&dir.join("cpu.stat"));
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = field(&cpu_stat, "usage_usec");
    cpu.user_usec = field(&cpu_stat, "user_usec");
    cpu.system_usec = field(&cpu_stat, "system_usec");
    cpu.nr_periods = field(&cpu_stat, "nr_periods");
    cpu.nr_throttled = field(&cpu_stat, "nr_throttled");
    cpu.throttled_usec = field(&cpu_stat, "throttled_usec");
    let mut pids = v2::PidsStat::new();
    pids.current = num(&dir.join("pids.current"));
    pids.limit = num(&dir.join("pids.max"));
    let events = read(&dir.join("memory.events"));
    let mut memory_events = v2::MemoryEvents::new();
    memory_events.low = field(&events, "low");
    memory_events.high = field(&events, "high");
    memory_events.max = field(&events, "max");
    memory_events.oom = field(&events, "oom");
    memory_events.oom_kill = field(&events, "oom_kill");
    let mut m = v2::Metrics::new();
    m.memory = MessageField::some(memory);
    m.cpu = MessageField::some(cpu);
    m.pids = MessageField::some(pids);
    m.memory_events = MessageField::some(memory_events);
    Metrics {
        type_url: V2_METRICS.into(),
        value: m.write_to_bytes().unwrap_or_default(),
    }
}

/// Metrics of a task without a cgroup of its own (run inside the shim):
/// the right type for this host, with only the pid count (one) filled in;
/// its usage is the shim's, not separable.
pub fn without_cgroup(v2_host: bool) -> Metrics {
    if v2_host {
        let mut pids = v2::PidsStat::new();
        pids.current = 1;
        let mut m = v2::Metrics::new();
        m.pids = MessageField::some(pids);
        Metrics {
            type_url: V2_METRICS.into(),
            value: m.write_to_bytes().unwrap_or_default(),
        }
    } else {
        let mut pids = v1::PidsStat::new();
        pids.current = 1;
        let mut m = v1::Metrics::new();
        m.pids = MessageField::some(pids);
        Metrics {
            type_url: V1_METRICS.into(),
            value: m.write_to_bytes().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_and_v2_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(p.join("memory.limit_in_bytes"), "67108864\n").unwrap();
        std::fs::write(p.join("memory.stat"), "cache 5\nrss 7\nanon 9\n").unwrap();
        std::fs::write(p.join("cpuacct.usage"), "123\n").unwrap();
        std::fs::write(
            p.join("cpu.stat"),
            "nr_periods 4\nnr_throttled 2\nusage_usec 11\n",
        )
        .unwrap();
        std::fs::write(p.join("pids.current"), "3\n").unwrap();
        std::fs::write(p.join("memory.current"), "2000\n").unwrap();
        std::fs::write(p.join("memory.max"), "max\n").unwrap();
        let m = v1_metrics(|_| p.to_path_buf());
        assert_eq!(m.type_url, V1_METRICS);
        let m = v1::Metrics::parse_from_bytes(&m.value).unwrap();
        assert_eq!(m.memory.usage.usage, 1000);
        assert_eq!(m.memory.usage.limit, 64 << 20);
        assert_eq!((m.memory.cache, m.memory.rss), (5, 7));
        assert_eq!(m.cpu.usage.total, 123);
        assert_eq!(m.cpu.throttling.throttled_periods, 2);
        assert_eq!(m.pids.current, 3);
        let m = v2_metrics(p);
        assert_eq!(m.type_url, V2_METRICS);
        let m = v2::Metrics::parse_from_bytes(&m.value).unwrap();
        assert_eq!(
            (m.memory.usage, m.memory.usage_limit, m.memory.anon),
            (2000, u64::MAX, 9)
        );
        assert_eq!(m.cpu.usage_usec, 11);
        assert_eq!(m.pids.current, 3);
    }
}
