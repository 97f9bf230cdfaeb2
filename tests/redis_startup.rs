//! Start-up checks: a warning when the server would lose jobs silently (AOF off, an evicting
//! maxmemory policy), silence when it is configured safely.
#![cfg(feature = "redis")]

mod support;

use parking_lot::Mutex;
use support::redis::RedisServer;
use threadtide::RedisSource;

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.level() == log::Level::Warn {
            self.0.lock().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static LOG: Capture = Capture(Mutex::new(Vec::new()));

fn warnings_for(queue: &str) -> Vec<String> {
    LOG.0
        .lock()
        .iter()
        .filter(|m| m.contains(queue))
        .cloned()
        .collect()
}

#[test]
fn unsafe_server_settings_are_warned_about_and_safe_ones_are_not() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Warn);

    let risky =
        RedisServer::start_with(&["--appendonly", "no", "--maxmemory-policy", "allkeys-lru"]);
    let source = RedisSource::builder(risky.url(), "fila:risky")
        .build()
        .unwrap();
    source.summary().unwrap(); // the first connection runs the checks
    let warnings = warnings_for("fila:risky");
    assert!(
        warnings.iter().any(|w| w.contains("appendonly is off")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("maxmemory-policy is allkeys-lru")),
        "{warnings:?}"
    );

    let safe = RedisServer::start_durable();
    let source = RedisSource::builder(safe.url(), "fila:safe")
        .build()
        .unwrap();
    source.summary().unwrap();
    assert_eq!(warnings_for("fila:safe"), Vec::<String>::new());
}

#[test]
fn bad_source_settings_are_build_errors_naming_the_field() {
    let url = "redis://127.0.0.1:1/";
    let e = RedisSource::builder("not a url", "q").build().unwrap_err();
    assert_eq!((e.field(), e.value()), ("url", "not a url"));
    let e = RedisSource::builder(url, "").build().unwrap_err();
    assert_eq!(e.field(), "queue_key");
    let e = RedisSource::builder(url, "q")
        .max_attempts(0)
        .build()
        .unwrap_err();
    assert_eq!((e.field(), e.value()), ("max_attempts", "0"));
    let e = RedisSource::builder(url, "q")
        .heartbeat_interval(std::time::Duration::from_secs(2))
        .build()
        .unwrap_err();
    assert_eq!((e.field(), e.value()), ("worker_ttl", "5s"));
    let e = RedisSource::builder(url, "q")
        .block_timeout(std::time::Duration::from_millis(1))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "block_timeout");
    let e = RedisSource::builder(url, "q")
        .results("")
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "results");
}
