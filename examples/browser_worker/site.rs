//! The test site the browsers work on: a login form, order pages and invoice pages, served on
//! loopback by a std `TcpListener` (one thread per connection, `Connection: close`).
//!
//! - `GET /login`: the form (`#login-form`, `#user`, `#password`); `POST /login` with the right
//!   credentials sets the `session` cookie, counts a login and shows `#welcome`.
//! - `GET /order/<id>`: `#order-id`, `#customer`, `#total`, `#items` (see [`order`]).
//! - `GET /invoice/<id>`: `#invoice-no` and a line-item table of [`invoice_rows`] rows; ids
//!   that are multiples of 4 print on 2 pages, the others on 1 (see [`invoice_pages`]).
//! - `GET /stats`: JSON `{"logins", "pages", "refused", "held"}`.
//!
//! Pages other than the login form refuse (403, `#login-required`) without a session cookie
//! the site issued. A page asked with `?hold` waits until [`Site::release_holds`] (a test's way to
//! be sure a job is in the middle of its page when it acts).
#![allow(dead_code)] // the example and each test use a different part

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// The credentials the login form accepts.
pub const USER: &str = "operador";
/// See [`USER`].
pub const PASSWORD: &str = "segredo-de-teste";
/// The session cookie's name.
pub const COOKIE: &str = "session";

/// What an order page shows for `id`: (customer, total, items).
pub fn order(id: u64) -> (String, String, u64) {
    let items = id % 7 + 1;
    let cents = id * 1_234 % 100_000 + 999;
    (
        format!("Cliente {id}"),
        format!("{}.{:02}", cents / 100, cents % 100),
        items,
    )
}

/// Line items on the invoice of `id`.
pub fn invoice_rows(id: u64) -> u64 {
    if id.is_multiple_of(4) { 40 } else { 6 }
}

/// Pages the invoice of `id` prints on (A4, rows of a fixed 30 px: 40 rows do not fit one
/// page, 6 do).
pub fn invoice_pages(id: u64) -> u16 {
    if id.is_multiple_of(4) { 2 } else { 1 }
}

/// The invoice number printed on the invoice of `id` (the PDF check looks for it).
pub fn invoice_number(id: u64) -> String {
    format!("NF-{id:06}")
}

#[derive(Default)]
struct Shared {
    logins: AtomicU64,
    pages: AtomicU64,
    refused: AtomicU64,
    sessions: Mutex<HashSet<String>>,
    /// Requests waiting in `?hold`, and whether holds are released.
    holds: Mutex<(u64, bool)>,
    /// The `User-Agent` of every request that waited in `?hold`, in arrival order.
    held_agents: Mutex<Vec<String>>,
    holds_changed: Condvar,
    stop: AtomicBool,
}

/// The running site; stops (and joins its accept thread) on drop.
pub struct Site {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Site {
    /// Serves the site on a free loopback port.
    pub fn start() -> std::io::Result<Site> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("site-accept".into())
                .spawn(move || accept_loop(&listener, &shared))?
        };
        Ok(Site {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Successful logins so far.
    pub fn logins(&self) -> u64 {
        self.shared.logins.load(Ordering::SeqCst)
    }

    /// Order and invoice pages served so far.
    pub fn pages(&self) -> u64 {
        self.shared.pages.load(Ordering::SeqCst)
    }

    /// Requests waiting in `?hold` now.
    pub fn held(&self) -> u64 {
        self.shared.holds.lock().0
    }

    /// The `User-Agent` of every request that waited in `?hold` so far (a browser of
    /// `browser_worker` says `threadtide-browser/<worker>`).
    pub fn held_agents(&self) -> Vec<String> {
        self.shared.held_agents.lock().clone()
    }

    /// Lets every held request (and every later one) through.
    pub fn release_holds(&self) {
        self.shared.holds.lock().1 = true;
        self.shared.holds_changed.notify_all();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.release_holds();
        let _ = TcpStream::connect(self.addr); // wakes accept()
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        // Connections are short (`Connection: close`); a held one must not stop the others.
        let spawned = std::thread::Builder::new()
            .name("site-conn".into())
            .spawn(move || {
                let _ = serve(stream, &shared);
            });
        let (done, running) = connections.drain(..).partition(|c| c.is_finished());
        connections = running;
        connections.extend(spawned.ok());
        for connection in done {
            let _ = connection.join();
        }
    }
    // Holds are released by now; reads time out after 10 s at worst.
    for connection in connections {
        let _ = connection.join();
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    cookie: Option<String>,
    agent: String,
    body: String,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    let (mut length, mut cookie, mut agent) = (0usize, None, String::new());
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().unwrap_or(0).min(64 * 1024);
        } else if name.eq_ignore_ascii_case("user-agent") {
            agent = value.to_owned();
        } else if name.eq_ignore_ascii_case("cookie") {
            cookie = value
                .split(';')
                .filter_map(|c| c.trim().split_once('='))
                .find(|(n, _)| *n == COOKIE)
                .map(|(_, v)| v.to_owned());
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        query,
        cookie,
        agent,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn respond(
    mut stream: &TcpStream,
    status: &str,
    kind: &str,
    extra: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{title}</title><style>\
         body{{font-family:'DejaVu Sans',sans-serif;margin:0}} table{{border-collapse:collapse}}\
         tr{{height:30px}} td{{padding:0 8px}}</style></head><body>{body}</body></html>"
    )
}

fn form_field<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let req = read_request(&stream)?;
    let html = "text/html; charset=utf-8";
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/login") => {
            let form = "<form id=login-form method=post action=/login>\
                <input id=user name=user><input id=password name=password type=password>\
                <button id=enter type=submit>Entrar</button></form>";
            return respond(&stream, "200 OK", html, "", &page("Login", form));
        }
        ("POST", "/login") => {
            let ok = form_field(&req.body, "user") == Some(USER)
                && form_field(&req.body, "password") == Some(PASSWORD);
            if !ok {
                let body = page("Login", "<p id=login-failed>wrong user or password</p>");
                return respond(&stream, "403 Forbidden", html, "", &body);
            }
            let n = shared.logins.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("s{n}x{:x}", std::process::id() as u64 * 7919 + n * 104_729);
            shared.sessions.lock().insert(token.clone());
            let cookie = format!("Set-Cookie: {COOKIE}={token}; Path=/; HttpOnly\r\n");
            let body = page("Welcome", "<p id=welcome>bem-vindo</p>");
            return respond(&stream, "200 OK", html, &cookie, &body);
        }
        ("GET", "/stats") => {
            let body = format!(
                "{{\"logins\":{},\"pages\":{},\"refused\":{},\"held\":{}}}",
                shared.logins.load(Ordering::SeqCst),
                shared.pages.load(Ordering::SeqCst),
                shared.refused.load(Ordering::SeqCst),
                shared.holds.lock().0
            );
            return respond(&stream, "200 OK", "application/json", "", &body);
        }
        _ => {}
    }
    let Some((kind, id)) = req
        .path
        .strip_prefix("/order/")
        .map(|id| ("order", id))
        .or_else(|| req.path.strip_prefix("/invoice/").map(|id| ("invoice", id)))
        .and_then(|(kind, id)| Some((kind, id.parse::<u64>().ok()?)))
        .filter(|_| req.method == "GET")
    else {
        return respond(&stream, "404 Not Found", "text/plain", "", "not found");
    };
    let known = req
        .cookie
        .as_ref()
        .is_some_and(|c| shared.sessions.lock().contains(c));
    if !known {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        let body = page("Login required", "<p id=login-required>log in first</p>");
        return respond(&stream, "403 Forbidden", html, "", &body);
    }
    if req.query.split('&').any(|q| q == "hold") {
        shared.held_agents.lock().push(req.agent.clone());
        let mut holds = shared.holds.lock();
        holds.0 += 1;
        while !holds.1 {
            shared.holds_changed.wait(&mut holds);
        }
        holds.0 -= 1;
    }
    shared.pages.fetch_add(1, Ordering::SeqCst);
    let body = if kind == "order" {
        let (customer, total, items) = order(id);
        page(
            &format!("Pedido {id}"),
            &format!(
                "<h1>Pedido <span id=order-id>{id}</span></h1><p>Cliente: \
                 <span id=customer>{customer}</span></p><p>Total: <span id=total>{total}</span>\
                 </p><p>Itens: <span id=items>{items}</span></p>"
            ),
        )
    } else {
        let rows: String = (1..=invoice_rows(id))
            .map(|n| format!("<tr><td>{n}</td><td>Item {n} do pedido {id}</td><td>1</td></tr>"))
            .collect();
        page(
            &format!("Nota {id}"),
            &format!(
                "<h1 id=invoice-no>{}</h1><table id=lines>{rows}</table>",
                invoice_number(id)
            ),
        )
    };
    respond(&stream, "200 OK", html, "", &body)
}
