//! Invalid configuration is a `build()` error naming the field and the value; never a panic.

use std::convert::Infallible;
use std::time::Duration;

use threadtide::{BuildError, Builder, MemorySource, Queue, ThreadPoolManager};

fn queue(name: &str) -> Queue {
    let source: MemorySource<u32> = MemorySource::new();
    Queue::new(name, source, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
}

fn with_queue() -> Builder {
    ThreadPoolManager::builder().add_queue(queue("q"))
}

fn error(builder: Builder) -> BuildError {
    builder
        .build()
        .expect_err("configuration should be refused")
}

#[test]
fn each_bad_value_names_its_field_and_value() {
    let cases: Vec<(Builder, &str, &str)> = vec![
        (with_queue().jobs_per_thread(0), "jobs_per_thread", "0"),
        (
            with_queue().max_threads_per_type(0),
            "max_threads_per_type",
            "0",
        ),
        (with_queue().max_total_threads(0), "max_total_threads", "0"),
        (
            with_queue().rebalance_interval(Duration::ZERO),
            "rebalance_interval",
            "0s",
        ),
        (
            with_queue().fetch_timeout(Duration::ZERO),
            "fetch_timeout",
            "0s",
        ),
        (
            with_queue().backoff(Duration::ZERO, Duration::from_secs(1)),
            "backoff.initial",
            "0s",
        ),
        (
            with_queue().backoff(Duration::from_secs(2), Duration::from_secs(1)),
            "backoff.max",
            "1s",
        ),
        (
            with_queue().thread_name_prefix(""),
            "thread_name_prefix",
            "\"\"",
        ),
        (ThreadPoolManager::builder(), "queues", "[]"),
        (
            ThreadPoolManager::builder().add_queue(queue("")),
            "queue.name",
            "\"\"",
        ),
        (
            ThreadPoolManager::builder().add_queue(queue("a\0b")),
            "queue.name",
            "\"a\\0b\"",
        ),
        (with_queue().add_queue(queue("q")), "queue[q].name", "q"),
        (
            ThreadPoolManager::builder().add_queue(queue("q").weight(0)),
            "queue[q].weight",
            "0",
        ),
        (
            ThreadPoolManager::builder().add_queue(queue("q").recycle_after(0)),
            "queue[q].recycle_after",
            "0",
        ),
        (
            ThreadPoolManager::builder()
                .max_threads_per_type(3)
                .add_queue(queue("q").min_threads(4)),
            "queue[q].min_threads",
            "4",
        ),
        (
            ThreadPoolManager::builder()
                .max_total_threads(5)
                .add_queue(queue("a").min_threads(3))
                .add_queue(queue("b").min_threads(3)),
            "max_total_threads",
            "5",
        ),
    ];
    for (builder, field, value) in cases {
        let e = error(builder);
        assert_eq!((e.field(), e.value()), (field, value), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("invalid {field} = {value}: ")),
            "{text}"
        );
    }
}

#[test]
fn the_hosts_settings_and_the_defaults_are_valid() {
    with_queue().build().unwrap();
    with_queue()
        .jobs_per_thread(50)
        .max_threads_per_type(10)
        .max_total_threads(20)
        .rebalance_interval(Duration::from_secs(60))
        .scale_down_delay(Duration::ZERO)
        .build()
        .unwrap();
}

#[test]
fn memory_source_settings_are_checked_too() {
    let e = MemorySource::builder()
        .max_attempts(0)
        .build::<u32, ()>()
        .unwrap_err();
    assert_eq!((e.field(), e.value()), ("max_attempts", "0"));
    let e = MemorySource::builder()
        .retry_backoff(Duration::from_secs(2), Duration::from_secs(1))
        .build::<u32, ()>()
        .unwrap_err();
    assert_eq!(e.field(), "retry_backoff");
}
