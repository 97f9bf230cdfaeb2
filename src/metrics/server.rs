//! The HTTP/1.1 server of [`Builder::metrics_addr`](crate::Builder::metrics_addr): one thread,
//! std's `TcpListener`, one request per connection (`Connection: close`), `GET` or `HEAD` of
//! `/metrics` and `/healthz`. Enough for a Prometheus scraper and a health probe; hosts that
//! want more run their own server around
//! [`ThreadPoolManager::metrics_text`](crate::ThreadPoolManager::metrics_text).
//!
//! Stopping wakes the blocking `accept` by connecting to the listener once, so the thread
//! exits at once (no polling, no sleep).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// A whole request (read and answer) gets this long: a slow or dripping client is dropped
/// after it, so it holds the one thread at most this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed `accept` (out of file descriptors, say), the wait before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The longest request head read; a longer one is refused (431).
const MAX_HEAD: usize = 8 * 1024;

/// What the server answers with: the metrics text, and the health state.
pub(crate) trait Pages: Send + 'static {
    fn metrics(&self) -> String;
    /// `(healthy, body)`.
    fn health(&self) -> (bool, &'static str);
}

/// A running server; [`stop`](Server::stop) ends and joins its thread.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Dropped on stop: wakes the back-off wait after a failed accept.
    wake: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `pages` on `listener` from a thread named `name`.
    pub(crate) fn start(
        listener: TcpListener,
        name: String,
        pages: impl Pages,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (wake, woken) = mpsc::channel::<()>();
        let thread = thread::Builder::new().name(name).spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    break;
                }
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve(s, &pages) {
                            log::debug!("metrics: a request failed: {e}");
                        }
                    }
                    Err(e) => {
                        // Errors such as EMFILE repeat at once: wait before the next accept
                        // (waking at once on stop) instead of spinning.
                        log::debug!("metrics: accept failed: {e}");
                        match woken.recv_timeout(ACCEPT_BACKOFF) {
                            Err(RecvTimeoutError::Timeout) => {}
                            _ => break,
                        }
                    }
                }
            }
        })?;
        log::info!("metrics: serving /metrics and /healthz on http://{addr}");
        Ok(Server {
            addr,
            stop,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for a request being served, and joins the thread. Idempotent.
    pub(crate) fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        drop(self.wake.take());
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        // If the wake-up cannot connect, the thread stays blocked in accept: do not join it
        // (it holds no job and exits with the process) rather than hang the shutdown.
        match TcpStream::connect_timeout(&wake, CLIENT_TIMEOUT) {
            Ok(_) => {
                let _ = thread.join();
            }
            Err(e) => log::warn!("metrics: cannot wake the server thread to stop it: {e}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A stream whose reads and writes all end by one deadline: each sets its timeout to what is
/// left, so a client that drips a byte at a time cannot stretch the request past it.
struct Deadline {
    stream: TcpStream,
    until: Instant,
}

impl Deadline {
    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request deadline passed",
            ));
        }
        Ok(left)
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

fn serve(stream: TcpStream, pages: &impl Pages) -> io::Result<()> {
    let mut stream = Deadline {
        stream,
        until: Instant::now() + CLIENT_TIMEOUT,
    };
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
                true,
            );
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            // The stop wake-up, or a client that gave up.
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let body_wanted = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n",
            body_wanted,
        );
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let text = pages.metrics();
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &text,
                body_wanted,
            )
        }
        "/healthz" => {
            let (healthy, body) = pages.health();
            let status = if healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            respond(&mut stream, status, "text/plain", body, body_wanted)
        }
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n",
            body_wanted,
        ),
    }
}

fn respond(
    stream: &mut impl Write,
    status: &str,
    content_type: &str,
    body: &str,
    with_body: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}
