//! `threadtide dashboard`: one page and a small JSON API (docs/DASHBOARD.md), served from this
//! binary with its assets compiled in.
//!
//! One refresher thread reads the fleet from Redis once per `--refresh-ms` and keeps the
//! snapshot; every browser gets that same snapshot, so N browsers cost Redis what one does.
//! Dead-letter pages are read on request (paged, never whole). Changes (pause, resume, requeue,
//! purge) are refused with 403 unless the dashboard was started with `--allow-actions`, and
//! then need the `--token` on every request.

mod dead;
mod http;
mod state;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tiny_http::{Method, Request, Server};

use threadtide::SourceError;
use threadtide::admin::Admin;

use crate::common::{CliError, Global};
use http::Reply;

const INDEX: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

/// Flags of `threadtide dashboard`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to serve on. Loopback by default; any address is allowed when given explicitly
    /// (port 0 picks a free port; the address is printed on the first line of stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Allow changes from the page and the API (pause, resume, requeue, purge). Without it
    /// every POST gets 403 and changes nothing. Needs --token.
    #[arg(long, requires = "token")]
    allow_actions: bool,
    /// The token every change must carry (`Authorization: Bearer T`).
    /// Only with --allow-actions. Never printed.
    #[arg(
        long,
        env = "THREADTIDE_DASHBOARD_TOKEN",
        hide_env_values = true,
        requires = "allow_actions"
    )]
    token: Option<String>,
    /// The fleet name (the `F` of the `F:fleet:*` keys).
    #[arg(long, default_value = "threadtide")]
    fleet: String,
    /// A queue key to show even if no process of the fleet has registered it (repeatable).
    #[arg(long = "queue", value_name = "KEY")]
    queues: Vec<String>,
    /// How often the snapshot is read from Redis, in milliseconds (the page polls as often).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    refresh_ms: u64,
}

struct Shared {
    snapshot: Mutex<Arc<String>>,
    fleet: Mutex<state::Fleet>,
    /// What requests use (dead-letter pages and changes); rebuilt after an error.
    admin: Mutex<Option<Admin>>,
    /// What changes use: a change never waits behind a long filtered read of dead letters.
    changes: Mutex<Option<Admin>>,
    /// For the one change the admin API has no call for (one dead letter by its bytes).
    conn: Mutex<Option<redis::Connection>>,
    actions: bool,
    token: Option<String>,
    /// The `Host` values served when listening on loopback (a page of another site that a
    /// DNS name rebinds to 127.0.0.1 sends its own name and is refused); `None` otherwise.
    hosts: Option<Vec<String>>,
    keys: state::Keys,
    redis: String,
    refresh_ms: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves until the process is stopped. Errors: a bad `--redis` URL or refused credentials
/// (checked once at start; a Redis that is down is waited for, and the page says so), or an
/// address that cannot be bound.
pub(crate) fn run(global: &Global, args: Args) -> Result<(), CliError> {
    if args.token.as_deref() == Some("") {
        return Err(CliError::Usage("--token: must not be empty".into()));
    }
    let first = match global.admin().map(|a| a.with_fleet(&args.fleet)) {
        Ok(c) => Some(c),
        Err(CliError::Unreachable(m)) => {
            eprintln!("threadtide dashboard: Redis unreachable, will keep trying: {m}");
            None
        }
        Err(e) => return Err(e),
    };
    let server = Server::http(args.listen)
        .map_err(|e| CliError::Failed(format!("--listen {}: {e}", args.listen)))?;
    let addr = server
        .server_addr()
        .to_ip()
        .map_or_else(|| args.listen.to_string(), |a| a.to_string());
    println!("threadtide dashboard on http://{addr}/");
    eprintln!(
        "threadtide dashboard: Redis {}, fleet {}, {}",
        global.redacted_url(),
        args.fleet,
        if args.allow_actions {
            "actions allowed (token required)"
        } else {
            "read-only"
        }
    );
    let shared = Arc::new(Shared {
        snapshot: Mutex::new(Arc::new(
            json!({"error": "no snapshot yet", "processes": [], "queues": []}).to_string(),
        )),
        fleet: Mutex::new(state::Fleet::default()),
        admin: Mutex::new(None),
        changes: Mutex::new(None),
        conn: Mutex::new(None),
        actions: args.allow_actions,
        token: args.token,
        hosts: allowed_hosts(args.listen, &addr),
        keys: state::Keys {
            fleet: args.fleet,
            extra_queues: args.queues,
        },
        redis: global.redacted_url(),
        refresh_ms: args.refresh_ms,
    });
    let server = Arc::new(server);
    let (_stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let sh = &shared;
        let g = global;
        std::thread::Builder::new()
            .name("dashboard-refresh".into())
            .spawn_scoped(s, move || refresher(g, sh, first, &stop_rx))
            .map_err(|e| CliError::Failed(format!("spawn: {e}")))?;
        for n in 0..4 {
            let server = Arc::clone(&server);
            std::thread::Builder::new()
                .name(format!("dashboard-http-{n}"))
                .spawn_scoped(s, move || {
                    while let Ok(req) = server.recv() {
                        handle(g, sh, req);
                    }
                })
                .map_err(|e| CliError::Failed(format!("spawn: {e}")))?;
        }
        Ok(())
    })
}

/// Reads the snapshot every `refresh_ms`; after an error, waits with back-off (up to 10 s)
/// and reconnects. Waits on `stop` so that it wakes at once if the sender goes.
fn refresher(
    global: &Global,
    shared: &Shared,
    mut admin: Option<Admin>,
    stop: &mpsc::Receiver<()>,
) {
    let mut backoff = 0u32;
    loop {
        if admin.is_none() {
            admin = global
                .admin()
                .map(|a| a.with_fleet(&shared.keys.fleet))
                .map_err(|e| e.to_string())
                .inspect_err(|e| {
                    let mut v = stale(shared);
                    v["error"] = Value::from(e.clone());
                    publish(shared, v);
                })
                .ok();
        }
        let started = std::time::Instant::now();
        if let Some(a) = admin.as_ref() {
            let result = lock(&shared.fleet).refresh(a, &shared.keys.extra_queues);
            match result {
                Ok(mut v) => {
                    backoff = 0;
                    v["error"] = Value::Null;
                    v["refresh_us"] = Value::from(started.elapsed().as_micros() as u64);
                    publish(shared, v);
                }
                Err(e) => {
                    admin = None;
                    let mut v = stale(shared);
                    v["error"] = Value::from(global.source_error(e).to_string());
                    publish(shared, v);
                }
            }
        }
        if admin.is_none() {
            backoff = (backoff + 1).min(10);
        }
        let wait = Duration::from_millis(shared.refresh_ms * u64::from(backoff.max(1)));
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// The last snapshot, marked stale (kept so the page still shows the last numbers).
fn stale(shared: &Shared) -> Value {
    let old: Value = serde_json::from_str(&lock(&shared.snapshot)).unwrap_or(Value::Null);
    let mut v = if old.is_object() {
        old
    } else {
        json!({"processes": [], "queues": []})
    };
    v["stale"] = Value::Bool(true);
    v
}

fn publish(shared: &Shared, mut doc: Value) {
    doc["redis"] = Value::from(shared.redis.clone());
    doc["actions"] = Value::Bool(shared.actions);
    doc["refresh_ms"] = Value::from(shared.refresh_ms);
    *lock(&shared.snapshot) = Arc::new(doc.to_string());
}

/// `Host` values a loopback listener answers: the address it printed and the loopback names
/// with its port. Any `Host` when told to listen on a non-loopback address.
fn allowed_hosts(listen: SocketAddr, printed: &str) -> Option<Vec<String>> {
    if !listen.ip().is_loopback() {
        return None;
    }
    let port = printed
        .rsplit_once(':')
        .map_or(listen.port().to_string(), |(_, p)| p.to_owned());
    Some(vec![
        printed.to_owned(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ])
}

fn host_allowed(shared: &Shared, req: &Request) -> bool {
    let Some(hosts) = shared.hosts.as_ref() else {
        return true;
    };
    req.headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .is_some_and(|h| {
            let v = h.value.as_str().trim();
            hosts.iter().any(|a| a.eq_ignore_ascii_case(v))
        })
}

fn status_of(e: &CliError) -> u16 {
    match e {
        CliError::Unreachable(_) => 503,
        CliError::Refused(_) => 502,
        CliError::Failed(_) | CliError::Usage(_) => 400,
    }
}

/// Runs `f` on the request side's admin connection, (re)connecting first; drops it after an
/// error that is not the request's own (Redis unreachable or refusing).
fn with_admin<T>(
    global: &Global,
    shared: &Shared,
    slot: &Mutex<Option<Admin>>,
    f: impl FnOnce(&Admin) -> Result<T, SourceError>,
) -> Result<T, Reply> {
    let mut guard = lock(slot);
    if guard.is_none() {
        let a = global
            .admin()
            .map_err(|e| http::error(status_of(&e), &e.to_string()))?;
        *guard = Some(a.with_fleet(&shared.keys.fleet));
    }
    let admin = guard.as_ref().expect("just connected");
    f(admin).map_err(|e| {
        let e = global.source_error(e);
        if !matches!(e, CliError::Failed(_)) {
            *guard = None;
        }
        http::error(status_of(&e), &e.to_string())
    })
}

/// Answers one request. A panic while routing (a bug) answers 500 instead of ending this
/// handler thread: there are only four, and one bad request must not take one away.
fn handle(global: &Global, shared: &Shared, mut req: Request) {
    let routed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        route(global, shared, &mut req)
    }));
    let reply = match routed {
        Ok(r) => r.unwrap_or_else(|r| r),
        Err(_) => http::error(500, "internal error (a bug): the request was not completed"),
    };
    // tiny_http reads whatever is left of a body when the request is dropped (bodies over
    // 1 KiB), and sets no socket timeout: a refused request whose body trickles in would hold
    // this thread. Such requests are answered and dropped on a thread of their own (at most
    // DRAINERS at once), so the four handler threads stay free.
    let refused = reply.status_code().0 >= 400 && req.body_length().is_some_and(|n| n > 1024);
    if refused && DRAINING.fetch_add(1, Ordering::SeqCst) < DRAINERS {
        let spawned = std::thread::Builder::new()
            .name("dashboard-drain".into())
            .spawn(move || {
                let _ = req.respond(reply);
                DRAINING.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            DRAINING.fetch_sub(1, Ordering::SeqCst);
        }
        return;
    }
    if refused {
        DRAINING.fetch_sub(1, Ordering::SeqCst);
    }
    let _ = req.respond(reply);
}

/// Refused requests being answered on their own threads, and the most at once.
static DRAINING: AtomicUsize = AtomicUsize::new(0);
const DRAINERS: usize = 64;

fn known_queue(shared: &Shared, q: &str) -> bool {
    let snap: Value = serde_json::from_str(&lock(&shared.snapshot)).unwrap_or(Value::Null);
    snap["queues"]
        .as_array()
        .is_some_and(|qs| qs.iter().any(|x| x["key"] == q))
}

fn num_param(
    p: &std::collections::HashMap<String, String>,
    name: &str,
    default: i64,
) -> Result<i64, Reply> {
    match p.get(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| http::error(400, &format!("{name}: not a count: {v}"))),
    }
}

fn filter_of(p: &std::collections::HashMap<String, String>) -> threadtide::admin::DeadFilter {
    let get = |k: &str| p.get(k).filter(|v| !v.is_empty()).cloned();
    dead::filter(get("reason"), get("contains"))
}

fn route(global: &Global, shared: &Shared, req: &mut Request) -> Result<Reply, Reply> {
    if !host_allowed(shared, req) {
        return Err(http::error(
            421,
            "Host not served: use the address the dashboard printed (or localhost:PORT)",
        ));
    }
    let (path, query) = http::target(req);
    match (req.method(), path.as_str()) {
        (Method::Get, "/" | "/index.html") => {
            Ok(http::reply(200, "text/html; charset=utf-8", INDEX.into()))
        }
        (Method::Get, "/app.js") => Ok(http::reply(
            200,
            "text/javascript; charset=utf-8",
            APP_JS.into(),
        )),
        (Method::Get, "/app.css") => {
            Ok(http::reply(200, "text/css; charset=utf-8", APP_CSS.into()))
        }
        (Method::Get, "/api/snapshot") => {
            let snap = Arc::clone(&lock(&shared.snapshot));
            Ok(http::reply(
                200,
                "application/json",
                snap.as_bytes().to_vec(),
            ))
        }
        (Method::Get, "/api/history") => {
            let q = query
                .get("queue")
                .ok_or_else(|| http::error(400, "queue: missing"))?;
            let since = num_param(&query, "since_ms", 0)? as u64;
            let ev = num_param(&query, "events_since_ms", since as i64)? as u64;
            Ok(http::json(200, &lock(&shared.fleet).history(q, since, ev)))
        }
        (Method::Get, "/api/dead") => {
            let q = query
                .get("queue")
                .ok_or_else(|| http::error(400, "queue: missing"))?;
            let offset = num_param(&query, "offset", 0)? as usize;
            let limit = num_param(&query, "limit", 50)?.min(500) as usize;
            let f = filter_of(&query);
            with_admin(global, shared, &shared.admin, |a| {
                dead::page(a, q, &f, offset, limit)
            })
            .map(|v| http::json(200, &v))
        }
        (Method::Get, "/api/dead/show") => {
            let q = query
                .get("queue")
                .ok_or_else(|| http::error(400, "queue: missing"))?;
            let index = num_param(&query, "index", 0)? as usize;
            match with_admin(global, shared, &shared.admin, |a| a.dead_show(q, index))? {
                Some(d) => Ok(http::json(200, &dead::letter_json(&d, true))),
                None => Err(http::error(
                    404,
                    &format!("no dead letter at index {index}"),
                )),
            }
        }
        (Method::Post, p) if p.starts_with("/api/") => {
            if !shared.actions {
                return Err(http::error(
                    403,
                    "read-only: the dashboard was started without --allow-actions",
                ));
            }
            // The token (a header) before the body: a request without it is answered at once
            // and never holds a handler thread while its body trickles in.
            let expected = shared.token.as_deref().unwrap_or_default();
            let ok = http::token_of(req)
                .is_some_and(|t| http::same_token(t.as_bytes(), expected.as_bytes()));
            if !ok || expected.is_empty() {
                return Err(http::error(
                    401,
                    "a valid token is required (Authorization: Bearer T)",
                ));
            }
            let form = http::form(req).map_err(|e| http::error(400, &e))?;
            let q = form
                .get("queue")
                .ok_or_else(|| http::error(400, "queue: missing"))?;
            if !known_queue(shared, q) {
                return Err(http::error(
                    404,
                    &format!("queue {q}: not a queue of this fleet"),
                ));
            }
            action(global, shared, p, q, &form)
        }
        (Method::Get | Method::Post, _) => Err(http::error(404, "not found")),
        _ => Err(http::error(405, "method not allowed")),
    }
}

fn action(
    global: &Global,
    shared: &Shared,
    path: &str,
    q: &str,
    form: &std::collections::HashMap<String, String>,
) -> Result<Reply, Reply> {
    match path {
        "/api/pause" | "/api/resume" => {
            let pause = path == "/api/pause";
            with_admin(global, shared, &shared.changes, |a| {
                if pause { a.pause(q) } else { a.resume(q) }
            })?;
            Ok(http::json(200, &json!({"queue": q, "paused": pause})))
        }
        "/api/dead/requeue" | "/api/dead/purge" => {
            let requeue = path == "/api/dead/requeue";
            let action = if requeue { "requeue" } else { "purge" };
            // One record whenever either of its fields is present, even empty: an empty
            // `index` must never fall through to the filter (which, unfiltered, is everything).
            let sha = form.get("record_sha1").or_else(|| form.get("record_hex"));
            if form.contains_key("index") || sha.is_some() {
                let index = match form.get("index").filter(|v| !v.is_empty()) {
                    Some(_) => num_param(form, "index", 0)? as usize,
                    None => return Err(http::error(400, "index: missing or empty")),
                };
                let id = match (form.get("record_sha1"), form.get("record_hex")) {
                    (Some(s), _) if !s.is_empty() => dead::RecordId::Sha1(s.clone()),
                    (None, Some(h)) if !h.is_empty() => dead::RecordId::Hex(h.clone()),
                    _ => {
                        return Err(http::error(
                            400,
                            "record_sha1: missing or empty (as /api/dead/show gave it)",
                        ));
                    }
                };
                let record = &id;
                let mut conn = lock(&shared.conn);
                if conn.is_none() {
                    *conn = Some(
                        global
                            .connect()
                            .map_err(|e| http::error(status_of(&e), &e.to_string()))?,
                    );
                }
                let c = conn.as_mut().expect("just connected");
                let r = with_admin(global, shared, &shared.changes, |a| {
                    dead::one(a, c, q, index, record, requeue)
                });
                if r.is_err() {
                    *conn = None;
                }
                let mut v = r?;
                v["action"] = Value::from(action);
                return Ok(http::json(200, &v));
            }
            let dry_run = form.get("dry_run").is_some_and(|v| v == "1" || v == "true");
            let mut f = filter_of(form);
            // The page sends the count its dry run showed, so exactly that many move.
            if form.get("limit").is_some_and(|v| !v.is_empty()) {
                f = f.limit(num_param(form, "limit", 0)? as usize);
            }
            let r = with_admin(global, shared, &shared.changes, |a| {
                if requeue {
                    a.dead_requeue(q, &f, dry_run)
                } else {
                    a.dead_purge(q, &f, dry_run)
                }
            })?;
            Ok(http::json(200, &dead::report_json(q, action, &r)))
        }
        _ => Err(http::error(404, "not found")),
    }
}
