//! HTTP Digest with a nonce kept for every later request.
//!
//! diqwest answers the challenges: the first request of an API key, and again when the server
//! refuses the kept nonce (stale). Every other request is answered here from the kept
//! challenge. diqwest's own session would do that too, but per request it formats the kept
//! challenge back into a header, parses it again, hashes the password three times and builds
//! the header field by field through `format!`: a quarter of a quiet check's instructions
//! (callgrind, BENCHMARKS.md). Here the challenge is parsed once, `HA1` is kept, and a request
//! costs two MD5s and one string.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use digest_auth::{AlgorithmType, AuthContext, HttpMethod, WwwAuthenticateHeader};
use diqwest::session::CachedContextGuard;
use diqwest::{DigestAuthCredentials, WithDigestAuth};
use md5::{Digest as _, Md5};
use reqwest::{RequestBuilder, Response, StatusCode, Url, header};

use crate::secret::Secret;

/// One API key's Digest state: its credentials and the challenge its requests answer.
pub struct Session {
    username: String,
    password: Secret,
    kept: RwLock<Option<Arc<Kept>>>,
}

/// A challenge a request was answered with, kept for the next requests to the same host.
struct Kept {
    host: String,
    prompt: WwwAuthenticateHeader,
    /// The last nonce count used with this nonce; the server refuses a count seen before.
    nc: AtomicU32,
    /// For MD5 (the only algorithm Cloud Manager offers): what every answer shares.
    md5: Option<Md5Answer>,
}

struct Md5Answer {
    /// hex(MD5(username:realm:password))
    ha1: [u8; 32],
    /// `Digest username="…", realm="…", nonce="…", uri="`
    head: String,
    /// What follows the response: `", opaque="…", algorithm=MD5` (or less).
    tail: String,
    qop_auth: bool,
}

impl Session {
    pub fn new(username: String, password: Secret) -> Session {
        Session {
            username,
            password,
            kept: RwLock::new(None),
        }
    }

    /// Sends the GET of `url` that `request` builds, with Digest authentication; `requests`
    /// counts the HTTP requests it took: one with a kept nonce, two for a new challenge, three
    /// when the kept nonce was refused.
    pub async fn send(
        &self,
        url: &Url,
        request: impl Fn() -> RequestBuilder,
        requests: &AtomicU64,
    ) -> diqwest::error::Result<Response> {
        let host = url.host_str().unwrap_or_default();
        if let Some(kept) = self.kept(host) {
            let answer = kept.answer(
                &self.username,
                self.password.expose(),
                &url[url::Position::BeforePath..url::Position::AfterQuery],
            );
            if let Ok(value) = header::HeaderValue::try_from(answer) {
                requests.fetch_add(1, Ordering::Relaxed);
                let response = request().header(header::AUTHORIZATION, value).send().await?;
                if response.status() != StatusCode::UNAUTHORIZED {
                    return Ok(response);
                }
                // Stale or revoked: forget it (unless another check has already replaced it)
                // and answer a fresh challenge.
                self.forget(&kept);
            }
        }
        // Boxed: a challenge is answered rarely, and its future would otherwise double the size
        // of every check's.
        Box::pin(request().send_digest_auth(Challenge {
            session: self,
            requests,
        }))
        .await
    }

    fn kept(&self, host: &str) -> Option<Arc<Kept>> {
        let kept = self.kept.read().unwrap_or_else(|p| p.into_inner());
        kept.as_ref().filter(|k| k.host == host).cloned()
    }

    fn forget(&self, refused: &Arc<Kept>) {
        let mut kept = self.kept.write().unwrap_or_else(|p| p.into_inner());
        if kept.as_ref().is_some_and(|k| Arc::ptr_eq(k, refused)) {
            *kept = None;
        }
    }

    fn keep(&self, host: &str, www_authenticate: &str) {
        // A challenge that does not parse is diqwest's to report; there is nothing to keep.
        let Ok(prompt) = digest_auth::parse(www_authenticate) else {
            return;
        };
        let md5 = Md5Answer::of(&prompt, &self.username, self.password.expose());
        let kept = Kept {
            host: host.to_owned(),
            prompt,
            // diqwest answers the challenge itself with count 1.
            nc: AtomicU32::new(1),
            md5,
        };
        *self.kept.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(kept));
    }
}

impl Kept {
    /// The `Authorization` value for a GET of `path` (path and query).
    fn answer(&self, username: &str, password: &str, path: &str) -> String {
        let nc = self.nc.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        match &self.md5 {
            Some(md5) => md5.answer(&self.prompt.nonce, nc, path),
            None => {
                // SHA-256, `-sess`, `userhash`: rare enough to take digest_auth's general path.
                let mut prompt = self.prompt.clone();
                prompt.nc = nc.wrapping_sub(1); // `respond` counts it up
                let context = AuthContext::new_with_method(username, password, path, None::<&[u8]>, HttpMethod::GET);
                prompt
                    .respond(&context)
                    .map(|a| a.to_header_string())
                    .unwrap_or_default()
            }
        }
    }
}

impl Md5Answer {
    /// The shared part of MD5 answers to `prompt`, or `None` when it asks for more than MD5
    /// (another algorithm, `-sess`, `userhash`).
    fn of(prompt: &WwwAuthenticateHeader, username: &str, password: &str) -> Option<Md5Answer> {
        if prompt.algorithm.algo != AlgorithmType::MD5 || prompt.algorithm.sess || prompt.userhash {
            return None;
        }
        let qop_auth = prompt.qop.as_ref().is_some_and(|q| !q.is_empty());
        let mut h = Md5::new();
        for part in [username, ":", &prompt.realm, ":", password] {
            h.update(part.as_bytes());
        }
        let mut head = String::with_capacity(64 + prompt.nonce.len());
        head.push_str("Digest username=\"");
        quote_into(&mut head, username);
        head.push_str("\", realm=\"");
        quote_into(&mut head, &prompt.realm);
        head.push_str("\", nonce=\"");
        quote_into(&mut head, &prompt.nonce);
        head.push_str("\", uri=\"");
        let mut tail = String::from("\"");
        if let Some(opaque) = &prompt.opaque {
            tail.push_str(", opaque=\"");
            quote_into(&mut tail, opaque);
            tail.push('"');
        }
        if qop_auth {
            tail.push_str(", algorithm=MD5");
        }
        Some(Md5Answer {
            ha1: hex(&h.finalize().into()),
            head,
            tail,
            qop_auth,
        })
    }

    fn answer(&self, nonce: &str, nc: u32, path: &str) -> String {
        let mut h = Md5::new();
        h.update(b"GET:");
        h.update(path.as_bytes());
        let ha2 = hex(&h.finalize().into());
        // On the stack: this runs for every request.
        let nc: [u8; 8] = hex_of(&nc.to_be_bytes());
        let nc = std::str::from_utf8(&nc).unwrap_or_default();
        let cnonce: [u8; 32] = hex_of(&rand::random::<u128>().to_be_bytes());
        let cnonce = std::str::from_utf8(&cnonce).unwrap_or_default();
        let mut h = Md5::new();
        h.update(self.ha1);
        h.update(b":");
        h.update(nonce.as_bytes());
        if self.qop_auth {
            for part in [":", nc, ":", cnonce, ":auth"] {
                h.update(part.as_bytes());
            }
        }
        h.update(b":");
        h.update(ha2);
        let response = hex(&h.finalize().into());

        let mut out = String::with_capacity(self.head.len() + path.len() + self.tail.len() + 120);
        out.push_str(&self.head);
        quote_into(&mut out, path);
        out.push('"');
        if self.qop_auth {
            for part in [", qop=auth, nc=", nc, ", cnonce=\"", cnonce, "\""] {
                out.push_str(part);
            }
        }
        out.push_str(", response=\"");
        out.push_str(std::str::from_utf8(&response).unwrap_or_default());
        out.push_str(&self.tail);
        out
    }
}

/// `s` as the inside of a quoted string (RFC 7230 quoted-pair for `"` and `\`).
fn quote_into(out: &mut String, s: &str) {
    if !s.contains(['"', '\\']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

fn hex(bytes: &[u8; 16]) -> [u8; 32] {
    hex_of(bytes)
}

/// `bytes` in lower-case hex; `N` is twice their number.
fn hex_of<const N: usize>(bytes: &[u8]) -> [u8; N] {
    debug_assert_eq!(bytes.len() * 2, N);
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; N];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

/// What diqwest sees of a [`Session`] while it answers a challenge: no kept nonce (the session
/// tried it already), and the challenge to keep. It counts the requests diqwest sends.
struct Challenge<'a> {
    session: &'a Session,
    requests: &'a AtomicU64,
}

impl DigestAuthCredentials for Challenge<'_> {
    fn username(&self) -> &str {
        &self.session.username
    }

    fn password(&self) -> &str {
        self.session.password.expose()
    }

    fn cached_context<'h>(&self, _host: &'h str) -> diqwest::error::Result<Option<CachedContextGuard<'_, 'h>>> {
        self.requests.fetch_add(1, Ordering::Relaxed); // an unauthenticated request fetches the challenge
        Ok(None)
    }

    fn store_context(&self, host: &str, www_authenticate: &str) -> diqwest::error::Result<()> {
        self.requests.fetch_add(1, Ordering::Relaxed); // the answer to this challenge
        self.session.keep(host, www_authenticate);
        Ok(())
    }

    fn clear_context(&self, _host: &str) -> diqwest::error::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::simulator::digest::{Nonces, Verdict, verify};

    const CHALLENGE: &str =
        r#"Digest realm="MMS Public API", domain="", nonce="abc123", algorithm=MD5, qop="auth", stale=false"#;

    fn session() -> Session {
        let s = Session::new("pub\"lic".into(), Secret::new("s3cr\\et"));
        s.keep("127.0.0.1", CHALLENGE);
        s
    }

    /// What digest_auth (and so diqwest) answers with the same cnonce and count.
    fn reference(header: &str, path: &str) -> String {
        let ours = digest_auth::AuthorizationHeader::parse(header).unwrap();
        let mut prompt = digest_auth::parse(CHALLENGE).unwrap();
        prompt.nc = ours.nc - 1;
        let mut context = AuthContext::new_with_method("pub\"lic", "s3cr\\et", path, None::<&[u8]>, HttpMethod::GET);
        context.set_custom_cnonce(ours.cnonce.clone().unwrap());
        prompt.respond(&context).unwrap().to_header_string()
    }

    #[test]
    fn the_md5_answer_is_the_one_digest_auth_gives() {
        let s = session();
        let kept = s.kept("127.0.0.1").unwrap();
        assert!(kept.md5.is_some());
        let path = "/api/public/v1.0/orgs/5f1e/liveExport/migrationLink/status?x=\"y\"";
        let first = kept.answer("pub\"lic", "s3cr\\et", path);
        assert_eq!(first, reference(&first, path));
        assert!(first.contains("nc=00000002"), "{first}");
        let second = kept.answer("pub\"lic", "s3cr\\et", path);
        assert!(second.contains("nc=00000003"), "{second}");
        assert_eq!(second, reference(&second, path));
    }

    #[test]
    fn other_algorithms_are_answered_by_digest_auth() {
        let s = Session::new("u".into(), Secret::new("p"));
        s.keep("h", &CHALLENGE.replace("algorithm=MD5", "algorithm=SHA-256"));
        let kept = s.kept("h").unwrap();
        assert!(kept.md5.is_none());
        let answer = kept.answer("u", "p", "/x");
        assert!(
            answer.contains("algorithm=SHA-256") && answer.contains("nc=00000002"),
            "{answer}"
        );
    }

    #[test]
    fn a_kept_nonce_is_for_its_host_only_and_forgotten_once_refused() {
        let s = session();
        assert!(s.kept("other.example").is_none());
        let kept = s.kept("127.0.0.1").unwrap();
        s.keep("127.0.0.1", &CHALLENGE.replace("abc123", "def456"));
        s.forget(&kept); // an older nonce refused: the newer one stays
        assert_eq!(s.kept("127.0.0.1").unwrap().prompt.nonce, "def456");
        let newer = s.kept("127.0.0.1").unwrap();
        s.forget(&newer);
        assert!(s.kept("127.0.0.1").is_none());
    }

    #[test]
    fn the_simulator_accepts_each_answer_once() {
        let mut nonces = Nonces::default();
        let nonce = nonces.issue(std::time::Duration::from_secs(60));
        let users = std::collections::HashMap::from([("public".to_owned(), "private".to_owned())]);
        let s = Session::new("public".into(), Secret::new("private"));
        s.keep("127.0.0.1", &crate::simulator::digest::challenge(&nonce, false));
        let kept = s.kept("127.0.0.1").unwrap();
        let path = "/api/public/v1.0/orgs/x/liveExport/migrationLink/status";
        let answer = kept.answer("public", "private", path);
        assert_eq!(verify(&answer, "GET", path, &users, &mut nonces), Verdict::Ok);
        assert_eq!(
            verify(&answer, "GET", path, &users, &mut nonces),
            Verdict::Rejected,
            "a replayed count must be refused"
        );
        let next = kept.answer("public", "private", path);
        assert_eq!(verify(&next, "GET", path, &users, &mut nonces), Verdict::Ok);
    }
}
