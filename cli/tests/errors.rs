//! The command's errors as an operator meets them: Redis unreachable (exit 3), a wrong
//! password (exit 4), a key that is not a queue (exit 1), bad usage (exit 2); the password is
//! never printed, whatever the outcome.

mod support;

use std::process::Output;

use support::{RedisServer, threadtide};

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited with a code")
}

fn all_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn unreachable_redis_is_exit_3() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("redis://:hunter2pw@127.0.0.1:{closed}/");
    for args in [
        &["status"][..],
        &["dead", "list", "--queue", "q"],
        &["pause", "q"],
        &["explain", "q"],
    ] {
        let out = threadtide(&url, args);
        assert_eq!(code(&out), 3, "{args:?}: {}", all_text(&out));
        let text = all_text(&out);
        assert!(text.contains("Redis unreachable"), "{text}");
        assert!(!text.contains("hunter2pw"), "password printed: {text}");
    }
}

#[test]
fn a_wrong_password_is_exit_4_and_no_password_is_printed() {
    let redis = RedisServer::start_with(&["--appendonly", "no", "--requirepass", "s3cret-pw"]);
    let wrong = format!("redis://:wrong-pw-123@127.0.0.1:{}/", redis.port);
    for args in [
        &["status"][..],
        &["explain", "fila:x"],
        &["--json", "dead", "list", "--queue", "q"],
    ] {
        let out = threadtide(&wrong, args);
        let text = all_text(&out);
        assert_eq!(code(&out), 4, "{args:?}: {text}");
        assert!(
            !text.contains("wrong-pw-123") && !text.contains("s3cret-pw"),
            "{text}"
        );
    }
    // With the right password, a key that is not a queue: exit 1, still no password.
    let mut conn = redis.conn();
    redis::cmd("SET")
        .arg("fila:texto")
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    let out = threadtide(&redis.url(), &["dead", "list", "--queue", "fila:texto"]);
    let text = all_text(&out);
    assert_eq!(code(&out), 1, "{text}");
    assert!(
        text.contains("fila:texto is a string, not a list"),
        "{text}"
    );
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[test]
fn keys_that_are_not_queues_are_exit_1_and_bad_usage_is_exit_2() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    redis::cmd("HSET")
        .arg("fila:hash:dead")
        .arg("a")
        .arg("b")
        .query::<()>(&mut conn)
        .unwrap();
    for (args, says) in [
        (&["pause", "fila:nada"][..], "no queue at fila:nada"),
        (&["explain", "fila:nada"], "no queue at fila:nada"),
        (
            &["set", "fila:nada", "jobs-per-thread", "5"],
            "no queue at fila:nada",
        ),
        (
            &["dead", "requeue", "--queue", "fila:hash", "--yes"],
            "fila:hash:dead is a hash",
        ),
        (
            &["retries", "list", "--queue", "fila:nada"],
            "no queue at fila:nada",
        ),
    ] {
        let out = threadtide(&url, args);
        assert_eq!(code(&out), 1, "{args:?}: {}", all_text(&out));
        assert!(
            all_text(&out).contains(says),
            "{args:?}: {}",
            all_text(&out)
        );
    }
    for args in [
        &["set", "fila:x", "jobs-per-thread", "0"][..],
        &["set", "fila:x", "fleet-max-threads", "lots"],
        &["dead", "list"],
        &["events", "--since", "3 weeks"],
        &["nonsense"],
    ] {
        let out = threadtide(&url, args);
        assert_eq!(code(&out), 2, "{args:?}: {}", all_text(&out));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_threadtide"))
        .arg("status")
        .env_remove("THREADTIDE_REDIS")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "no --redis: {}", all_text(&out));
    let out = threadtide("not-a-url", &["status"]);
    assert_eq!(
        code(&out),
        2,
        "a URL that does not parse: {}",
        all_text(&out)
    );
}

#[test]
fn help_does_not_print_the_redis_url_from_the_environment() {
    for args in [
        &["--help"][..],
        &["status", "--help"],
        &["dashboard", "--help"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_threadtide"))
            .args(args)
            .env("THREADTIDE_REDIS", "redis://:hunter5pw@127.0.0.1:6379/0")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{args:?}: {}", all_text(&out));
        let text = all_text(&out);
        assert!(text.contains("THREADTIDE_REDIS"), "{text}");
        assert!(
            !text.contains("hunter5pw"),
            "{args:?}: password printed: {text}"
        );
    }
}

#[test]
fn passwords_in_the_query_are_never_printed() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for url in [
        format!("redis://127.0.0.1:{closed}/0?password=hunter3pw"),
        format!("redis://127.0.0.1:{closed}/0?db=0&pass=hunter3pw"),
        "redis+unix:///nonexistent/threadtide.sock?pass=hunter3pw".to_owned(),
    ] {
        let out = threadtide(&url, &["--json", "status"]);
        let text = all_text(&out);
        assert_ne!(code(&out), 0, "{url}: {text}");
        assert!(
            !text.contains("hunter3pw"),
            "{url}: password printed: {text}"
        );
        assert!(text.contains("***"), "{url}: {text}");
    }
}
