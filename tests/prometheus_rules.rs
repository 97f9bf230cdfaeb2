//! The shipped alert rules (`docs/prometheus/alerts.yml`) pass `promtool check rules`, and
//! their unit tests (`docs/prometheus/alerts_test.yml`) pass `promtool test rules`: each alert
//! fires on the series it is meant for, after its `for`, and stays quiet on the others.
//! `promtool` comes with Debian's `prometheus` package (`.ci/test` installs it).

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool not found: install it (Debian: apt-get install prometheus)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid() {
    let text = promtool(&["check", "rules", "alerts.yml"]);
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let text = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_has_a_runbook_and_a_test() {
    let rules = include_str!("../docs/prometheus/alerts.yml");
    let tests = include_str!("../docs/prometheus/alerts_test.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    assert_eq!(
        rules.matches("runbook: ").count(),
        alerts.len(),
        "one runbook per alert"
    );
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "{a} has no unit test in alerts_test.yml"
        );
    }
}
