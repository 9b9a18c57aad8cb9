//! The server side of HTTP Digest (RFC 2617, MD5, qop=auth) as Cloud Manager speaks it: checks
//! the response hash, refuses replayed nonce counts, and declares expired nonces stale.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use md5::{Digest as _, Md5};
use tokio::time::Instant;

pub const REALM: &str = "MMS Public API";

struct Nonce {
    /// `None`: a lifetime too long for the clock, so never.
    expires: Option<Instant>,
    used_nc: HashSet<u32>,
}

#[derive(Default)]
pub struct Nonces(HashMap<String, Nonce>);

impl Nonces {
    pub fn issue(&mut self, lifetime: Duration) -> String {
        let now = Instant::now();
        // Forget nonces long expired, so a long run does not grow without bound.
        self.0.retain(|_, n| {
            n.expires
                .and_then(|e| e.checked_add(Duration::from_secs(600)))
                .is_none_or(|forget| forget > now)
        });
        let nonce = format!("{:032x}", rand::random::<u128>());
        self.0.insert(
            nonce.clone(),
            Nonce {
                expires: now.checked_add(lifetime),
                used_nc: HashSet::new(),
            },
        );
        nonce
    }

    pub fn expire_all(&mut self) {
        let now = Instant::now();
        for n in self.0.values_mut() {
            n.expires = Some(now);
        }
    }
}

/// The challenge, formatted as Cloud Manager sends it (unquoted `algorithm` and `stale`).
pub fn challenge(nonce: &str, stale: bool) -> String {
    format!(r#"Digest realm="{REALM}", domain="", nonce="{nonce}", algorithm=MD5, qop="auth", stale={stale}"#)
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Ok,
    /// No Digest Authorization header at all.
    Missing,
    /// Wrong user or password, replayed nc, unknown nonce, wrong uri.
    Rejected,
    /// Right password, but the nonce has expired: the client should retry with the new one.
    Stale,
}

fn md5_hex(s: &str) -> String {
    let digest = Md5::digest(s.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `k=v, k="v, with comma"` into a map.
fn params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"').unwrap_or(q.len());
            value = q[..end].to_owned();
            rest = q.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(key, value);
    }
    out
}

pub fn verify(
    authorization: &str,
    method: &str,
    request_uri: &str,
    users: &HashMap<String, String>,
    nonces: &mut Nonces,
) -> Verdict {
    let Some(rest) = authorization.strip_prefix("Digest ") else {
        return Verdict::Missing;
    };
    let p = params(rest);
    let get = |k: &str| p.get(k).map(String::as_str);
    let (Some(user), Some(realm), Some(nonce), Some(uri), Some(response), Some(qop), Some(nc), Some(cnonce)) = (
        get("username"),
        get("realm"),
        get("nonce"),
        get("uri"),
        get("response"),
        get("qop"),
        get("nc"),
        get("cnonce"),
    ) else {
        return Verdict::Rejected;
    };
    if realm != REALM || uri != request_uri || qop != "auth" || get("algorithm").is_some_and(|a| a != "MD5") {
        return Verdict::Rejected;
    }
    let Some(password) = users.get(user) else {
        return Verdict::Rejected;
    };
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let expected = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"));
    if expected != response {
        return Verdict::Rejected;
    }
    let Some(state) = nonces.0.get_mut(nonce) else {
        return Verdict::Rejected;
    };
    if state.expires.is_some_and(|e| e <= Instant::now()) {
        return Verdict::Stale;
    }
    match u32::from_str_radix(nc, 16) {
        // A count starts at 1 and is never reused with the same nonce (replay protection).
        Ok(n) if n > 0 && state.used_nc.insert(n) => Verdict::Ok,
        _ => Verdict::Rejected,
    }
}

/// `base64(id:secret)` from a Basic Authorization header.
pub fn decode_basic(b64: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 section 3.5's worked example (with our realm check relaxed by using its realm).
    #[test]
    fn rfc_2617_response_hash() {
        let ha1 = md5_hex("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = md5_hex("GET:/dir/index.html");
        let response = md5_hex(&format!(
            "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
        ));
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    fn header(user: &str, pass: &str, nonce: &str, nc: &str, uri: &str) -> String {
        let ha1 = md5_hex(&format!("{user}:{REALM}:{pass}"));
        let ha2 = md5_hex(&format!("GET:{uri}"));
        let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:abc:auth:{ha2}"));
        format!(
            r#"Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", algorithm=MD5, response="{response}", qop=auth, nc={nc}, cnonce="abc""#
        )
    }

    #[test]
    fn verifies_rejects_replays_and_declares_stale() {
        let users = HashMap::from([("pub".to_owned(), "priv".to_owned())]);
        let mut nonces = Nonces::default();
        let n = nonces.issue(Duration::from_secs(60));
        let uri = "/api/public/v1.0/orgs/x/liveExport/migrationLink/status";
        assert_eq!(
            verify(
                &header("pub", "priv", &n, "00000001", uri),
                "GET",
                uri,
                &users,
                &mut nonces
            ),
            Verdict::Ok
        );
        // The same count again is a replay.
        assert_eq!(
            verify(
                &header("pub", "priv", &n, "00000001", uri),
                "GET",
                uri,
                &users,
                &mut nonces
            ),
            Verdict::Rejected
        );
        assert_eq!(
            verify(
                &header("pub", "priv", &n, "00000002", uri),
                "GET",
                uri,
                &users,
                &mut nonces
            ),
            Verdict::Ok
        );
        assert_eq!(
            verify(
                &header("pub", "priv", &n, "00000000", uri),
                "GET",
                uri,
                &users,
                &mut nonces
            ),
            Verdict::Rejected
        );
        assert_eq!(
            verify(
                &header("pub", "wrong", &n, "00000003", uri),
                "GET",
                uri,
                &users,
                &mut nonces
            ),
            Verdict::Rejected
        );
        assert_eq!(
            verify(
                &header("pub", "priv", &n, "00000003", "/other"),
                "GET",
                uri,
                &users,
                &mut nonces
            ),
            Verdict::Rejected
        );
        assert_eq!(verify("", "GET", uri, &users, &mut nonces), Verdict::Missing);
        nonces.expire_all();
        assert_eq!(
            verify(
                &header("pub", "priv", &n, "00000004", uri),
                "GET",
                uri,
                &users,
                &mut nonces
            ),
            Verdict::Stale
        );
        // Stale is only said to a client that knows the password.
        assert_eq!(
            verify(
                &header("pub", "wrong", &n, "00000005", uri),
                "GET",
                uri,
                &users,
                &mut nonces
            ),
            Verdict::Rejected
        );
    }
}
