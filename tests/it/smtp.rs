//! A real SMTP server (mailin-embedded) on 127.0.0.1, optionally with STARTTLS under a test CA
//! generated at run time.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailin_embedded::response::{self, Response};
use mailin_embedded::{Handler, Server, SslConfig};

use crate::helpers::wait_until;

#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

#[derive(Clone, Default)]
struct Collector {
    current: Arc<Mutex<Mail>>,
    mails: Arc<Mutex<Vec<Mail>>>,
    /// Recipients answered `550 Mailbox unavailable`.
    refused: Arc<Mutex<Vec<String>>>,
    /// Recipients answered `450`, for now.
    deferred: Arc<Mutex<Vec<String>>>,
    /// Recipients whose next `RCPT TO` only is answered `554` (a content filter refusing one mail).
    refuse_once: Arc<Mutex<Vec<String>>>,
}

impl Handler for Collector {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        *self.current.lock().unwrap() = Mail {
            from: from.to_owned(),
            ..Mail::default()
        };
        response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        {
            let mut once = self.refuse_once.lock().unwrap();
            if let Some(i) = once.iter().position(|r| r == to) {
                once.remove(i);
                return Response::custom(554, "rejected".into());
            }
        }
        if self.refused.lock().unwrap().iter().any(|r| r == to) {
            return response::NO_MAILBOX;
        }
        if self.deferred.lock().unwrap().iter().any(|r| r == to) {
            return Response::custom(450, "Mailbox busy, try again later".into());
        }
        self.current.lock().unwrap().to.push(to.to_owned());
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current
            .lock()
            .unwrap()
            .data
            .push_str(&String::from_utf8_lossy(buf));
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mail = std::mem::take(&mut *self.current.lock().unwrap());
        self.mails.lock().unwrap().push(mail);
        response::OK
    }
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    refused: Arc<Mutex<Vec<String>>>,
    deferred: Arc<Mutex<Vec<String>>>,
    refuse_once: Arc<Mutex<Vec<String>>>,
    /// The CA that signed the server's certificate (PEM file), when STARTTLS is on.
    pub ca_file: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts a server on its own threads (mailin-embedded is blocking); it lives until the
    /// test process ends.
    pub fn start(starttls: bool) -> SmtpServer {
        Self::start_with(starttls, TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// A plain server on a chosen port (one the test reserved and saw refused before).
    pub fn start_on(port: u16) -> SmtpServer {
        Self::start_with(false, TcpListener::bind(("127.0.0.1", port)).unwrap())
    }

    fn start_with(starttls: bool, listener: TcpListener) -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let collector = Collector::default();
        let mails = collector.mails.clone();
        let refused = collector.refused.clone();
        let deferred = collector.deferred.clone();
        let refuse_once = collector.refuse_once.clone();
        let mut server = Server::new(collector);
        server.with_name("smtp.test").with_num_threads(2);
        let mut ca_file = None;
        if starttls {
            let (ca_pem, cert_pem, key_pem) = test_pki();
            let (ca, cert, key) = (
                dir.path().join("ca.pem"),
                dir.path().join("cert.pem"),
                dir.path().join("key.pem"),
            );
            std::fs::write(&ca, ca_pem).unwrap();
            std::fs::write(&cert, cert_pem).unwrap();
            std::fs::write(&key, key_pem).unwrap();
            server
                .with_ssl(SslConfig::SelfSigned {
                    cert_path: cert.display().to_string(),
                    key_path: key.display().to_string(),
                })
                .expect("TLS configured");
            ca_file = Some(ca);
        }
        let addr = listener.local_addr().unwrap();
        server.with_tcp_listener(listener);
        std::thread::spawn(move || {
            if let Err(e) = server.serve() {
                eprintln!("test SMTP server stopped: {e}");
            }
        });
        SmtpServer {
            addr,
            mails,
            refused,
            deferred,
            refuse_once,
            ca_file,
            _dir: dir,
        }
    }

    /// From now on, `RCPT TO:<address>` is answered `550 Mailbox unavailable`.
    pub fn refuse(&self, address: &str) {
        self.refused.lock().unwrap().push(address.to_owned());
    }

    /// `RCPT TO:<address>` is answered `450` (try later) while `on`.
    pub fn defer(&self, address: &str, on: bool) {
        let mut deferred = self.deferred.lock().unwrap();
        deferred.retain(|a| a != address);
        if on {
            deferred.push(address.to_owned());
        }
    }

    /// The next `RCPT TO:<address>` only is answered `554` (as a content filter refuses one mail).
    pub fn refuse_next(&self, address: &str) {
        self.refuse_once.lock().unwrap().push(address.to_owned());
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    pub async fn wait_for_mails(&self, n: usize, deadline: Duration) -> Vec<Mail> {
        wait_until(deadline, &format!("{n} mails"), || async { self.mails().len() >= n }).await;
        self.mails()
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM.
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "linkwatch test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}
