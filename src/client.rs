//! The Cloud Manager client: how to ask for a link's status, and what the answer means.
//!
//! Digest credentials keep one [`digest::Session`] each, so an established nonce is reused and a
//! check costs one request (three when the server declared the nonce stale).
//! Service accounts keep one OAuth token each until shortly before it expires. Every answer,
//! including transport errors, becomes a [`CheckOutcome`]; this module never touches the database.

pub mod atlas;
mod classify;
mod digest;
mod oauth;

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::{StatusCode, Url, header};

pub(crate) use crate::retry::retry_after;
pub use atlas::{LiveMigrationOutcome, LiveMigrationReading};
pub use classify::classify;

use crate::config::{self, Credential, Endpoint, OrgId};
use crate::outcome::{ApiDeprecation, CheckOutcome, Failure, FailureClass};

/// Connection settings, taken from the config so that tests can point them at 127.0.0.1.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// Bounds one whole check, including the Digest or OAuth exchange.
    pub timeout: Duration,
    pub max_body_bytes: usize,
    /// The Atlas resource version asked for (`[atlas] api_version`); `None` for Cloud Manager.
    pub api_version: Option<String>,
}

impl ClientSettings {
    pub fn from_config(cm: &config::CloudManager, poll: &config::Poll) -> Self {
        ClientSettings {
            connect_timeout: cm.connect_timeout,
            timeout: poll.timeout,
            max_body_bytes: cm.max_body_bytes,
            api_version: None,
        }
    }

    /// Cloud Manager's connection limits and the poll's timeout, asking for `[atlas]`'s version.
    pub fn for_atlas(atlas: &config::Atlas, cm: &config::CloudManager, poll: &config::Poll) -> Self {
        ClientSettings {
            api_version: Some(atlas.api_version.clone()),
            ..ClientSettings::from_config(cm, poll)
        }
    }
}

enum Auth {
    Digest(digest::Session),
    OAuth(Box<oauth::TokenCache>),
}

pub struct Client {
    http: reqwest::Client,
    settings: ClientSettings,
    /// The `Accept` of this client's reads: JSON for Cloud Manager, the pinned resource version
    /// for Atlas.
    accept: header::HeaderValue,
    /// One authentication state per distinct endpoint and credential (a handful), looked up by
    /// equality: a Digest nonce or a token is never offered to another instance, nor another
    /// key's.
    auth: Vec<AuthFor>,
}

/// An authentication state and what it belongs to.
struct AuthFor {
    endpoint: Arc<Endpoint>,
    credential: Arc<Credential>,
    auth: Arc<Auth>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<&str> = self.auth.iter().map(|s| s.endpoint.label()).collect();
        f.debug_struct("Client")
            .field("endpoints", &endpoints)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for these (endpoint, credential) pairs: each gets its own session.
    pub fn new(settings: ClientSettings, sessions: &[config::Access]) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("linkwatch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            // No per-request timeout here: `check_inner` bounds the whole check (Digest or OAuth
            // exchange included) with one timer; a second one per request is work for nothing.
            // Below the usual server keep-alive, so a pooled connection is not reused just as the
            // server closes it ("connection closed before message completed").
            .pool_idle_timeout(Duration::from_secs(20))
            .build()?;
        let accept = match &settings.api_version {
            None => header::HeaderValue::from_static("application/json"),
            Some(version) => header::HeaderValue::from_str(&atlas::accept(version))
                .map_err(|_| anyhow::anyhow!("the Atlas API version {version:?} cannot be sent in a header"))?,
        };
        let mut client = Client {
            http,
            accept,
            settings,
            auth: Vec::new(),
        };
        for (endpoint, credential) in sessions {
            client.auth_for(endpoint, credential);
        }
        Ok(client)
    }

    fn auth_for(&mut self, endpoint: &Arc<Endpoint>, credential: &Arc<Credential>) -> Arc<Auth> {
        if let Some(a) = self.find_auth(endpoint, credential) {
            return a;
        }
        let auth = Arc::new(match &**credential {
            Credential::ApiKey {
                public_key,
                private_key,
            } => Auth::Digest(digest::Session::new(public_key.clone(), private_key.clone())),
            Credential::ServiceAccount {
                client_id,
                client_secret,
            } => Auth::OAuth(Box::new(oauth::TokenCache::new(
                client_id.clone(),
                client_secret.clone(),
            ))),
        });
        self.auth.push(AuthFor {
            endpoint: endpoint.clone(),
            credential: credential.clone(),
            auth: auth.clone(),
        });
        auth
    }

    fn find_auth(&self, endpoint: &Endpoint, credential: &Credential) -> Option<Arc<Auth>> {
        self.auth
            .iter()
            .find(|s| *s.credential == *credential && *s.endpoint == *endpoint)
            .map(|s| s.auth.clone())
    }

    /// Where `org`'s link status is read. Fails only for a base URL that cannot have paths (such
    /// as `mailto:`), which the config never lets through.
    fn status_url(&self, endpoint: &Endpoint, org: &OrgId) -> Result<Url, Failure> {
        status_url(&endpoint.base_url, org).map_err(|()| {
            Failure::new(
                FailureClass::Connection,
                None,
                None,
                String::from("cannot build the status URL from cloud_manager.base_url: it cannot have a path"),
            )
        })
    }

    /// Asks `endpoint` for `org`'s link status with `credential`, and says how many HTTP
    /// requests that took. Never fails: every problem is a [`Failure`] in the outcome.
    pub async fn check_counted(
        &self,
        org: &OrgId,
        endpoint: &Endpoint,
        credential: &Credential,
    ) -> (CheckOutcome, u64) {
        let requests = AtomicU64::new(0);
        let outcome = self.check_inner(org, endpoint, credential, &requests).await;
        (outcome, requests.load(Ordering::Relaxed))
    }

    async fn check_inner(
        &self,
        org: &OrgId,
        endpoint: &Endpoint,
        credential: &Credential,
        requests: &AtomicU64,
    ) -> CheckOutcome {
        let url = self.status_url(endpoint, org)?;
        let answer = self.fetch(url, org.as_str(), endpoint, credential, requests).await?;
        classify(answer.status, answer.retry_after, &answer.body, answer.truncated)
    }

    /// Reads live migration `id` of Atlas project `group` at `endpoint` (a client made with
    /// `[atlas]` settings), and whether Atlas announced the retirement of the version asked
    /// for. Never fails: every problem is a [`Failure`] in the outcome.
    pub async fn live_migration(
        &self,
        group: &str,
        id: &str,
        endpoint: &Endpoint,
        credential: &Credential,
    ) -> (LiveMigrationOutcome, Option<ApiDeprecation>) {
        let url = match live_migration_url(endpoint, group, id) {
            Ok(url) => url,
            Err(f) => return (Err(f), None),
        };
        let requests = AtomicU64::new(0);
        let answer = match self.fetch(url, id, endpoint, credential, &requests).await {
            Ok(answer) => answer,
            Err(f) => return (Err(f), None),
        };
        let deprecation = answer.retirement.map(|(deprecation, sunset)| {
            atlas::deprecation(
                endpoint.base_url.as_str(),
                self.settings.api_version.as_deref().unwrap_or_default(),
                deprecation,
                sunset,
            )
        });
        (
            atlas::classify(answer.status, answer.retry_after, &answer.body, answer.truncated),
            deprecation,
        )
    }

    /// One authenticated GET of `url`, bounded by the check timeout: the HTTP status and the
    /// body (at most `max_body_bytes`). `key` names what is asked about, for the OAuth cache's
    /// memory of who refuses a token.
    async fn fetch(
        &self,
        url: Url,
        key: &str,
        endpoint: &Endpoint,
        credential: &Credential,
        requests: &AtomicU64,
    ) -> Result<Answer, Failure> {
        let Some(auth) = self.find_auth(endpoint, credential) else {
            return Err(Failure::new(
                FailureClass::Unauthorized,
                None,
                None,
                format!("no session for {} at {}", credential.label(), endpoint.label()),
            ));
        };
        let attempt = async {
            let response = match &*auth {
                Auth::Digest(session) => session
                    .send(&url, || self.request(url.clone()), requests)
                    .await
                    .map_err(digest_error)?,
                // Boxed: the OAuth exchange is the larger future, and unboxed it made every
                // check of every org that size, Digest ones included.
                Auth::OAuth(cache) => Box::pin(self.send_oauth(url, key, endpoint, cache)).await?,
            };
            self.read(response).await
        };
        match tokio::time::timeout(self.settings.timeout, attempt).await {
            Ok(answer) => answer,
            Err(_) => Err(Failure::new(
                FailureClass::Timeout,
                None,
                None,
                format!("no answer within {}", humantime::format_duration(self.settings.timeout)),
            )),
        }
    }

    /// A GET of `url` with the OAuth token of `cache`, tried once more with a fresh token
    /// when the current one is refused.
    async fn send_oauth(
        &self,
        url: Url,
        key: &str,
        endpoint: &Endpoint,
        cache: &oauth::TokenCache,
    ) -> Result<reqwest::Response, Failure> {
        let token = cache.token(&self.http, &endpoint.token_url).await?;
        let response = self
            .request(url.clone())
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(transport_error)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            Ok(response)
        } else {
            // The token may have been revoked or expired early: one try with a fresh
            // one (or with the one another check has just fetched), unless this org
            // has refused the current token before.
            let next = cache.unauthorized(key, &token, &self.http, &endpoint.token_url).await?;
            let oauth::AfterUnauthorized::Retry(token) = next else {
                return Err(oauth::no_access());
            };
            let response = self
                .request(url)
                .bearer_auth(token.expose())
                .send()
                .await
                .map_err(transport_error)?;
            if response.status() == StatusCode::UNAUTHORIZED {
                // Even the newest token is refused: the service account lacks access
                // to this org, and renewing again would not change that.
                cache.refused_after_renewal(key, &token).await;
                return Err(oauth::no_access());
            }
            Ok(response)
        }
    }

    fn request(&self, url: Url) -> reqwest::RequestBuilder {
        // A `HeaderValue` made once: no check of the text per request.
        self.http.get(url).header(header::ACCEPT, self.accept.clone())
    }

    async fn read(&self, mut response: reqwest::Response) -> Result<Answer, Failure> {
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let retirement = atlas::retirement(response.headers());
        let (body, truncated) = read_capped(&mut response, self.settings.max_body_bytes)
            .await
            .map_err(transport_error)?;
        Ok(Answer {
            status,
            retry_after,
            body,
            truncated: truncated.then_some(self.settings.max_body_bytes),
            retirement,
        })
    }
}

/// `base` (which ends in `/`) joined with `orgs/{org}/liveExport/migrationLink/status`, as
/// `Url::join` would, without parsing the whole URL again: that parse was 3 % of a quiet
/// check's instructions (callgrind, BENCHMARKS.md). An org id is 24 hex digits, so no segment
/// needs escaping.
fn status_url(base: &Url, org: &OrgId) -> Result<Url, ()> {
    let mut url = base.clone();
    url.path_segments_mut()?
        .pop_if_empty()
        .extend(["orgs", org.as_str(), "liveExport", "migrationLink", "status"]);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// An HTTP answer, before anyone says what it means.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
    /// `Some(cap)` when the body was cut at `cap` bytes.
    truncated: Option<usize>,
    /// The `Deprecation` and `Sunset` headers, when either came.
    retirement: Option<(Option<String>, Option<String>)>,
}

/// Where live migration `id` of project `group` is read at `endpoint`.
fn live_migration_url(endpoint: &Endpoint, group: &str, id: &str) -> Result<Url, Failure> {
    endpoint
        .base_url
        .join(&format!("groups/{group}/liveMigrations/{id}"))
        .map_err(|e| {
            Failure::new(
                FailureClass::Connection,
                None,
                None,
                format!("cannot build the live migration URL from the Atlas base_url: {e}"),
            )
        })
}

/// Reads at most `cap` bytes; the flag says whether the body was longer.
pub(crate) async fn read_capped(response: &mut reqwest::Response, cap: usize) -> reqwest::Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

fn digest_error(e: diqwest::error::Error) -> Failure {
    match e {
        diqwest::error::Error::Reqwest(e) => transport_error(e),
        other => Failure::new(
            FailureClass::Malformed,
            Some(401),
            None,
            format!("could not complete the Digest exchange: {other}"),
        ),
    }
}

pub(crate) fn transport_error(e: reqwest::Error) -> Failure {
    let class = if e.is_timeout() {
        FailureClass::Timeout
    } else {
        FailureClass::Connection
    };
    // The chain of causes is what helps ("connection refused"); the URL is known to the caller.
    let mut causes = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        causes.push_str(": ");
        causes.push_str(&s.to_string());
        source = s.source();
    }
    Failure::new(class, None, None, format!("{}{causes}", e.without_url()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_url_is_what_join_gives_for_every_kind_of_base() {
        let org = OrgId::parse("5f1e4c9a2b3d4e5f6a7b8c9d").unwrap();
        let relative = format!("orgs/{org}/liveExport/migrationLink/status");
        for base in [
            "https://cloud.mongodb.com/api/public/v1.0/",
            "http://127.0.0.1:8080/api/public/v1.0/",
            "https://ops.example.internal:8443/prefix/api/public/v1.0/",
            "https://ops.example.internal/",
            "https://ops.example.internal/api/public/v1.0/?debug=1#frag",
            "http://[::1]:9000/api/public/v1.0/",
        ] {
            let base = Url::parse(base).unwrap();
            assert_eq!(
                status_url(&base, &org).unwrap().as_str(),
                base.join(&relative).unwrap().as_str(),
                "base {base}"
            );
        }
        let no_paths = Url::parse("mailto:ops@example.com").unwrap();
        assert!(status_url(&no_paths, &org).is_err());
    }
}
