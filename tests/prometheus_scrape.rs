//! A real Prometheus server (Debian's `prometheus` package) scrapes a real `rpa_worker` built
//! with `--features metrics` every second, with the shipped alert rules loaded, and the test
//! reads the numbers back through Prometheus' HTTP API (`/api/v1/query`, `/api/v1/rules`):
//! proof that the exposition parses in the real thing and the rules evaluate against it.
#![cfg(all(feature = "metrics", feature = "redis"))]

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::redis::RedisServer;
use support::wait_until;

/// Prometheus needs a few seconds to start and scrape; on a loaded 2-core machine more.
const PATIENCE: Duration = Duration::from_secs(60);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `rpa_worker` built with the `metrics` feature. Other tests build it without the feature at
/// the same path; test binaries run one after another, and each builds it before it runs it.
fn rpa_worker_with_metrics() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--quiet",
        "--example",
        "rpa_worker",
        "--features",
        "metrics",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("run cargo").success(),
        "build rpa_worker"
    );
    profile_dir.join("examples").join("rpa_worker")
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The single value of an instant query's vector result, if there is exactly one.
fn query(port: u16, q: &str) -> Option<f64> {
    let body = get(port, &format!("/api/v1/query?query={}", encode(q)))?;
    // Go's HTTP server may answer chunked: take the JSON object out of the body.
    let json = &body[body.find('{')?..=body.rfind('}')?];
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_rpa_worker_and_answers_queries_with_the_rules_loaded() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("threadtide-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let metrics_port = free_port();
    let bin = rpa_worker_with_metrics();
    let worker = Command::new(&bin)
        .args(["--redis", &redis.url(), "--results", "fila:resultados"])
        .args(["--queue", "conferencia=fila:conferencia"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--init-ms", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _worker = Killed(worker);
    let mut conn = redis.conn();
    let jobs: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"id":"{i}","ms":20}}"#))
        .collect();
    redis::cmd("RPUSH")
        .arg("fila:conferencia")
        .arg(&jobs)
        .query::<()>(&mut conn)
        .unwrap();

    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prometheus/alerts.yml");
    let prom_port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: threadtide\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus not found: install it (Debian: apt-get install prometheus)");
    let _prom = Killed(prom);

    wait_until(
        PATIENCE,
        "Prometheus to scrape 20 finished jobs",
        || {
            query(
                prom_port,
                r#"sum(threadtide_jobs_total{job="threadtide",outcome="ok"})"#,
            ) == Some(20.0)
        },
        || {
            (
                query(prom_port, r#"up{job="threadtide"}"#),
                get(metrics_port, "/metrics").map(|t| t.len()),
            )
        },
    );
    assert_eq!(query(prom_port, r#"up{job="threadtide"}"#), Some(1.0));
    assert_eq!(
        query(
            prom_port,
            r#"max by (queue) (threadtide_source_up{queue="conferencia"})"#
        ),
        Some(1.0)
    );
    // The histogram parses as one: its count and a quantile through histogram_quantile.
    assert_eq!(
        query(
            prom_port,
            r#"sum(threadtide_job_duration_seconds_count{queue="conferencia"})"#
        ),
        Some(20.0)
    );
    let p50 = query(
        prom_port,
        r#"histogram_quantile(0.5, sum by (le) (threadtide_job_duration_seconds_bucket{queue="conferencia"}))"#,
    )
    .expect("a quantile");
    assert!(p50 > 0.0 && p50 <= 0.1, "p50 of 20 ms jobs: {p50}");
    // The rules loaded and evaluate without error against the real series (each is "unknown"
    // until its first evaluation, once a second).
    let healthy =
        || get(prom_port, "/api/v1/rules").map_or(0, |r| r.matches("\"health\":\"ok\"").count());
    wait_until(
        PATIENCE,
        "the 6 rules evaluated, all healthy",
        || healthy() == 6,
        || get(prom_port, "/api/v1/rules"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
