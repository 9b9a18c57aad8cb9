//! The file as written. Every struct rejects unknown keys; `Spanned` keeps positions for the
//! checks that happen after parsing.

use serde::Deserialize;
use toml::Spanned;

use super::values::{CronExpr, EventKind, HumanDuration, OrgId, Zone};
use crate::secret::Secret;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub instance_name: Option<Spanned<String>>,
    pub database: Option<Spanned<String>>,
    pub database_password_file: Option<Spanned<String>>,
    pub database_password_env: Option<Spanned<String>>,
    pub leader_lease: Option<Spanned<HumanDuration>>,
    pub retention: Option<Spanned<HumanDuration>>,
    pub shutdown_timeout: Option<HumanDuration>,
    pub http: Option<Http>,
    #[serde(default)]
    pub cloud_manager: CloudManager,
    pub poll: Option<Poll>,
    #[serde(default, rename = "credentials")]
    pub credential_sets: Vec<CredentialSet>,
    #[serde(default, rename = "org")]
    pub orgs: Vec<Org>,
    #[serde(default, rename = "channel")]
    pub channels: Vec<Channel>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    pub atlas: Option<Atlas>,
    #[serde(default, rename = "migration")]
    pub migrations: Vec<LiveMigration>,
    #[serde(default, rename = "report")]
    pub reports: Vec<RawReport>,
    pub heartbeat: Option<Spanned<Heartbeat>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReport {
    pub name: Option<Spanned<String>>,
    pub cron: Spanned<CronExpr>,
    pub timezone: Option<Spanned<Zone>>,
    pub channels: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub url: Option<Spanned<Secret>>,
    pub url_file: Option<Spanned<String>>,
    pub url_env: Option<Spanned<String>>,
    pub fail_url: Option<Spanned<Secret>>,
    pub fail_url_file: Option<Spanned<String>>,
    pub fail_url_env: Option<Spanned<String>>,
    pub every: Option<Spanned<HumanDuration>>,
    pub timeout: Option<Spanned<HumanDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub listen: Spanned<String>,
    pub public_url: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CloudManager {
    pub base_url: Option<Spanned<String>>,
    pub token_url: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub max_body_bytes: Option<usize>,
    // The credential keys, spelled out: serde's `flatten` would lose both
    // `deny_unknown_fields` and the spans.
    pub public_key: Option<Spanned<String>>,
    pub private_key: Option<Spanned<Secret>>,
    pub private_key_file: Option<Spanned<String>>,
    pub private_key_env: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<Secret>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
}

/// The keys that name a credential, in `[cloud_manager]` or in an `[[org]]`.
pub struct CredentialFields {
    pub public_key: Option<Spanned<String>>,
    pub private_key: Option<Spanned<Secret>>,
    pub private_key_file: Option<Spanned<String>>,
    pub private_key_env: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<Secret>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
}

macro_rules! credential_fields {
    ($t:ident) => {
        impl $t {
            pub fn credential(&self) -> CredentialFields {
                CredentialFields {
                    public_key: self.public_key.clone(),
                    private_key: self.private_key.clone(),
                    private_key_file: self.private_key_file.clone(),
                    private_key_env: self.private_key_env.clone(),
                    client_id: self.client_id.clone(),
                    client_secret: self.client_secret.clone(),
                    client_secret_file: self.client_secret_file.clone(),
                    client_secret_env: self.client_secret_env.clone(),
                }
            }
        }
    };
}
credential_fields!(CloudManager);
credential_fields!(Atlas);
credential_fields!(CredentialSet);
credential_fields!(LiveMigration);

/// `[[credentials]]`: a key (and optionally the instance it belongs to) that orgs and
/// migrations name with `credentials = "..."`, instead of repeating it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSet {
    pub name: Spanned<String>,
    pub base_url: Option<Spanned<String>>,
    pub token_url: Option<Spanned<String>>,
    pub public_key: Option<Spanned<String>>,
    pub private_key: Option<Spanned<Secret>>,
    pub private_key_file: Option<Spanned<String>>,
    pub private_key_env: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<Secret>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
}

/// `[atlas]`: where and how live migrations are read.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Atlas {
    pub base_url: Option<Spanned<String>>,
    pub api_version: Option<Spanned<String>>,
    pub token_url: Option<Spanned<String>>,
    pub every: Option<Spanned<HumanDuration>>,
    pub cutover_window: Option<Spanned<HumanDuration>>,
    pub deadline_warnings: Option<Spanned<Vec<Spanned<HumanDuration>>>>,
    pub public_key: Option<Spanned<String>>,
    pub private_key: Option<Spanned<Secret>>,
    pub private_key_file: Option<Spanned<String>>,
    pub private_key_env: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<Secret>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
}

/// `[[migration]]`: one Atlas live migration to follow.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveMigration {
    pub name: Spanned<String>,
    pub org: Spanned<String>,
    pub group_id: Spanned<String>,
    pub id: Spanned<String>,
    pub lag_alert: Option<Spanned<HumanDuration>>,
    pub base_url: Option<Spanned<String>>,
    pub token_url: Option<Spanned<String>>,
    pub credentials: Option<Spanned<String>>,
    pub public_key: Option<Spanned<String>>,
    pub private_key: Option<Spanned<Secret>>,
    pub private_key_file: Option<Spanned<String>>,
    pub private_key_env: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<Secret>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub client_secret_env: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    pub every: Option<Spanned<HumanDuration>>,
    pub cron: Option<Spanned<CronExpr>>,
    pub timezone: Option<Spanned<Zone>>,
    pub timeout: Option<Spanned<HumanDuration>>,
    pub concurrency: Option<Spanned<u32>>,
    pub failures_before_alert: Option<Spanned<u32>>,
    pub confirm_checks: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Org {
    pub id: Spanned<OrgId>,
    pub name: Spanned<String>,
    pub every: Option<Spanned<HumanDuration>>,
    pub cron: Option<Spanned<CronExpr>>,
    // The rest is rare in an [[org]] and boxed: unboxed, these eleven keys were 440 bytes of
    // every org while the file is read, 4.4 MB at 10,000 orgs, most of the daemon's peak.
    pub base_url: Option<Box<Spanned<String>>>,
    pub token_url: Option<Box<Spanned<String>>>,
    pub credentials: Option<Box<Spanned<String>>>,
    // The credential keys, spelled out: serde's `flatten` would lose both
    // `deny_unknown_fields` and the spans.
    pub public_key: Option<Box<Spanned<String>>>,
    pub private_key: Option<Box<Spanned<Secret>>>,
    pub private_key_file: Option<Box<Spanned<String>>>,
    pub private_key_env: Option<Box<Spanned<String>>>,
    pub client_id: Option<Box<Spanned<String>>>,
    pub client_secret: Option<Box<Spanned<Secret>>>,
    pub client_secret_file: Option<Box<Spanned<String>>>,
    pub client_secret_env: Option<Box<Spanned<String>>>,
}

impl Org {
    pub fn credential(&self) -> CredentialFields {
        CredentialFields {
            public_key: self.public_key.as_deref().cloned(),
            private_key: self.private_key.as_deref().cloned(),
            private_key_file: self.private_key_file.as_deref().cloned(),
            private_key_env: self.private_key_env.as_deref().cloned(),
            client_id: self.client_id.as_deref().cloned(),
            client_secret: self.client_secret.as_deref().cloned(),
            client_secret_file: self.client_secret_file.as_deref().cloned(),
            client_secret_env: self.client_secret_env.as_deref().cloned(),
        }
    }
}

/// One table for every kind: the keys that belong to another kind are rejected after parsing,
/// with a message that names the kind (an internally tagged enum would lose the spans).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: Spanned<String>,
    pub kind: Spanned<ChannelKind>,
    /// Per send; default 10s, at most 5m.
    pub timeout: Option<Spanned<HumanDuration>>,
    // slack
    pub webhook_url: Option<Spanned<Secret>>,
    pub webhook_url_file: Option<Spanned<String>>,
    pub webhook_url_env: Option<Spanned<String>>,
    // email
    pub smtp_url: Option<Spanned<Secret>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<Secret>>,
    pub password_file: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub from: Option<Spanned<String>>,
    pub to: Option<Spanned<Vec<String>>>,
    // webhook
    pub url: Option<Spanned<String>>,
    pub secret: Option<Spanned<Secret>>,
    pub secret_file: Option<Spanned<String>>,
    pub secret_env: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Console,
    Slack,
    Email,
    Webhook,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub channels: Spanned<Vec<Spanned<String>>>,
    pub events: Option<Spanned<Vec<EventKind>>>,
    pub to: Option<Spanned<Vec<String>>>,
    pub orgs: Option<Spanned<Vec<Spanned<String>>>>,
    pub remind_every: Option<Spanned<HumanDuration>>,
}
