//! An HTTP receiver for Slack-like and webhook deliveries: records every request and answers
//! by rules on the body (every matching request), then from a queue of scripted replies, then
//! `200 ok`. GET requests are answered too (a login page behind a redirect).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use crate::helpers::wait_until;

#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: &'static str,
    pub retry_after: Option<u64>,
    /// Answer only after this long (a slow receiver).
    pub delay: Duration,
    /// A `Location` header (a redirect).
    pub location: Option<String>,
}

impl Reply {
    pub fn status(status: u16, body: &'static str) -> Reply {
        Reply {
            status,
            body,
            retry_after: None,
            delay: Duration::ZERO,
            location: None,
        }
    }

    /// `status` with a `Location` header, as a login proxy answers.
    pub fn redirect(status: u16, location: &str) -> Reply {
        Reply {
            location: Some(location.to_owned()),
            ..Reply::status(status, "")
        }
    }
}

type Rule = (Box<dyn Fn(&str) -> bool + Send>, Reply);

#[derive(Default)]
struct Inner {
    rules: Vec<Rule>,
    replies: VecDeque<Reply>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().route("/{*path}", any(handle)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// The next answers, in order; after them, `200 ok`.
    pub fn reply(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().replies.extend(replies);
    }

    /// Answers `reply` to every request whose body satisfies `when`, before any queued reply.
    pub fn reply_when(&self, when: impl Fn(&str) -> bool + Send + 'static, reply: Reply) {
        self.inner.lock().unwrap().rules.push((Box::new(when), reply));
    }

    /// Forgets the rules of `reply_when` (the receiver is fixed).
    pub fn clear_rules(&self) {
        self.inner.lock().unwrap().rules.clear();
    }

    /// Every request, POST or GET.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// The requests from the `start`th on: a test polling thousands of posts reads each once.
    pub fn received_from(&self, start: usize) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap()
            .received
            .get(start..)
            .unwrap_or_default()
            .to_vec()
    }

    /// POST requests (deliveries) that were answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.method == Method::POST && r.status < 300)
            .collect()
    }

    pub async fn wait_for_requests(&self, n: usize, deadline: Duration) {
        wait_until(deadline, &format!("{n} requests at the receiver"), || async {
            self.received().len() >= n
        })
        .await;
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut inner = inner.lock().unwrap();
        let body = String::from_utf8_lossy(&body).into_owned();
        let ruled = inner.rules.iter().find(|(when, _)| when(&body)).map(|(_, r)| r.clone());
        let reply = match ruled {
            Some(r) => r,
            None if method == Method::POST => inner.replies.pop_front().unwrap_or(Reply::status(200, "ok")),
            None => Reply::status(200, "a page for people"),
        };
        inner.received.push(Received {
            at: Instant::now(),
            method,
            path: uri.path().to_owned(),
            headers,
            body,
            status: reply.status,
        });
        reply
    };
    tokio::time::sleep(reply.delay).await;
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    if let Some(s) = reply.retry_after {
        response
            .headers_mut()
            .insert("retry-after", s.to_string().parse().unwrap());
    }
    if let Some(l) = reply.location {
        response.headers_mut().insert("location", l.parse().unwrap());
    }
    response
}

/// A receiver that answers every request with `status` and a body that never ends: the first
/// bytes are `first`, then filler, for as long as the client reads.
pub async fn endless_body(status: u16, first: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request is small; one read takes its head (the body is not needed).
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status} Refused\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                );
                let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
                if socket.write_all(head.as_bytes()).await.is_err()
                    || socket.write_all(chunk(first).as_bytes()).await.is_err()
                {
                    return;
                }
                let filler = chunk(&"x".repeat(16 * 1024));
                while socket.write_all(filler.as_bytes()).await.is_ok() {}
            });
        }
    });
    addr
}
