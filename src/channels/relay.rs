//! One SMTP transaction with the relay, every step of it bounded: connect and greeting, STARTTLS,
//! the login, the mail, and the goodbye.
//!
//! Why not lettre's `AsyncSmtpTransport`: its `timeout` bounds the TCP connect only, and the
//! greeting and every reply after it are read without a limit (lettre issue 1027), so a server
//! that accepts and never speaks held a channel forever. And its pool hands a connection whose
//! send was abandoned half way back for reuse, where the next mail would read the previous
//! mail's replies. Here each transaction has its own connection and one deadline, each step is
//! named when the deadline passes, and an abandoned connection is simply closed.

use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls};
use lettre::transport::smtp::extension::ClientId;
use tokio::time::Instant;

/// The longest the goodbye (`QUIT`) is waited for: the mail was accepted before it, so a server
/// that does not answer it costs nothing but this.
const QUIT_WAIT: Duration = Duration::from_secs(2);

/// Where mail goes, and how to log in.
pub struct Relay {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub credentials: Option<Credentials>,
    /// The most one transaction may take, from the connection to the mail's acceptance.
    pub timeout: Duration,
    pub hello: ClientId,
}

/// Why a transaction failed.
#[derive(Debug, PartialEq)]
pub enum Failed {
    /// The relay refused this recipient or this mail for good (5xx after the login).
    Refused(String),
    /// The relay deferred this recipient or this mail (4xx after the login): try it again.
    Deferred(String),
    /// The relay itself could not be used: no connection, no greeting, TLS, the login, no answer
    /// in time. The other recipients would meet the same.
    Relay(String),
    /// lettre would not send the mail at all (say, 8-bit text to a 7-bit server).
    Client(String),
}

impl Relay {
    /// Sends `mail` to the recipients of `envelope` in one transaction, within `timeout`.
    pub async fn send(&self, envelope: &Envelope, mail: &[u8]) -> Result<(), Failed> {
        let deadline = Instant::now() + self.timeout;
        let mut conn = self.connect(deadline).await?;
        self.secure_and_log_in(&mut conn, deadline).await?;
        let sent = tokio::time::timeout_at(deadline, conn.send(envelope, mail))
            .await
            .map_err(self.within("while sending the mail"))?;
        match sent {
            Ok(_) => {
                // Accepted: the goodbye is a courtesy, never a failure, and within the
                // transaction's deadline (the dispatcher's bound counts on it): a relay that
                // does not answer it must not turn a delivered mail into one sent again.
                let _ = tokio::time::timeout_at(deadline.min(Instant::now() + QUIT_WAIT), conn.quit()).await;
                Ok(())
            }
            Err(e) if e.is_permanent() => Err(Failed::Refused(reply(&e))),
            Err(e) if e.is_transient() => Err(Failed::Deferred(reply(&e))),
            Err(e) if e.is_client() => Err(Failed::Client(reply(&e))),
            Err(e) => Err(self.relay_error("lost the connection to", &e)),
        }
    }

    /// The failure of a step (`what`) that got no answer by the transaction's deadline.
    fn within(&self, what: &'static str) -> impl FnOnce(tokio::time::error::Elapsed) -> Failed + '_ {
        let (host, port, timeout) = (&self.host, self.port, self.timeout);
        move |_| {
            Failed::Relay(format!(
                "no answer from the SMTP server {host}:{port} within {} {what}",
                humantime::format_duration(timeout)
            ))
        }
    }

    /// The connection and the greeting (in TLS from the start for `smtps://`).
    async fn connect(&self, deadline: Instant) -> Result<AsyncSmtpConnection, Failed> {
        let wrapper = match &self.tls {
            Tls::Wrapper(tls) => Some(tls.clone()),
            _ => None,
        };
        tokio::time::timeout_at(
            deadline,
            AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(self.timeout),
                &self.hello,
                wrapper,
                None,
            ),
        )
        .await
        .map_err(self.within(
            "while connecting: it accepted no connection, or said nothing after accepting it (a firewall, a tarpit, or a port that expects TLS first: use smtps:// for port 465)",
        ))?
        .map_err(|e| self.relay_error("cannot connect to", &e))
    }

    /// STARTTLS when the relay's TLS asks for it, then the login when there are credentials.
    async fn secure_and_log_in(&self, conn: &mut AsyncSmtpConnection, deadline: Instant) -> Result<(), Failed> {
        let starttls = match &self.tls {
            Tls::Required(tls) => Some(tls.clone()),
            Tls::Opportunistic(tls) if conn.can_starttls() => Some(tls.clone()),
            _ => None,
        };
        if let Some(tls) = starttls {
            tokio::time::timeout_at(deadline, conn.starttls(tls, &self.hello))
                .await
                .map_err(self.within("during STARTTLS"))?
                .map_err(|e| self.relay_error("STARTTLS failed with", &e))?;
        }
        if let Some(credentials) = &self.credentials {
            tokio::time::timeout_at(deadline, conn.auth(DEFAULT_MECHANISMS, credentials))
                .await
                .map_err(self.within("to the login"))?
                .map_err(|e| match e.status() {
                    Some(code) => Failed::Relay(format!("the relay refused the login ({code}): {}", reply(&e))),
                    None => self.relay_error("cannot log in to", &e),
                })?;
        }
        Ok(())
    }

    fn relay_error(&self, what: &str, e: &lettre::transport::smtp::Error) -> Failed {
        Failed::Relay(format!(
            "{what} the SMTP server {}:{}: {}",
            self.host,
            self.port,
            reply(e)
        ))
    }
}

/// lettre's error (its text names the cause and quotes the server), through the gate for
/// outside text.
fn reply(e: &lettre::transport::smtp::Error) -> String {
    crate::outside::text(&e.to_string(), 500)
}
