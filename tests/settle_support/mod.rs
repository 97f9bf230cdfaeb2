//! Helpers shared by the settle tests (`redis_settle.rs`, `redis_wrong_type.rs`).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Commands;
use threadtide::{RedisSource, RedisSourceBuilder};

use crate::support::redis::RedisServer;
use crate::support::{PATIENCE, wait_until};

pub const Q: &str = "fila:conferencia";
pub const RESULTS: &str = "fila:resultados";
pub const DEAD: &str = "fila:conferencia:dead";

pub fn source(server: &RedisServer) -> RedisSourceBuilder<String> {
    RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .decoder(|b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string()))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .heartbeat_interval(Duration::from_millis(100))
        .worker_ttl(Duration::from_secs(3))
        .block_timeout(Duration::from_millis(100))
}

/// Executions per payload.
#[derive(Clone, Default)]
pub struct Runs(Arc<Mutex<HashMap<Vec<u8>, u32>>>);

impl Runs {
    pub fn record(&self, payload: &[u8]) -> u32 {
        let mut m = self.0.lock();
        let n = m.entry(payload.to_vec()).or_default();
        *n += 1;
        *n
    }
    pub fn of(&self, payload: &[u8]) -> u32 {
        self.0.lock().get(payload).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u32 {
        self.0.lock().values().sum()
    }
}

/// Where every job is, read from the server.
pub struct Places {
    pub results: Vec<Vec<u8>>,
    pub dead: Vec<serde_json::Value>,
    pub ready: usize,
    pub delayed: usize,
    pub processing: usize,
}

impl std::fmt::Debug for Places {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let results: Vec<_> = self
            .results
            .iter()
            .map(|r| String::from_utf8_lossy(r))
            .collect();
        let dead: Vec<_> = self.dead.iter().map(|d| d["payload"].to_string()).collect();
        f.debug_struct("Places")
            .field("ready", &self.ready)
            .field("delayed", &self.delayed)
            .field("processing", &self.processing)
            .field("results", &(results.len(), results))
            .field("dead", &(dead.len(), dead))
            .finish()
    }
}

impl Places {
    pub fn read(c: &mut redis::Connection) -> Places {
        let results: Vec<Vec<u8>> = c.lrange(RESULTS, 0, -1).unwrap_or_default();
        let dead: Vec<String> = c.lrange(DEAD, 0, -1).unwrap_or_default();
        let keys: Vec<String> = c.keys(format!("{Q}:processing:*")).unwrap();
        let processing = keys
            .iter()
            .map(|k| c.llen::<_, usize>(k).unwrap_or(0))
            .sum();
        Places {
            results,
            dead: dead
                .iter()
                .map(|d| serde_json::from_str(d).unwrap())
                .collect(),
            ready: c.llen(Q).unwrap_or(0),
            delayed: c.zcard(format!("{Q}:delayed")).unwrap_or(0),
            processing,
        }
    }

    pub fn settled(&self) -> usize {
        self.results.len() + self.dead.len()
    }

    pub fn in_flight(&self) -> usize {
        self.ready + self.delayed + self.processing
    }
}

pub fn wait_settled(c: &mut redis::Connection, jobs: usize) -> Places {
    let last = Mutex::new(None);
    wait_until(
        PATIENCE,
        "every job settled",
        || {
            let p = Places::read(c);
            let done = p.in_flight() == 0 && p.settled() >= jobs;
            *last.lock() = Some(p);
            done
        },
        || format!("{:?}", last.lock()),
    );
    Places::read(c)
}
