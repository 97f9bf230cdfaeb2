//! What /proc says about the browsers: is a process running (not a zombie), which processes
//! belong to a profile directory, zombies of a parent, memory as PSS over a process tree.
#![allow(dead_code)] // the example and each test use a different part

use std::path::Path;
use std::time::{Duration, Instant};

/// (state, ppid) of `pid` from /proc/<pid>/stat; `None` when there is no such process.
pub fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses; it ends at the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The process exists and is neither a zombie nor dead.
pub fn running(pid: u32) -> bool {
    pid != 0 && stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The values of `--user-data-dir=` in `pid`'s command line. Chromium's helpers (zygote,
/// renderers, GPU, utilities) rewrite their process title into ONE string, arguments joined by
/// spaces, so an argument ends at a NUL or a space (`BrowserConfig::check` refuses a profile
/// root with whitespace).
fn data_dirs(pid: u32) -> Vec<String> {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&raw);
    text.split(['\0', ' '])
        .filter_map(|a| a.strip_prefix("--user-data-dir="))
        .map(str::to_owned)
        .collect()
}

fn with_data_dir(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| running(*pid) && data_dirs(*pid).iter().any(|d| matches(d)))
        .collect()
}

/// Running processes (zombies excluded) of the profile directory `dir`: the processes of
/// one browser, its main process and its helpers (all have `--user-data-dir=<dir>`).
pub fn with_profile(dir: &Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    with_data_dir(|a| a == dir)
}

/// Running processes whose profile directory's path starts with `prefix` (a root directory
/// plus a name prefix: every browser made there).
pub fn with_profile_prefix(prefix: &Path) -> Vec<u32> {
    let prefix = prefix.display().to_string();
    with_data_dir(|a| a.starts_with(&prefix))
}

/// Waits until no process of the profile `dir` runs; past `within`, kills what is left
/// (`kill -9`) and waits as long again. Returns whether none is left.
pub fn wait_gone(dir: &Path, within: Duration) -> bool {
    let mut deadline = Instant::now() + within;
    let mut killed = false;
    loop {
        let left = with_profile(dir);
        if left.is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            if killed {
                log::warn!("processes {left:?} of {} still running", dir.display());
                return false;
            }
            kill(&left);
            killed = true;
            deadline = Instant::now() + within;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `kill -9` of every pid in `pids` (the kill command: no unsafe code in the example).
pub fn kill(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .args(pids.iter().map(u32::to_string))
        .status();
}

/// Zombie children of `parent` (state Z, waiting to be reaped by it).
pub fn zombies_of(parent: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| stat(*pid).is_some_and(|(state, ppid)| state == 'Z' && ppid == parent))
        .collect()
}

/// `root` and every process under it.
pub fn tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?.1)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found
}

/// Proportional set size of `root`'s process tree, in bytes: the sum of `Pss:` in each
/// process's /proc/<pid>/smaps_rollup (shared pages counted once over the tree, unlike RSS).
pub fn pss_tree(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("Pss:"))
                .filter_map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .sum::<u64>()
                * 1024
        })
        .sum()
}
