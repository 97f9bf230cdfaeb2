//! The settle scripts against real `redis-server` processes: a server that stalls past the
//! read timeout, payloads with any bytes, processes with different `max_attempts`, and who a
//! dead letter names. Every case checks that each job ends in exactly one place. (Keys of the
//! wrong type: `redis_wrong_type.rs`.)
#![cfg(feature = "redis")]

mod settle_support;
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Commands;
use settle_support::{Places, Q, RESULTS, Runs, source, wait_settled};
use support::redis::RedisServer;
use support::{PATIENCE, wait_until};
use threadtide::{JobError, RedisSource, ThreadPoolManager};

// ---------------------------------------------------------------------------------------
// Item 2: a stall longer than the read timeout. The first settle times out on the client but
// runs when the server wakes; the retried call must change nothing, even though the next job
// (moved into the same processing list by the first call) has the same bytes.
// ---------------------------------------------------------------------------------------

#[test]
fn a_settle_retried_after_a_stall_never_touches_the_next_identical_job() {
    let server = RedisServer::start_with(&["--appendonly", "no", "--enable-debug-command", "yes"]);
    let mut c = server.conn();
    let source = source(&server)
        .io_timeout(Duration::from_millis(150)) // reads time out after 250 ms
        .build()
        .unwrap();
    let jobs = 600;
    source.push(&vec!["same order"; jobs]).unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(50)
        .max_threads_per_type(4)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                r.record(id.as_bytes());
                std::thread::sleep(Duration::from_millis(1));
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let mut stalls = 0;
    for threshold in [100, 300] {
        wait_until(
            PATIENCE,
            "jobs under way",
            || runs.total() >= threshold,
            || Places::read(&mut server.conn()),
        );
        // The server sleeps 1 s: every settle in flight times out (250 ms) on its worker.
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(1)
            .query(&mut c)
            .unwrap();
        stalls += 1;
    }
    let p = wait_settled(&mut c, jobs);
    pool.shutdown();
    pool.wait().unwrap();
    let timeouts = source.stats().reconnects;
    eprintln!(
        "stall: {jobs} identical payloads, {stalls} stalls of 1 s, {} executions, {} results, \
         {timeouts} reconnects",
        runs.total(),
        p.results.len()
    );
    assert!(timeouts > 0, "the stalls must have timed out some calls");
    assert_eq!(
        p.results.len() as u32,
        runs.total(),
        "one result per execution: {p:?}"
    );
    assert!(p.dead.is_empty(), "{:?}", p.dead);
    assert!(p.results.len() >= jobs);
    let settles: usize = c.hlen(format!("{Q}:settles")).unwrap();
    assert_eq!(
        settles, 0,
        "workers that left leave no settle record behind"
    );
}

// ---------------------------------------------------------------------------------------
// Item 6: payloads round-trip byte for byte, whatever their bytes, including ones that look
// like the internal envelope; other readers of the list see `ESC tt2:` envelopes only for
// jobs that went back to it.
// ---------------------------------------------------------------------------------------

#[test]
fn payloads_round_trip_byte_exact_to_the_executor_the_results_and_the_dead_letters() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .heartbeat_interval(Duration::from_millis(100))
        .worker_ttl(Duration::from_secs(3))
        .block_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let tricky: Vec<Vec<u8>> = vec![
        b"\x1ftt1:3:ab:looks like the old envelope".to_vec(),
        b"\x1ftt2:3:5:ab:0123456789abcdef:looks like the envelope".to_vec(),
        b"\x1ftt2:".to_vec(),
        b"\x1ftt2:1:5:0:04263884e0a4b0e1:p".to_vec(), // an envelope with one wrong digit
        b"".to_vec(),
        b"\x00\xff\x1f\n".to_vec(),
        "ol\u{e1} \"json\"".as_bytes().to_vec(),
    ];
    // Each payload twice: one copy succeeds on its second run, the other ends dead.
    let mut pushed = tricky.clone();
    pushed.extend(tricky.iter().map(|p| [b"D".as_slice(), p].concat()));
    source.push(&pushed).unwrap();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let runs = Runs::default();
    let (s, r) = (Arc::clone(&seen), runs.clone());
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, job: &Vec<u8>| {
                s.lock().push(job.clone());
                let n = r.record(job);
                if n == 1 {
                    return Err(JobError::retryable("first run fails: goes back wrapped"));
                }
                if job.starts_with(b"D") {
                    return Err(JobError::permanent("dead on the second run"));
                }
                Ok(job.clone())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let p = wait_settled(&mut c, pushed.len());
    pool.shutdown();
    pool.wait().unwrap();
    for payload in &pushed {
        assert_eq!(runs.of(payload), 2, "{payload:?} ran twice, as itself");
    }
    assert_eq!(
        seen.lock().len(),
        pushed.len() * 2,
        "no other bytes reached it"
    );
    let mut results = p.results.clone();
    results.sort();
    let mut want = tricky.clone();
    want.sort();
    assert_eq!(results, want, "results byte-exact");
    let mut dead: Vec<Vec<u8>> = p
        .dead
        .iter()
        .map(|d| {
            assert_eq!(d["attempts"], 2, "{d}");
            match d["payload"].as_str() {
                Some(text) => text.as_bytes().to_vec(),
                None => {
                    let hex = d["payload_hex"].as_str().unwrap();
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect()
                }
            }
        })
        .collect();
    dead.sort();
    let mut want_dead: Vec<Vec<u8>> = tricky
        .iter()
        .map(|p| [b"D".as_slice(), p].concat())
        .collect();
    want_dead.sort();
    assert_eq!(dead, want_dead, "dead letters byte-exact");
}

/// What another reader of the main list sees of a retried job: the envelope, then the bytes.
#[test]
fn a_retried_job_goes_back_to_the_list_as_an_envelope_around_the_exact_bytes() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = source(&server)
        .retry_backoff(Duration::from_secs(3600), Duration::from_secs(3600))
        .build()
        .unwrap();
    source.push(&["{\"id\":7}"]).unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _: &String| Err::<Vec<u8>, _>(JobError::retryable("later")),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let delayed = format!("{Q}:delayed");
    wait_until(
        PATIENCE,
        "the job waits for its retry",
        || c.zcard::<_, usize>(&delayed).unwrap() == 1,
        || Places::read(&mut server.conn()),
    );
    pool.shutdown();
    pool.wait().unwrap();
    let entry: Vec<Vec<u8>> = c.zrange(&delayed, 0, -1).unwrap();
    let text = String::from_utf8(entry[0].clone()).unwrap();
    let fields: Vec<&str> = text.splitn(6, ':').collect();
    assert_eq!(fields[0], "\x1ftt2", "{text:?}");
    assert_eq!(fields[1], "1", "runs so far: {text:?}");
    assert_eq!(
        fields[2], "5",
        "the cap it carries (max_attempts): {text:?}"
    );
    assert_eq!(fields[4].len(), 16, "check: {text:?}");
    assert_eq!(
        fields[5], "{\"id\":7}",
        "the producer's bytes, unchanged, after the header"
    );
}

// ---------------------------------------------------------------------------------------
// Item 12 (dead-letter half): the record names the worker as logs and events do.
// ---------------------------------------------------------------------------------------

#[test]
fn a_dead_letter_names_the_worker_thread_and_keeps_its_redis_id() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = source(&server).build().unwrap();
    source.push(&["bad order"]).unwrap();
    let thread: Arc<Mutex<Option<String>>> = Arc::default();
    let t = Arc::clone(&thread);
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            // The name logs and events give the worker (the OS keeps only 15 bytes of it).
            move |w: &threadtide::WorkerInfo| {
                *t.lock() = Some(w.name().to_owned());
                Ok::<_, Infallible>(())
            },
            move |_, _: &String| Err::<Vec<u8>, _>(JobError::permanent("refused by the site")),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let p = wait_settled(&mut c, 1);
    pool.shutdown();
    pool.wait().unwrap();
    let thread = thread.lock().clone().expect("the worker started");
    let record = &p.dead[0];
    assert_eq!(record["worker"], thread.as_str(), "{record}");
    let wid = record["worker_id"].as_str().unwrap();
    assert!(
        wid.contains(&format!(":{}:", std::process::id())),
        "the Redis id (host:pid:nonce:slot:generation): {record}"
    );
}

// ---------------------------------------------------------------------------------------
// Item 14: processes with different `max_attempts` on one queue agree: a job is judged by the
// cap of the process that first ran it, which travels with the job.
// ---------------------------------------------------------------------------------------

#[test]
fn a_job_keeps_the_cap_of_the_process_that_first_ran_it() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let runs = Arc::new(AtomicU32::new(0));
    let pool_with = |max_attempts: u32| {
        let source = source(&server).max_attempts(max_attempts).build().unwrap();
        let r = Arc::clone(&runs);
        let pool = ThreadPoolManager::builder()
            .queue(
                "conferencia",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                move |_, _: &String| {
                    r.fetch_add(1, Ordering::SeqCst);
                    Err::<Vec<u8>, _>(JobError::retryable("site down"))
                },
            )
            .build()
            .unwrap();
        (source, pool)
    };
    // A process with max_attempts 4 runs the job once; it goes to the delayed set.
    let (first, pool) = pool_with(4);
    first.push(&["order"]).unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the first run failed",
        || runs.load(Ordering::SeqCst) == 1 && Places::read(&mut c).delayed == 1,
        || Places::read(&mut server.conn()),
    );
    pool.shutdown();
    pool.wait().unwrap();
    // A process with max_attempts 1 takes over: the job still gets its 4 runs.
    let (_second, pool) = pool_with(1);
    pool.start().unwrap();
    let p = wait_settled(&mut c, 1);
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 4, "{p:?}");
    assert_eq!(p.dead.len(), 1, "{p:?}");
    assert_eq!(p.dead[0]["attempts"], 4, "{p:?}");
    assert_eq!(p.dead[0]["reason"], "attempts_exhausted", "{p:?}");
}

// ---------------------------------------------------------------------------------------
// Item 10: a result dropped because an operator deleted the processing list is counted.
// ---------------------------------------------------------------------------------------

#[test]
fn an_outcome_dropped_because_its_processing_list_was_deleted_is_counted() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = source(&server).build().unwrap();
    source.push(&["held order"]).unwrap();
    let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, order: &String| {
                let _ = started_tx.send(());
                go_rx.recv().expect("the test lets the job finish");
                Ok(order.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    started_rx.recv_timeout(PATIENCE).expect("the job started");
    // The operator's mistake: the worker's processing list goes while its job runs.
    let lists: Vec<String> = c.keys(format!("{Q}:processing:*")).unwrap();
    assert_eq!(lists.len(), 1, "{lists:?}");
    let _: () = c.del(&lists[0]).unwrap();
    go_tx.send(()).unwrap();
    wait_until(
        PATIENCE,
        "the dropped outcome counted",
        || source.stats().outcomes_dropped == 1,
        || source.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    let results: Vec<String> = c.lrange(RESULTS, 0, -1).unwrap();
    assert!(
        results.is_empty(),
        "nothing written for a job that was removed: {results:?}"
    );
}
