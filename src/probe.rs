//! `linkwatch check --online`: asks Cloud Manager about every org, and Atlas about every live
//! migration, once, with the keys the config gives them, and stores nothing. It is how a wrong
//! key or a wrong org id shows before the service starts.

use futures_util::StreamExt;

use crate::client::{Client, ClientSettings};
use crate::config::Config;
use crate::outcome::{Failure, FailureClass};

/// What one org or live migration answered.
#[derive(Debug)]
pub struct Answer {
    /// `org` or `migration`.
    pub what: &'static str,
    pub name: String,
    /// The key's public half.
    pub credential: String,
    /// The status, or why there is none, in plain words.
    pub outcome: Result<String, Failure>,
    /// What else the answer said that a person should know: fields read as unknown, an API
    /// version announced for retirement.
    pub notes: Vec<String>,
}

impl Answer {
    /// A refusal or no answer at all: what a key or id test must not pass. An org without a
    /// migration link did answer, in Cloud Manager's own words (an `errorCode`): the key and id
    /// are right, the link is not there yet. A bare 404 (a proxy's page, a `base_url` without
    /// `/api/public/v1.0`) proves nothing.
    pub fn refused(&self) -> bool {
        match &self.outcome {
            Ok(_) => false,
            Err(f) => !(f.class == FailureClass::NoLink && f.error_code.is_some()),
        }
    }

    /// The reason in plain words, for a failure.
    pub fn explain(&self) -> Option<String> {
        let f = self.outcome.as_ref().err()?;
        Some(match self.what {
            "migration" => f.explain_atlas(),
            _ => f.explain(),
        })
    }
}

/// Every org, then every live migration, asked once (as many at a time as `[poll] concurrency`).
pub async fn ask_all(config: &Config) -> anyhow::Result<Vec<Answer>> {
    let cm = Client::new(
        ClientSettings::from_config(&config.cloud_manager, &config.poll),
        &config.sessions(),
    )?;
    let mut answers: Vec<Answer> = futures_util::stream::iter(config.orgs.iter())
        .map(|org| {
            let cm = &cm;
            async move {
                let (outcome, _) = cm.check_counted(&org.id, &org.endpoint, &org.credential).await;
                Answer {
                    what: "org",
                    name: org.name.clone(),
                    credential: format!("{} at {}", org.credential.label(), org.endpoint.label()),
                    outcome,
                    notes: Vec::new(),
                }
            }
        })
        .buffered(config.poll.concurrency)
        .collect()
        .await;
    if let Some(atlas) = &config.atlas {
        let client = Client::new(
            ClientSettings::for_atlas(atlas, &config.cloud_manager, &config.poll),
            &config.atlas_sessions(),
        )?;
        for m in &config.migrations {
            let (outcome, deprecation) = client
                .live_migration(&m.group_id, &m.id, &m.endpoint, &m.credential)
                .await;
            let mut notes: Vec<String> = deprecation.iter().map(crate::message::deprecation_title).collect();
            if let Ok(r) = &outcome {
                if !r.migration_hosts.is_empty() {
                    notes.push(format!("migration hosts: {}", r.migration_hosts.join(", ")));
                }
                notes.extend(r.unreadable.iter().map(|u| format!("taken as unknown: {u}")));
            }
            answers.push(Answer {
                what: "migration",
                name: m.name.clone(),
                credential: format!("{} at {}", m.credential.label(), m.endpoint.label()),
                outcome: outcome.map(|r| r.status),
                notes,
            });
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(outcome: Result<String, Failure>) -> Answer {
        Answer {
            what: "org",
            name: "payments".into(),
            credential: "api key p".into(),
            outcome,
            notes: Vec::new(),
        }
    }

    #[test]
    fn only_cloud_managers_own_no_link_counts_as_an_answer() {
        let no_link = |code: Option<&str>| Failure::new(FailureClass::NoLink, Some(404), code.map(Into::into), "");
        assert!(!answer(Ok("SYNCED".into())).refused());
        assert!(!answer(Err(no_link(Some("RESOURCE_NOT_FOUND")))).refused());
        // A bare 404: a proxy's page, or a base_url without /api/public/v1.0.
        assert!(answer(Err(no_link(None))).refused());
        assert!(answer(Err(Failure::new(FailureClass::Unauthorized, Some(401), None, ""))).refused());
    }
}
