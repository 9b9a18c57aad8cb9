//! `[http]`: where the status page, `/metrics` and `/healthz` are served, and the optional
//! basic-auth login that guards all of them but `/healthz` (its details, `?verbose`, too).

use std::net::SocketAddr;

use reqwest::Url;

use super::{ConfigError, Locator, parse_url, raw, resolve_secret, with_trailing_slash};
use crate::secret::Secret;

/// The login the page, the JSON API and `/metrics` ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

/// `[http]`: where it listens, its login, and the address people reach the page at.
pub(super) struct Http {
    pub listen: SocketAddr,
    pub auth: Option<BasicAuth>,
    pub public_url: Option<Url>,
}

pub(super) fn parse(h: &raw::Http, loc: &Locator<'_>) -> Result<Http, ConfigError> {
    let public_url = public_url(h, loc)?;
    let listen = listen(h, loc)?;
    let auth = auth(h, loc)?;
    Ok(Http {
        listen,
        auth,
        public_url,
    })
}

/// `public_url`: a plain http(s) address, with a trailing slash.
fn public_url(h: &raw::Http, loc: &Locator<'_>) -> Result<Option<Url>, ConfigError> {
    // Messages link to the page there; behind a proxy it may hold a path (`/linkwatch/`).
    let Some(u) = &h.public_url else {
        return Ok(None);
    };
    let url = parse_url(u, "http.public_url", loc)?;
    // It goes into every message: a password in it would go with them.
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(loc.error(
            u.span().start,
            "http.public_url",
            "must be a plain address (no user, password, query or fragment): it is sent in every message".into(),
        ));
    }
    Ok(Some(with_trailing_slash(url)))
}

/// `listen`: an address and port.
fn listen(h: &raw::Http, loc: &Locator<'_>) -> Result<SocketAddr, ConfigError> {
    h.listen.get_ref().parse().map_err(|_| {
        loc.error(
            h.listen.span().start,
            "http.listen",
            format!(
                "\"{}\" is not an address:port such as 127.0.0.1:9187",
                h.listen.get_ref()
            ),
        )
    })
}

/// The login: `username` and a password (`password_file` or `password_env`) both, or neither.
fn auth(h: &raw::Http, loc: &Locator<'_>) -> Result<Option<BasicAuth>, ConfigError> {
    let password = resolve_secret(
        "http.password",
        None,
        h.password_file.as_ref(),
        h.password_env.as_ref(),
        loc,
    )?;
    match (&h.username, password) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) => {
            // Basic auth joins the two with a colon; a colon in the user name cannot be told apart.
            if user.get_ref().is_empty() || user.get_ref().contains(':') {
                return Err(loc.error(
                    user.span().start,
                    "http.username",
                    "must be non-empty and contain no colon".into(),
                ));
            }
            Ok(Some(BasicAuth {
                username: user.get_ref().clone(),
                password,
            }))
        }
        (Some(user), None) => Err(loc.error(
            user.span().start,
            "http.username",
            "set a password too (password_file or password_env), or no username".into(),
        )),
        (None, Some(_)) => {
            let at = h
                .password_file
                .as_ref()
                .or(h.password_env.as_ref())
                .map_or(h.listen.span().start, |s| s.span().start);
            Err(loc.error(at, "http.username", "a password is set without a username".into()))
        }
    }
}
