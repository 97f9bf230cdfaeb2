//! TLS (feature `tls`) against a real `redis-server --tls-port`, with a certificate authority
//! and certificates this test makes with `openssl`: the whole job cycle over TLS, client
//! certificates, and a server whose certificate is not trusted refused at start.
#![cfg(feature = "tls")]

mod support;

use std::convert::Infallible;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use redis::Commands;
use support::redis::RedisServer;
use support::{PATIENCE, wait_until};
use threadtide::{RedisSource, RedisSourceBuilder, StartError, ThreadPoolManager};

/// A CA, a server certificate for 127.0.0.1 signed by it, and a client certificate.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(name: &str) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("threadtide-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl must be installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=threadtide test CA",
        ]);
        for who in ["server", "client"] {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ]);
        }
        Certs { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(Path::new(&self.path(file))).unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server with its plain port (for the test's own checks) and a TLS port.
fn tls_server(certs: &Certs, auth_clients: bool) -> (RedisServer, u16) {
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (port, cert, key, ca) = (
        tls_port.to_string(),
        certs.path("server.pem"),
        certs.path("server.key"),
        certs.path("ca.pem"),
    );
    let server = RedisServer::start_with(&[
        "--appendonly",
        "no",
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        if auth_clients { "yes" } else { "no" },
    ]);
    (server, tls_port)
}

fn run_jobs(server: &RedisServer, builder: RedisSourceBuilder, n: usize) {
    let source = builder.results("fila:tls-results").build().unwrap();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("tls")
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, j: &Vec<u8>| Ok(j.clone()),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let jobs: Vec<String> = (0..n).map(|i| format!("job{i}")).collect();
    source.push(&jobs).unwrap(); // over TLS too
    let mut plain = server.conn();
    wait_until(
        PATIENCE,
        "every result",
        || plain.llen::<_, usize>("fila:tls-results").unwrap() == n,
        || (source.summary(), source.stats()),
    );
    // Every connection of the pool went to the TLS port: the plain port only has ours.
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut plain).unwrap();
    assert!(clients.contains(":keeper:fila:tls"), "{clients}");
    pool.shutdown();
    pool.wait().unwrap();
    let _: () = plain.del("fila:tls-results").unwrap();
}

#[test]
fn the_job_cycle_runs_over_tls_with_and_without_client_certificates() {
    let certs = Certs::make("cycle");
    let (server, tls_port) = tls_server(&certs, false);
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    run_jobs(
        &server,
        RedisSource::builder(url.as_str(), "fila:tls").tls_root_certificate(certs.read("ca.pem")),
        50,
    );

    let certs = Certs::make("mtls");
    let (server, tls_port) = tls_server(&certs, true);
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    run_jobs(
        &server,
        RedisSource::builder(url.as_str(), "fila:tls")
            .tls_root_certificate(certs.read("ca.pem"))
            .tls_client_certificate(certs.read("client.pem"), certs.read("client.key")),
        50,
    );
}

#[test]
fn an_untrusted_server_certificate_fails_start() {
    let certs = Certs::make("untrusted");
    let (_server, tls_port) = tls_server(&certs, false);
    // No root certificate: the system's trust store does not know the test's CA.
    let source = RedisSource::builder(format!("rediss://127.0.0.1:{tls_port}/"), "fila:tls")
        .build()
        .unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "q",
            source,
            |_| Ok::<_, Infallible>(()),
            |_, j: &Vec<u8>| Ok(j.clone()),
        )
        .build()
        .unwrap();
    match pool.start() {
        Err(StartError::Source { error, .. }) => {
            assert!(error.is_permanent(), "{error}");
            assert!(error.to_string().contains("certificate"), "{error}");
        }
        other => panic!("expected a start error, got {other:?}"),
    }
}
