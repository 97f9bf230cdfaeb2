//! `threadtide simulate PROFILE --out DIR`: the charts, the CSV series and the summary land in
//! DIR; a bad profile is a usage error naming its line.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("threadtide-sim-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn threadtide() -> Command {
    Command::new(env!("CARGO_BIN_EXE_threadtide"))
}

#[test]
fn a_shipped_profile_writes_charts_series_and_summary() {
    let dir = out_dir("host");
    let out = threadtide()
        .args(["simulate", "host", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| wait_target | all | 325 |"), "{stdout}");
    let summary = fs::read_to_string(dir.join("summary.csv")).unwrap();
    for policy in ["host", "divisor", "wait_target"] {
        // one row per queue and one for all, per policy
        let rows = summary
            .lines()
            .filter(|l| l.starts_with(&format!("{policy},")))
            .count();
        assert_eq!(rows, 3, "{policy}: {summary}");
    }
    let series = fs::read_to_string(dir.join("series.csv")).unwrap();
    assert!(series.starts_with("policy,t_s,queue,backlog,workers,wait_s\n"));
    assert!(
        series.lines().count() > 3 * 2 * 300,
        "every sample of every queue and policy"
    );
    for chart in ["backlog.svg", "workers.svg", "wait.svg"] {
        let svg = fs::read_to_string(dir.join(chart)).unwrap();
        assert!(svg.starts_with("<svg"), "{chart}");
        for policy in ["host", "divisor", "wait_target"] {
            assert!(
                svg.contains(&format!(">\n{policy}\n</text>")),
                "{chart}: {policy} in the legend"
            );
        }
        assert!(
            svg.matches("<polyline").count() >= 3,
            "{chart}: three lines"
        );
    }
    assert!(
        fs::read_to_string(dir.join("summary.md"))
            .unwrap()
            .contains("| policy |")
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn json_output_has_every_policy() {
    let dir = out_dir("json");
    let out = threadtide()
        .args(["--json", "simulate", "flood", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = doc["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["host", "divisor", "wait_target"]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_profile_is_a_usage_error_naming_the_line() {
    let dir = out_dir("bad");
    fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("bad.profile");
    fs::write(&profile, "horizon 1h\nqueue q\n  rate 0s 1h lots\n").unwrap();
    let out = threadtide()
        .arg("simulate")
        .arg(&profile)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("lots"), "{err}");
    assert!(!dir.join("out").exists(), "nothing written");
    let out = threadtide()
        .args(["simulate", "no-such-profile", "--out"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("working-day"));
    let _ = fs::remove_dir_all(&dir);
}
