//! A TCP proxy in front of a real redis-server that can go silent (stop forwarding without
//! closing, as a partitioned network does) and reset every connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

pub struct Proxy {
    pub port: u16,
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    pub connections: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let proxy = Proxy {
            port,
            silent: Arc::default(),
            stop: Arc::default(),
            streams: Arc::default(),
            connections: Arc::default(),
        };
        let (silent, stop, streams, count) = (
            proxy.silent.clone(),
            proxy.stop.clone(),
            proxy.streams.clone(),
            proxy.connections.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                            continue;
                        };
                        count.fetch_add(1, Ordering::SeqCst);
                        streams
                            .lock()
                            .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                        pump(
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            silent.clone(),
                            stop.clone(),
                        );
                        pump(server, client, silent.clone(), stop.clone());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops forwarding in both directions, without closing anything. Bytes wait in the
    /// kernel's buffers, as in a partition that TCP will later retransmit through.
    pub fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.silent.store(false, Ordering::SeqCst);
    }

    /// Closes every connection (the clients see resets / EOF).
    pub fn reset_all(&self) {
        for s in self.streams.lock().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.heal();
        self.reset_all();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, silent: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            // While silent, do not read: the sender's bytes stay queued, nothing is dropped.
            while silent.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
