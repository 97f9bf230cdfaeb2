//! The memory gate ([`Builder::min_free_memory`](crate::Builder::min_free_memory)): the free
//! memory of the process, read from its cgroup (v2 or v1) and `/proc/meminfo`, and whether it
//! is below the minimum, which stops the monitor from starting workers.
//!
//! The readers take the contents of the files, or a root directory standing for `/`, so the
//! unit tests feed them fixture trees.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// `free` when nothing could be read.
const NO_READING: u64 = u64::MAX;
/// A cgroup v1 limit at or above this is "no limit" (the kernel writes `LONG_MAX` rounded to a
/// page, 9223372036854771712).
const V1_UNLIMITED: u64 = 1 << 62;

/// The gate's setting and its last reading, shared by the monitor (which reads and decides),
/// the workers (which wait while it holds) and the stats.
#[derive(Debug)]
pub(crate) struct MemoryGate {
    /// The minimum of free bytes; 0 when the gate is off.
    min: AtomicU64,
    /// The last reading, [`NO_READING`] if none.
    free: AtomicU64,
    holding: AtomicBool,
    /// The last reading failed (logged once).
    unreadable: AtomicBool,
    /// Stands for `/` (a fixture tree in tests).
    root: PathBuf,
}

impl MemoryGate {
    pub(crate) fn new(min: Option<u64>) -> Self {
        MemoryGate {
            min: AtomicU64::new(min.unwrap_or(0)),
            free: AtomicU64::new(NO_READING),
            holding: AtomicBool::new(false),
            unreadable: AtomicBool::new(false),
            root: PathBuf::from("/"),
        }
    }

    /// Changes the minimum (`None` or 0: off); the monitor applies it at its next tick.
    pub(crate) fn set_min(&self, min: Option<u64>) {
        self.min.store(min.unwrap_or(0), Ordering::Release);
    }

    pub(crate) fn min(&self) -> Option<u64> {
        Some(self.min.load(Ordering::Acquire)).filter(|&m| m > 0)
    }

    /// The last reading (`None` before the first, with the gate off, or when unreadable).
    pub(crate) fn free(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Acquire)).filter(|&f| f != NO_READING)
    }

    /// Whether the gate held at the monitor's last tick: no worker starts.
    pub(crate) fn holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// Reads the free memory (when the gate is on) and decides whether the gate holds; logs at
    /// info when that changes. Called by the monitor on every tick. Memory that cannot be read
    /// does not hold the gate (logged once at warn).
    pub(crate) fn check(&self) -> bool {
        let Some(min) = self.min() else {
            self.free.store(NO_READING, Ordering::Release);
            if self.holding.swap(false, Ordering::AcqRel) {
                log::info!("memory gate: turned off: workers start again");
            }
            return false;
        };
        let free = free_memory(&self.root);
        self.free
            .store(free.unwrap_or(NO_READING), Ordering::Release);
        let Some(free) = free else {
            if !self.unreadable.swap(true, Ordering::AcqRel) {
                log::warn!(
                    "memory gate: cannot read the free memory (cgroup or /proc/meminfo): \
                     the gate does not hold"
                );
            }
            self.holding.store(false, Ordering::Release);
            return false;
        };
        self.unreadable.store(false, Ordering::Release);
        let holds = free < min;
        if self.holding.swap(holds, Ordering::AcqRel) != holds {
            let then = if holds {
                "no worker starts"
            } else {
                "workers start again"
            };
            log::info!(
                "memory gate: {} MiB free, minimum {} MiB: {then}",
                free >> 20,
                min >> 20
            );
        }
        holds
    }
}

/// The free memory of the process: the smallest of `limit - working set` over the cgroups
/// (v2 and v1) it is in and their ancestors with a limit, and `MemAvailable` from `/proc/meminfo`.
/// `root` stands for `/`. `None` when none of them can be read.
pub(crate) fn free_memory(root: &Path) -> Option<u64> {
    let cgroup = std::fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
    let meminfo = std::fs::read_to_string(root.join("proc/meminfo")).ok();
    [
        cgroup_v2_free(root, &cgroup),
        cgroup_v1_free(root, &cgroup),
        meminfo.as_deref().and_then(mem_available),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub(crate) fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The value of `key` in a cgroup `memory.stat` text (`key value` lines), 0 when the text or
/// the key is missing: nothing is known to be reclaimable.
fn stat_value(stat: Option<&str>, key: &str) -> u64 {
    stat.into_iter()
        .flat_map(str::lines)
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// Free bytes under a cgroup v2 limit: `memory.max` minus the working set, which is
/// `memory.current - inactive_file` (from `memory.stat`, as kubelet counts it): the usage
/// includes page cache that the kernel reclaims only near the limit, so a container writing
/// files would otherwise look full. `None` for `max` (no limit) or text that does not parse.
pub(crate) fn v2_free(max: &str, current: &str, stat: Option<&str>) -> Option<u64> {
    let max = max.trim();
    if max == "max" {
        return None;
    }
    let max: u64 = max.parse().ok()?;
    let current: u64 = current.trim().parse().ok()?;
    let working_set = current.saturating_sub(stat_value(stat, "inactive_file"));
    Some(max.saturating_sub(working_set))
}

/// Free bytes under a cgroup v1 limit: `memory.limit_in_bytes` minus the working set,
/// `memory.usage_in_bytes - total_inactive_file` (from `memory.stat`); `None` when unlimited
/// or unparsable.
pub(crate) fn v1_free(limit: &str, usage: &str, stat: Option<&str>) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= V1_UNLIMITED {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    let working_set = usage.saturating_sub(stat_value(stat, "total_inactive_file"));
    Some(limit.saturating_sub(working_set))
}

/// The process's cgroup path in `/proc/self/cgroup` for the v2 hierarchy (`0::/path`), or for
/// the v1 hierarchy that has the memory controller (`N:memory:/path`).
fn cgroup_path(cgroup: &str, v2: bool) -> Option<&str> {
    cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let wanted = if v2 {
            id == "0" && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "memory")
        };
        wanted.then_some(path)
    })
}

/// The smallest free memory over `dir` and its ancestors up to `mount` (a limit may be set
/// on a parent cgroup), each read with `read`. A cgroup directory missing under the mount (a
/// container whose cgroup namespace hides the path) is skipped, so the mount's own files
/// still count.
fn walk_up(mount: &Path, path: &str, read: impl Fn(&Path) -> Option<u64>) -> Option<u64> {
    let mut dir = mount.join(path.trim_start_matches('/'));
    let mut best: Option<u64> = None;
    loop {
        if let Some(free) = read(&dir) {
            best = Some(best.map_or(free, |b| b.min(free)));
        }
        if dir == mount || !dir.pop() || !dir.starts_with(mount) {
            return best;
        }
    }
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn cgroup_v2_free(root: &Path, cgroup: &str) -> Option<u64> {
    let path = cgroup_path(cgroup, true)?;
    walk_up(&root.join("sys/fs/cgroup"), path, |dir| {
        v2_free(
            &read(dir, "memory.max")?,
            &read(dir, "memory.current")?,
            read(dir, "memory.stat").as_deref(),
        )
    })
}

fn cgroup_v1_free(root: &Path, cgroup: &str) -> Option<u64> {
    let path = cgroup_path(cgroup, false)?;
    walk_up(&root.join("sys/fs/cgroup/memory"), path, |dir| {
        v1_free(
            &read(dir, "memory.limit_in_bytes")?,
            &read(dir, "memory.usage_in_bytes")?,
            read(dir, "memory.stat").as_deref(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture tree standing for `/`, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            let dir =
                std::env::temp_dir().join(format!("threadtide-gate-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Tree(dir)
        }
        fn file(&self, path: &str, text: &str) -> &Tree {
            let p = self.0.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
            self
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MEMINFO: &str = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\n\
                           MemAvailable:    8000000 kB\nBuffers:          100 kB\n";

    #[test]
    fn meminfo_is_read_in_bytes() {
        assert_eq!(mem_available(MEMINFO), Some(8_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn limits_parse_and_max_means_unlimited() {
        assert_eq!(v2_free("max\n", "100\n", None), None);
        assert_eq!(v2_free("1000\n", "300\n", None), Some(700));
        assert_eq!(v2_free("1000\n", "3000\n", None), Some(0));
        assert_eq!(v2_free("garbage", "1", None), None);
        assert_eq!(v1_free("9223372036854771712\n", "5", None), None);
        assert_eq!(v1_free("2048\n", "1024\n", None), Some(1024));
    }

    /// A container that writes files: its usage is mostly page cache, which the kernel
    /// reclaims near the limit. The inactive file cache counts as free (kubelet's working
    /// set), so the gate does not hold forever. Fails if usage were taken whole.
    #[test]
    fn inactive_file_cache_counts_as_free() {
        let v2_stat = "anon 100000\nfile 850000\nactive_file 50000\ninactive_file 800000\n";
        assert_eq!(
            v2_free("1000000\n", "990000\n", Some(v2_stat)),
            Some(810_000)
        );
        // More cache than usage (the files are read at different times): all free.
        assert_eq!(
            v2_free("1000\n", "500\n", Some("inactive_file 900\n")),
            Some(1000)
        );
        // A stat without the key, or garbage: nothing reclaimable.
        assert_eq!(v2_free("1000\n", "900\n", Some("anon 900\n")), Some(100));
        assert_eq!(
            v2_free("1000\n", "900\n", Some("inactive_file x\n")),
            Some(100)
        );
        // v1: `total_inactive_file` (the hierarchy's), not the cgroup's own `inactive_file`.
        let v1_stat = "inactive_file 5\ntotal_inactive_file 700\n";
        assert_eq!(v1_free("2048\n", "1024\n", Some(v1_stat)), Some(1724));

        let t = Tree::new("cache");
        t.file("proc/self/cgroup", "0::/emissao\n")
            .file("proc/meminfo", MEMINFO)
            .file("sys/fs/cgroup/emissao/memory.max", "1000000\n")
            .file("sys/fs/cgroup/emissao/memory.current", "990000\n");
        assert_eq!(
            free_memory(&t.0),
            Some(10_000),
            "no memory.stat: usage whole"
        );
        t.file("sys/fs/cgroup/emissao/memory.stat", v2_stat);
        assert_eq!(
            free_memory(&t.0),
            Some(810_000),
            "v2 file cache reclaimable"
        );
        let t = Tree::new("cache-v1");
        t.file("proc/self/cgroup", "4:memory:/docker/abc\n")
            .file("proc/meminfo", MEMINFO)
            .file(
                "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                "2000000\n",
            )
            .file(
                "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes",
                "1990000\n",
            )
            .file(
                "sys/fs/cgroup/memory/docker/abc/memory.stat",
                "cache 1500000\ntotal_inactive_file 1400000\n",
            );
        assert_eq!(
            free_memory(&t.0),
            Some(1_410_000),
            "v1 file cache reclaimable"
        );
    }

    #[test]
    fn cgroup_v2_limit_of_the_process_or_a_parent() {
        let t = Tree::new("v2");
        t.file("proc/self/cgroup", "0::/app.slice/worker.service\n")
            .file("proc/meminfo", MEMINFO)
            .file("sys/fs/cgroup/app.slice/worker.service/memory.max", "max\n")
            .file(
                "sys/fs/cgroup/app.slice/worker.service/memory.current",
                "100000\n",
            )
            .file("sys/fs/cgroup/app.slice/memory.max", "1000000\n")
            .file("sys/fs/cgroup/app.slice/memory.current", "400000\n");
        assert_eq!(free_memory(&t.0), Some(600_000), "the parent's limit");
        t.file(
            "sys/fs/cgroup/app.slice/worker.service/memory.max",
            "300000\n",
        );
        assert_eq!(free_memory(&t.0), Some(200_000), "the process's own limit");
    }

    #[test]
    fn cgroup_v1_limit() {
        let t = Tree::new("v1");
        t.file(
            "proc/self/cgroup",
            "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n",
        )
        .file("proc/meminfo", MEMINFO)
        .file(
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
            "536870912\n",
        )
        .file(
            "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes",
            "136870912\n",
        );
        assert_eq!(free_memory(&t.0), Some(400_000_000));
        t.file(
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(
            free_memory(&t.0),
            Some(8_000_000 * 1024),
            "unlimited: MemAvailable"
        );
    }

    #[test]
    fn without_a_limit_or_a_cgroup_file_meminfo_decides() {
        let t = Tree::new("plain");
        t.file("proc/meminfo", MEMINFO);
        assert_eq!(free_memory(&t.0), Some(8_000_000 * 1024), "no cgroup file");
        t.file("proc/self/cgroup", "0::/user.slice\n")
            .file("sys/fs/cgroup/user.slice/memory.max", "max\n")
            .file("sys/fs/cgroup/user.slice/memory.current", "5\n");
        assert_eq!(free_memory(&t.0), Some(8_000_000 * 1024), "max: unlimited");
        // A cgroup limit above what the machine has left: the machine decides.
        t.file("sys/fs/cgroup/user.slice/memory.max", "99999999999999\n");
        assert_eq!(free_memory(&t.0), Some(8_000_000 * 1024));
    }

    #[test]
    fn a_namespaced_cgroup_reads_the_mount_root() {
        let t = Tree::new("ns");
        t.file("proc/self/cgroup", "0::/\n")
            .file("proc/meminfo", MEMINFO)
            .file("sys/fs/cgroup/memory.max", "2000\n")
            .file("sys/fs/cgroup/memory.current", "500\n");
        assert_eq!(free_memory(&t.0), Some(1500));
        let missing = Tree::new("none");
        assert_eq!(free_memory(&missing.0), None, "nothing readable");
    }

    #[test]
    fn the_gate_holds_below_the_minimum_and_logs_on_change_only() {
        let t = Tree::new("gate");
        t.file("proc/meminfo", "MemAvailable: 1000 kB\n");
        let mut gate = MemoryGate::new(Some(2000 * 1024));
        gate.root = t.0.clone();
        assert!(gate.check());
        assert_eq!(gate.free(), Some(1000 * 1024));
        gate.set_min(Some(500 * 1024));
        assert!(!gate.check());
        gate.set_min(None);
        assert!(!gate.check());
        assert_eq!((gate.free(), gate.min()), (None, None));
    }
}
