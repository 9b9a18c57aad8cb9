//! An HTTP receiver for Slack-like and webhook deliveries: records every request and answers
//! from a queue of scripted replies (then `200 ok`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::helpers::wait_until;

#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
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
}

impl Reply {
    pub fn status(status: u16, body: &'static str) -> Reply {
        Reply {
            status,
            body,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct Inner {
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
        let app = Router::new().route("/{*path}", post(handle)).with_state(inner.clone());
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

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Requests that were answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.status < 300).collect()
    }

    pub async fn wait_for_requests(&self, n: usize, deadline: Duration) {
        wait_until(deadline, &format!("{n} requests at the receiver"), || async {
            self.received().len() >= n
        })
        .await;
    }
}

async fn handle(State(inner): State<Arc<Mutex<Inner>>>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = {
        let mut inner = inner.lock().unwrap();
        let reply = inner.replies.pop_front().unwrap_or(Reply::status(200, "ok"));
        inner.received.push(Received {
            at: Instant::now(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
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
    response
}
