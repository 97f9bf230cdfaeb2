//! `threadtide dashboard` in a real headless Chromium, against a real `redis-server` and real
//! `rpa_worker` processes: the page shows Redis's numbers, its chart follows a burst, a killed
//! process is marked gone, a requeue from the page brings jobs back and they complete, and
//! without `--allow-actions` or without the token nothing changes.

#[allow(dead_code)]
#[path = "../../tests/support/redis.rs"]
mod redis_server;
#[allow(dead_code)]
#[path = "support/dashboard.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use redis_server::RedisServer;
use serde_json::Value;
use support::{Chrome, Dashboard, PATIENCE, dead_record, now_ms, start_rpa_worker, wait_until};

const TOKEN: &str = "t0ken-for-the-test";

/// The conferencia chart.
const CONF_CANVAS: &str =
    "document.querySelector('section.queue[data-key=\"fila:conferencia\"] canvas')";
/// A JS function giving a hash of the conferencia chart's pixels (the data URL itself is too
/// long to bring back whole).
const CANVAS_HASH: &str = "(() => { const u = document.querySelector('section.queue[data-key=\"fila:conferencia\"] canvas').toDataURL(); let h = 0; for (let i = 0; i < u.length; i++) h = (h * 31 + u.charCodeAt(i)) | 0; return h; })";

fn llen(conn: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("LLEN").arg(key).query(conn).unwrap()
}

/// A field of the queue card of `key` on the page.
fn field(chrome: &Chrome, key: &str, f: &str) -> String {
    chrome.text(&format!(
        "section.queue[data-key=\"{key}\"] [data-field=\"{f}\"]"
    ))
}

/// Clicks Confirm once the page has asked (the bar is shown).
fn confirm(chrome: &Chrome) {
    wait_until(PATIENCE, "the page to ask for confirmation", || {
        let hidden = chrome.eval("document.getElementById('confirm').hidden");
        if hidden == false { Ok(()) } else { Err(hidden) }
    });
    chrome.click("#confirm-yes");
}

fn screenshot_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("dashboard-screenshot.png")
}

#[test]
fn the_page_shows_redis_numbers_follows_a_burst_and_marks_a_killed_process() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let mut a = start_rpa_worker(&url, &["conferencia=fila:conferencia"], "fila:resultados");
    let b = start_rpa_worker(&url, &["conferencia=fila:conferencia"], "fila:resultados");
    // Real dead letters: payloads rpa_worker refuses (one of them not UTF-8).
    let _: () = redis::cmd("RPUSH")
        .arg("fila:conferencia")
        .arg("not json 1")
        .arg("not json 2")
        .arg(&b"\xff\xfe binary"[..])
        .query(&mut conn)
        .unwrap();
    // emissao has no worker: its backlog stays at 7.
    let _: () = redis::cmd("RPUSH")
        .arg("fila:emissao")
        .arg(
            (0..7)
                .map(|i| format!("{{\"id\":\"e{i}\",\"ms\":5}}"))
                .collect::<Vec<_>>(),
        )
        .query(&mut conn)
        .unwrap();
    wait_until(PATIENCE, "3 dead letters", || {
        let n = llen(&mut conn, "fila:conferencia:dead");
        if n == 3 { Ok(()) } else { Err(n) }
    });

    let dash = Dashboard::start(&url, &["--queue", "fila:emissao"]);
    let chrome = Chrome::launch();
    let load = std::time::Instant::now();
    chrome.open(&dash.base);
    // The page shows what Redis holds (compared while Redis holds still).
    wait_until(PATIENCE, "the page's numbers to equal Redis's", || {
        let want = (
            llen(&mut conn, "fila:emissao").to_string(),
            llen(&mut conn, "fila:conferencia:dead").to_string(),
            redis::cmd("ZCARD")
                .arg("fila:conferencia:workers")
                .query::<u64>(&mut conn)
                .unwrap()
                .to_string(),
        );
        let seen = (
            field(&chrome, "fila:emissao", "backlog"),
            field(&chrome, "fila:conferencia", "dead"),
            field(&chrome, "fila:conferencia", "workers"),
        );
        if seen == want {
            Ok(())
        } else {
            Err(format!("page {seen:?}, Redis {want:?}"))
        }
    });
    eprintln!("page load to first matching numbers: {:?}", load.elapsed());
    for p in [a.pid(), b.pid()] {
        let row = format!("#processes tr[data-id*=\":{p}:\"]");
        wait_until(PATIENCE, "both processes listed live", || {
            let t = chrome.text(&format!("{row} td:nth-child(1)"));
            if t == "live" && chrome.text(&format!("{row} td:nth-child(3)")) == p.to_string() {
                Ok(())
            } else {
                Err(t)
            }
        });
    }
    // Dead letters: three rows, the binary one viewable as hex.
    wait_until(PATIENCE, "3 dead-letter rows", || {
        let n = chrome.eval("document.querySelectorAll('#dead tbody tr').length");
        if n == 3 { Ok(()) } else { Err(n) }
    });
    assert_eq!(chrome.text("#dead tbody tr td:nth-child(3)"), "malformed");
    chrome.click("#dead tbody tr:last-child button.view");
    wait_until(PATIENCE, "the payload view", || {
        let t = chrome.text("#detail-payload");
        if t.contains("binary") { Ok(()) } else { Err(t) }
    });
    chrome.click("#detail-hex");
    let hex = chrome.text("#detail-payload");
    assert!(hex.starts_with("ff fe 20 62"), "hex view: {hex}");

    // A burst: the chart's backlog line rises, and the scaling events are marked on it.
    let before = chrome.eval(&format!("{CANVAS_HASH}()"));
    let events_before: u64 = chrome
        .text("section.queue[data-key=\"fila:conferencia\"] ul.events")
        .matches('\u{2192}')
        .count() as u64;
    let _: () = redis::cmd("RPUSH")
        .arg("fila:conferencia")
        .arg(
            (0..300)
                .map(|i| format!("{{\"id\":\"burst{i}\",\"ms\":150}}"))
                .collect::<Vec<_>>(),
        )
        .query(&mut conn)
        .unwrap();
    wait_until(PATIENCE, "the chart to show the burst", || {
        let attr = |a: &str| {
            chrome
                .eval(&format!("{CONF_CANVAS}.dataset.{a}"))
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (peak, events) = (attr("peakBacklog"), attr("events"));
        let hash = chrome.eval(&format!("{CANVAS_HASH}()"));
        if peak >= 100 && events > events_before && hash != before {
            Ok(())
        } else {
            Err((peak, events))
        }
    });
    wait_until(PATIENCE, "the burst to be done", || {
        let n = llen(&mut conn, "fila:resultados");
        if n >= 300 { Ok(()) } else { Err(n) }
    });

    // kill -9 one process: once its heartbeat is past its TTL, the page marks it gone.
    let gone = a.pid();
    a.kill9();
    let row = format!("#processes tr[data-id*=\":{gone}:\"]");
    wait_until(PATIENCE, "the killed process marked gone", || {
        let t = chrome.text(&format!("{row} td:nth-child(1)"));
        let class = chrome.eval(&format!("document.querySelector('{row}')?.className ?? ''"));
        if t.starts_with("GONE") && class == "gone" {
            Ok(())
        } else {
            Err((t, class))
        }
    });
    let live = format!("#processes tr[data-id*=\":{}:\"] td:nth-child(1)", b.pid());
    assert_eq!(chrome.text(&live), "live");
    // The last minute, so the screenshot shows the burst at a readable scale.
    chrome.eval("(() => { const w = document.getElementById('window'); w.value = '60'; w.dispatchEvent(new Event('change')); return 1; })()");
    chrome.screenshot(&screenshot_path());

    // Read-only: no change button on the page, every POST refused, nothing changed.
    assert_eq!(
        chrome.eval("document.querySelector('button.pause').hidden"),
        true
    );
    let status = chrome.eval(&format!(
        "fetch('/api/pause', {{method: 'POST', headers: {{'Authorization': 'Bearer {TOKEN}', \
         'Content-Type': 'application/x-www-form-urlencoded'}}, body: 'queue=fila:conferencia'}}).then(r => r.status)"
    ));
    assert_eq!(status, 403);
    for path in [
        "/api/pause",
        "/api/resume",
        "/api/dead/requeue",
        "/api/dead/purge",
    ] {
        let (code, body) = dash.request(
            "POST",
            path,
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            "queue=fila:conferencia",
        );
        assert_eq!(code, 403, "{path}: {body}");
    }
    let settings: bool = redis::cmd("EXISTS")
        .arg("fila:conferencia:settings")
        .query(&mut conn)
        .unwrap();
    assert!(!settings, "a refused pause wrote settings");
    assert_eq!(llen(&mut conn, "fila:conferencia:dead"), 3);
}

#[test]
fn changes_need_the_token_and_a_requeue_from_the_page_completes() {
    // --allow-actions without a token is refused before anything starts.
    let out = Command::new(env!("CARGO_BIN_EXE_threadtide"))
        .args([
            "--redis",
            "redis://127.0.0.1:1",
            "dashboard",
            "--allow-actions",
        ])
        .env_remove("THREADTIDE_DASHBOARD_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let redis = RedisServer::start();
    let url = redis.url();
    let mut conn = redis.conn();
    let _worker = start_rpa_worker(&url, &["conferencia=fila:conferencia"], "fila:resultados");
    // Five jobs dead-lettered after a downstream outage (records in the library's layout), and
    // two real ones the worker refused.
    let now = now_ms(&mut conn);
    for i in 1..=5 {
        let _: () = redis::cmd("RPUSH")
            .arg("fila:conferencia:dead")
            .arg(dead_record("conferencia", &format!("r{i}"), now))
            .query(&mut conn)
            .unwrap();
    }
    let _: () = redis::cmd("RPUSH")
        .arg("fila:conferencia")
        .arg("junk 1")
        .arg("junk 2")
        .query(&mut conn)
        .unwrap();
    wait_until(PATIENCE, "7 dead letters", || {
        let n = llen(&mut conn, "fila:conferencia:dead");
        if n == 7 { Ok(()) } else { Err(n) }
    });

    let dash = Dashboard::start(
        &url,
        // A queue no worker serves (it sorts after conferencia, the page's first queue).
        &[
            "--allow-actions",
            "--token",
            TOKEN,
            "--queue",
            "fila:x-bytes",
        ],
    );
    let chrome = Chrome::launch();
    chrome.open(&dash.base);
    wait_until(PATIENCE, "the page to show 7 dead letters", || {
        let t = field(&chrome, "fila:conferencia", "dead");
        if t == "7" && chrome.eval("document.querySelector('#dead-info').dataset.total") == "7" {
            Ok(())
        } else {
            Err(t)
        }
    });

    // Raw requests without the right token change nothing.
    let body = "queue=fila:conferencia&contains=downstream";
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "t0ken-for-the-test")],
    ] {
        let (code, text) = dash.request("POST", "/api/dead/requeue", &headers, body);
        assert_eq!(code, 401, "{headers:?}: {text}");
        let (code, _) = dash.request("POST", "/api/pause", &headers, "queue=fila:conferencia");
        assert_eq!(code, 401);
    }
    let (code, _) = dash.request(
        "POST",
        "/api/dead/purge",
        &[],
        &format!("{body}&token=nope"),
    );
    assert_eq!(code, 401);
    // The right token in the form is not enough: only the header is read (before the body).
    let (code, _) = dash.request(
        "POST",
        "/api/dead/purge",
        &[],
        &format!("{body}&token={TOKEN}"),
    );
    assert_eq!(code, 401);
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    // One record is named by index and digest; either field present but empty is a 400, never
    // the unfiltered purge of everything.
    for form in [
        "queue=fila:conferencia&index=",
        "queue=fila:conferencia&index=&record_sha1=",
        "queue=fila:conferencia&record_sha1=",
        "queue=fila:conferencia&index=0&record_sha1=",
    ] {
        let (code, text) = dash.request("POST", "/api/dead/purge", &auth, form);
        assert_eq!(code, 400, "{form}: {text}");
    }
    assert_eq!(
        llen(&mut conn, "fila:conferencia:dead"),
        7,
        "a bad one-record form purged"
    );
    // `limit` bounds what a change counts (and moves): the page sends its dry-run count.
    let (code, text) = dash.request(
        "POST",
        "/api/dead/requeue",
        &auth,
        &format!("{body}&dry_run=1&limit=2"),
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["matched"],
        2,
        "{text}"
    );
    // A dead letter whose payload is not UTF-8 (stored as payload_hex) goes back byte-exact,
    // named by the record_sha1 that /api/dead/show gives.
    let raw: Vec<u8> = vec![0xff, 0x00, b'a', 0xc3, 0x28, b'"', b'\\', 0x80];
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let rec = serde_json::json!({
        "queue": "bytes", "reason": "permanent", "error": "x", "attempts": 1,
        "worker": "w", "worker_id": "i", "time_ms": now, "payload_hex": hex,
    })
    .to_string();
    let _: () = redis::cmd("RPUSH")
        .arg("fila:x-bytes:dead")
        .arg(&rec)
        .query(&mut conn)
        .unwrap();
    wait_until(PATIENCE, "fila:x-bytes in the snapshot", || {
        let snap = dash.get_json("/api/snapshot");
        let found = snap["queues"]
            .as_array()
            .is_some_and(|qs| qs.iter().any(|q| q["key"] == "fila:x-bytes"));
        if found {
            Ok(())
        } else {
            Err(snap["queues"].to_string())
        }
    });
    let shown = dash.get_json("/api/dead/show?queue=fila:x-bytes&index=0");
    assert_eq!(shown["utf8"], false, "{shown}");
    let sha = shown["record_sha1"].as_str().unwrap().to_owned();
    let (code, text) = dash.request(
        "POST",
        "/api/dead/requeue",
        &auth,
        &format!("queue=fila:x-bytes&index=0&record_sha1={sha}"),
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["moved"],
        1,
        "{text}"
    );
    let queued: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg("fila:x-bytes")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(queued, vec![raw], "the payload came back changed");
    assert_eq!(llen(&mut conn, "fila:x-bytes:dead"), 0);
    // A page from another site that a DNS name rebinds to 127.0.0.1 sends its own Host.
    let port = dash.base.rsplit_once(':').unwrap().1.to_owned();
    let (code, _) = dash.request_host(
        &format!("evil.example:{port}"),
        "GET",
        "/api/snapshot",
        &[],
        "",
    );
    assert_eq!(code, 421);
    let (code, _) = dash.request_host(
        &format!("localhost:{port}"),
        "GET",
        "/api/snapshot",
        &[],
        "",
    );
    assert_eq!(code, 200);

    // Through the page, without the token: an error, and nothing moves.
    chrome.click("#dead-contains");
    chrome
        .tab
        .wait_for_element("#dead-contains")
        .unwrap()
        .type_into("downstream")
        .unwrap();
    chrome.click("#dead-apply");
    wait_until(PATIENCE, "the filtered page", || {
        let n = chrome.eval("document.querySelectorAll('#dead tbody tr').length");
        if n == 5 { Ok(()) } else { Err(n) }
    });
    // Counts the page's answered POSTs, so Redis is checked only after both were refused.
    chrome.eval(
        "window.__posts = 0; const f0 = window.fetch; window.fetch = async (u, o) => \
         { try { return await f0(u, o); } finally { if (o && o.method === 'POST') window.__posts++; } }",
    );
    chrome.click("#dead-requeue-all");
    chrome.click("section.queue[data-key=\"fila:conferencia\"] button.pause");
    wait_until(
        PATIENCE,
        "both POSTs answered and the refusal shown",
        || {
            let n = chrome.eval("window.__posts");
            let t = chrome.text("#error");
            if n == 2 && t.contains("token") {
                Ok(())
            } else {
                Err((n, t))
            }
        },
    );
    assert_eq!(
        chrome.eval("document.getElementById('confirm').hidden"),
        true
    );
    assert_eq!(llen(&mut conn, "fila:conferencia:dead"), 7);
    assert_eq!(llen(&mut conn, "fila:resultados"), 0);
    let settings: bool = redis::cmd("EXISTS")
        .arg("fila:conferencia:settings")
        .query(&mut conn)
        .unwrap();
    assert!(!settings, "a pause without the token wrote settings");

    // With the token: the count comes first, then the requeue, and the jobs complete.
    chrome.click("#token");
    chrome
        .tab
        .wait_for_element("#token")
        .unwrap()
        .type_into(TOKEN)
        .unwrap();
    chrome.click("#dead-requeue-all");
    wait_until(PATIENCE, "the count to confirm", || {
        let t = chrome.text("#confirm-text");
        if t.starts_with("Requeue 5 dead letter(s) of fila:conferencia") {
            Ok(())
        } else {
            Err(t)
        }
    });
    assert_eq!(
        llen(&mut conn, "fila:conferencia:dead"),
        7,
        "the count alone moved something"
    );
    confirm(&chrome);
    wait_until(PATIENCE, "the 5 requeued jobs to complete", || {
        let results: Vec<String> = redis::cmd("LRANGE")
            .arg("fila:resultados")
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .unwrap();
        let mut ids: Vec<String> = results
            .iter()
            .filter_map(|r| {
                serde_json::from_str::<Value>(r).ok()?["id"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        if ids == ["r1", "r2", "r3", "r4", "r5"] {
            Ok(())
        } else {
            Err(ids)
        }
    });
    assert_eq!(llen(&mut conn, "fila:conferencia:dead"), 2);

    // One record: view, purge, confirm.
    chrome.eval("document.getElementById('dead-contains').value = ''");
    chrome.click("#dead-apply");
    wait_until(PATIENCE, "2 rows", || {
        let n = chrome.eval("document.querySelectorAll('#dead tbody tr').length");
        if n == 2 { Ok(()) } else { Err(n) }
    });
    chrome.click("#dead tbody tr:first-child button.view");
    wait_until(PATIENCE, "the record", || {
        let t = chrome.text("#detail-payload");
        if t.starts_with("junk") {
            Ok(())
        } else {
            Err(t)
        }
    });
    chrome.click("#detail-purge");
    confirm(&chrome);
    wait_until(PATIENCE, "one dead letter purged", || {
        let n = llen(&mut conn, "fila:conferencia:dead");
        if n == 1 { Ok(()) } else { Err(n) }
    });

    // Pause from the page, with the token.
    chrome.click("section.queue[data-key=\"fila:conferencia\"] button.pause");
    wait_until(
        PATIENCE,
        "the queue paused in Redis and on the page",
        || {
            let p: Option<String> = redis::cmd("HGET")
                .arg("fila:conferencia:settings")
                .arg("paused")
                .query(&mut conn)
                .unwrap();
            let shown = chrome.eval("document.querySelector('section.queue[data-key=\"fila:conferencia\"] [data-field=\"paused\"]').hidden");
            if p.as_deref() == Some("1") && shown == false {
                Ok(())
            } else {
                Err((p, shown))
            }
        },
    );
    let _ = Duration::ZERO;
}

#[test]
fn redis_down_is_waited_for_and_a_wrong_password_is_refused_unshown() {
    let mut redis = RedisServer::start_with(&["--appendonly", "no", "--requirepass", "s3cret-pw"]);
    let bad = format!("redis://:wrong-pw@127.0.0.1:{}/", redis.port);
    let out = Command::new(env!("CARGO_BIN_EXE_threadtide"))
        .args(["--redis", &bad, "dashboard", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        !text.contains("wrong-pw"),
        "the password was printed: {text}"
    );

    let dash = Dashboard::start(&redis.url(), &["--queue", "fila:x"]);
    let snapshot = |what: &str, ok: &dyn Fn(&Value) -> bool| {
        wait_until(PATIENCE, what, || {
            let s = dash.get_json("/api/snapshot");
            if ok(&s) { Ok(s) } else { Err(s) }
        })
    };
    let s = snapshot("a first snapshot", &|s| {
        s["error"].is_null() && s["queues"][0]["key"] == "fila:x"
    });
    assert_eq!(
        s["redis"],
        format!("redis://:***@127.0.0.1:{}/", redis.port)
    );
    redis.kill();
    let s = snapshot("the outage shown, last numbers kept", &|s| {
        s["stale"] == true && s["error"].as_str().is_some_and(|e| !e.is_empty())
    });
    assert_eq!(s["queues"][0]["key"], "fila:x");
    assert!(
        !s.to_string().contains("s3cret-pw"),
        "the password was served: {s}"
    );
    redis.restart();
    snapshot("the dashboard back on its own", &|s| {
        s["error"].is_null() && s["stale"].is_null()
    });
}
