//! Instructions per job of the dispatch path, for callgrind, which counts instructions and so
//! does not drift with the load of a shared machine as timings do.
//!
//! `dispatch-instructions PEER JOBS` pushes `JOBS` no-op jobs, then lets one worker drain them
//! and exits: `floor` is a bare thread draining a crossbeam channel, `threadtide` a pool with
//! one worker on a `MemorySource`. The producer's pushes are counted on both sides. Setup and
//! teardown (thread spawns, the pool's start and stop) cost the same at any `JOBS`, so the
//! difference between two runs of different sizes, divided by the difference in jobs, is the
//! cost of one job. `benches/callgrind.sh` runs the four runs and prints that figure.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use threadtide::{MemorySource, Queue, ThreadPoolManager};

/// The floor's job: a type of its own, so that crossbeam's channel code is compiled for the
/// floor alone (as in `dispatch.rs`).
#[derive(Clone, Copy)]
struct FloorJob(Option<Duration>);

fn floor(jobs: usize) {
    let (tx, rx) = crossbeam_channel::unbounded::<FloorJob>();
    for _ in 0..jobs {
        tx.send(FloorJob(black_box(None))).unwrap();
    }
    drop(tx);
    let worker = std::thread::spawn(move || {
        let mut done = 0usize;
        for FloorJob(job) in rx {
            black_box(job);
            done += 1;
        }
        done
    });
    assert_eq!(worker.join().unwrap(), jobs);
}

fn threadtide(jobs: usize) {
    let source: MemorySource<Option<Duration>> = MemorySource::new();
    for _ in 0..jobs {
        source.push(black_box(None));
    }
    let done = Arc::new(AtomicUsize::new(0));
    let (all_tx, all_rx) = crossbeam_channel::bounded::<()>(1);
    let d = Arc::clone(&done);
    let queue = Queue::new(
        "bench",
        source.clone(),
        |_| Ok::<_, Infallible>(()),
        move |_, job: &Option<Duration>| {
            black_box(job);
            // One worker: a plain load and store, as the floor's local count.
            let n = d.load(Ordering::Relaxed) + 1;
            d.store(n, Ordering::Relaxed);
            if n == jobs {
                let _ = all_tx.try_send(());
            }
            Ok(())
        },
    )
    .min_threads(1);
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .max_total_threads(1)
        .add_queue(queue)
        .build()
        .unwrap();
    pool.start().unwrap();
    if jobs > 0 {
        all_rx.recv().unwrap();
    }
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(done.load(Ordering::Relaxed), jobs);
    assert_eq!(source.unfinished(), 0);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: dispatch-instructions floor|threadtide JOBS";
    let [peer, jobs] = args.as_slice() else {
        panic!("{usage}");
    };
    let jobs: usize = jobs.parse().expect(usage);
    match peer.as_str() {
        "floor" => floor(jobs),
        "threadtide" => threadtide(jobs),
        _ => panic!("{usage}"),
    }
}
