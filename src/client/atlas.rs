//! Turning one Atlas answer about a live migration into a [`LiveMigrationOutcome`]. Pure, like
//! `classify.rs` for the link.

use std::time::Duration;

use serde_json::{Map, Value};

use super::classify::{error_answer, excerpt};
use crate::outcome::{ApiDeprecation, Failure, FailureClass};

/// The `Accept` that asks for resource `version` (`[atlas] api_version`): Atlas answers an
/// unknown version with 406 and a retired one with 410, which are failures of their own
/// ([`FailureClass::ApiVersion`]).
pub fn accept(version: &str) -> String {
    format!("application/vnd.atlas.{version}+json")
}

/// The most characters of a `Deprecation` or `Sunset` header kept.
const MAX_HEADER_CHARS: usize = 100;

/// The `Deprecation` and `Sunset` headers of an answer, through the gate, when either came.
pub(crate) fn retirement(headers: &reqwest::header::HeaderMap) -> Option<(Option<String>, Option<String>)> {
    let read = |name: &str| {
        headers
            .get(name)
            .map(|v| crate::outside::bytes(v.as_bytes(), MAX_HEADER_CHARS))
            .filter(|v| !v.trim().is_empty())
    };
    let (deprecation, sunset) = (read("deprecation"), read("sunset"));
    (deprecation.is_some() || sunset.is_some()).then_some((deprecation, sunset))
}

/// What the headers say about `version` of the API at `base_url`. `Sunset` is an HTTP date
/// (RFC 8594); one that is not is kept as sent, without a time.
pub fn deprecation(
    base_url: &str,
    version: &str,
    deprecation: Option<String>,
    sunset: Option<String>,
) -> ApiDeprecation {
    let sunset_at = sunset
        .as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc2822(s.trim()).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    ApiDeprecation {
        api: "atlas".to_owned(),
        base_url: base_url.to_owned(),
        version: version.to_owned(),
        deprecation,
        sunset,
        sunset_at,
    }
}

pub use crate::outcome::{LiveMigrationOutcome, LiveMigrationReading};

/// A status longer than this is garbage, as for the link.
const MAX_STATUS_CHARS: usize = 100;

/// `truncated` is `Some(cap)` when the body was cut at `cap` bytes.
pub fn classify(
    http_status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    truncated: Option<usize>,
) -> LiveMigrationOutcome {
    let malformed = |detail: String| Failure::new(FailureClass::Malformed, Some(http_status), None, detail);
    if let Some(cap) = truncated {
        return Err(malformed(format!(
            "the answer is larger than {cap} bytes; it starts: {}",
            excerpt(body)
        )));
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&http_status) {
        let mut failure = error_answer(http_status, retry_after, json.as_ref(), body);
        failure.class = match http_status {
            // Atlas answers a missing project or migration alike; there is no link here.
            404 => FailureClass::NotFound,
            406 | 410 => FailureClass::ApiVersion,
            _ => failure.class,
        };
        return Err(failure);
    }
    let Some(Value::Object(m)) = json else {
        return Err(malformed(format!("the answer is not a JSON object: {}", excerpt(body))));
    };
    let status = status_of(&m, body).map_err(malformed)?;
    // Every other field is optional in the spec: one that is missing is unknown, and so is one
    // of another type, said in `unreadable` and never allowed to hide the status (a FAILED
    // migration with a garbled lag is still FAILED).
    let mut unreadable = Vec::new();
    let ready_for_cutover = ready_for_cutover(&m, &mut unreadable);
    let lag_s = lag_seconds(&m, &mut unreadable);
    let migration_hosts = migration_hosts(&m, &mut unreadable);
    Ok(LiveMigrationReading {
        status,
        ready_for_cutover,
        lag_s,
        migration_hosts,
        unreadable,
    })
}

/// The answer's `status`, the one field it must have; `Err` says why it is malformed.
fn status_of(m: &Map<String, Value>, body: &[u8]) -> Result<String, String> {
    match m.get("status") {
        Some(Value::String(s)) if s.trim().chars().count() > MAX_STATUS_CHARS => Err(format!(
            "`status` is {} characters long: {}",
            s.chars().count(),
            excerpt(s.as_bytes())
        )),
        // Through the gate, as the link's status: it is stored and sent on.
        Some(Value::String(s)) if !crate::outside::text(s, MAX_STATUS_CHARS).trim().is_empty() => {
            Ok(crate::outside::text(s, MAX_STATUS_CHARS).trim().to_owned())
        }
        Some(other) => Err(format!("`status` is not a status string: {other}")),
        None => Err(format!("no `status` in the answer: {}", excerpt(body))),
    }
}

fn ready_for_cutover(m: &Map<String, Value>, unreadable: &mut Vec<String>) -> Option<bool> {
    match m.get("readyForCutover") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => {
            unreadable.push(format!(
                "`readyForCutover` is not true or false: {}",
                excerpt(other.to_string().as_bytes())
            ));
            None
        }
    }
}

fn lag_seconds(m: &Map<String, Value>, unreadable: &mut Vec<String>) -> Option<i64> {
    match m.get("lagTimeSeconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64().or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 9e15)
                .map(|f| f.round() as i64)
        }) {
            Some(n) if n >= 0 => Some(n),
            _ => {
                unreadable.push(format!(
                    "`lagTimeSeconds` is not a number of seconds: {}",
                    excerpt(v.to_string().as_bytes())
                ));
                None
            }
        },
    }
}

fn migration_hosts(m: &Map<String, Value>, unreadable: &mut Vec<String>) -> Vec<String> {
    match m.get("migrationHosts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(hosts)) if hosts.iter().all(Value::is_string) => hosts
            .iter()
            .filter_map(Value::as_str)
            .map(|h| crate::outside::text(h, MAX_HOST_CHARS))
            .filter(|h| !h.trim().is_empty())
            .take(MAX_HOSTS)
            .collect(),
        Some(other) => {
            unreadable.push(format!(
                "`migrationHosts` is not a list of host names: {}",
                excerpt(other.to_string().as_bytes())
            ));
            Vec::new()
        }
    }
}

/// At most this many migration hosts are kept, each at most this long: they are shown, not
/// used.
const MAX_HOSTS: usize = 8;
const MAX_HOST_CHARS: usize = 255;

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> LiveMigrationReading {
        classify(200, None, body.as_bytes(), None).unwrap()
    }

    fn class_of(code: u16, body: &str) -> FailureClass {
        classify(code, None, body.as_bytes(), None).unwrap_err().class
    }

    #[test]
    fn every_field_may_be_absent_or_null_but_status() {
        assert_eq!(
            ok(r#"{"_id":"6f1d00000000000000000001","status":"WORKING","readyForCutover":true,"lagTimeSeconds":42}"#),
            LiveMigrationReading {
                status: "WORKING".into(),
                ready_for_cutover: Some(true),
                lag_s: Some(42),
                migration_hosts: Vec::new(),
                unreadable: Vec::new(),
            }
        );
        assert_eq!(ok(r#"{"status":"NEW"}"#), LiveMigrationReading::of_status("NEW"));
        assert_eq!(
            ok(r#"{"status":"COMPLETE","readyForCutover":null,"lagTimeSeconds":null}"#).lag_s,
            None
        );
        // An undocumented status is a state like any other.
        assert_eq!(ok(r#"{"status":"PAUSED_BY_ATLAS"}"#).status, "PAUSED_BY_ATLAS");
    }

    /// An ill-typed optional field is unknown, said in `unreadable`, and the status stands.
    #[test]
    fn an_ill_typed_field_is_unknown_and_never_hides_the_status() {
        let r = ok(r#"{"status":"FAILED","readyForCutover":"yes","lagTimeSeconds":"soon","migrationHosts":"h1"}"#);
        assert_eq!(r.status, "FAILED");
        assert_eq!((r.ready_for_cutover, r.lag_s), (None, None));
        assert!(r.migration_hosts.is_empty());
        assert_eq!(r.unreadable.len(), 3, "{:?}", r.unreadable);
        assert!(r.unreadable[1].contains("`lagTimeSeconds` is not a number of seconds: \"soon\""));
        for lag in ["-5", "1e300", "[1]", "{}", "true"] {
            let r = ok(&format!(r#"{{"status":"WORKING","lagTimeSeconds":{lag}}}"#));
            assert_eq!((r.status.as_str(), r.lag_s), ("WORKING", None), "{lag}");
        }
        let r =
            ok(r#"{"status":"WORKING","migrationHosts":["mh-1.example.net","mh-2.example.net"],"lagTimeSeconds":7.4}"#);
        assert_eq!(r.migration_hosts, ["mh-1.example.net", "mh-2.example.net"]);
        assert_eq!(r.lag_s, Some(7));
        assert!(r.unreadable.is_empty());
    }

    #[test]
    fn unreadable_answers_are_malformed() {
        assert_eq!(class_of(200, "<html>proxy</html>"), FailureClass::Malformed);
        assert_eq!(class_of(200, r#"{"readyForCutover":true}"#), FailureClass::Malformed);
        assert_eq!(class_of(200, r#"{"status":7}"#), FailureClass::Malformed);
        assert!(classify(200, None, b"{}", Some(10)).is_err());
    }

    #[test]
    fn refusals_are_classified_in_plain_words() {
        let body = |code: u16, ec: &str| format!(r#"{{"detail":"d","error":{code},"errorCode":"{ec}","reason":"r"}}"#);
        assert_eq!(class_of(401, &body(401, "")), FailureClass::Unauthorized);
        assert_eq!(class_of(403, &body(403, "")), FailureClass::Forbidden);
        assert_eq!(class_of(404, &body(404, "RESOURCE_NOT_FOUND")), FailureClass::NotFound);
        assert_eq!(class_of(406, &body(406, "INVALID_VERSION")), FailureClass::ApiVersion);
        assert_eq!(class_of(410, &body(410, "VERSION_RETIRED")), FailureClass::ApiVersion);
        assert_eq!(class_of(503, "busy"), FailureClass::ServerError);
        let f = classify(406, None, body(406, "INVALID_VERSION").as_bytes(), None).unwrap_err();
        let text = f.explain_atlas();
        assert!(text.contains("Accept header") && text.contains("HTTP 406"), "{text}");
        let f = classify(410, None, body(410, "VERSION_RETIRED").as_bytes(), None).unwrap_err();
        let text = f.explain_atlas();
        assert!(text.contains("retired") && text.contains("api_version"), "{text}");
        let f = classify(404, None, br#"{"error":404,"detail":"d"}"#, None).unwrap_err();
        assert!(f.explain_atlas().contains("group_id and id"), "{}", f.explain_atlas());
        // A code linkwatch does not know is quoted, not guessed from the HTTP code.
        let f = classify(404, None, body(404, "X").as_bytes(), None).unwrap_err();
        assert_eq!(
            f.explain_atlas(),
            "Atlas refused the request with an error code linkwatch does not know (HTTP 404 X): d"
        );
    }
}
