//! Turning one HTTP answer into a [`CheckOutcome`]. Pure, so that every body shape Cloud Manager
//! (or a proxy in front of it) may send is covered by unit tests.

use std::time::Duration;

use serde_json::Value;

use crate::outcome::{CheckOutcome, Failure, FailureClass};

/// How much of an unreadable body is kept as the reason.
const RAW_KEEP: usize = 200;

/// A status is a word such as `SYNCED`; an answer whose "status" is longer than this is not a
/// status but garbage, and is not worth storing in every transition and message.
const MAX_STATUS_CHARS: usize = 100;

/// `truncated` is `Some(cap)` when the body was cut at `cap` bytes.
pub fn classify(
    http_status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    truncated: Option<usize>,
) -> CheckOutcome {
    if let Some(cap) = truncated {
        return Err(Failure::new(
            FailureClass::Malformed,
            Some(http_status),
            None,
            format!("the answer is larger than {cap} bytes; it starts: {}", excerpt(body)),
        ));
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    // `?envelope=true` (or a proxy that adds it) wraps the answer and may report the real code
    // inside a 200: {"status": 401, "content": {...}}.
    let (code, json) = match json {
        Some(Value::Object(mut m)) if m.get("status").is_some_and(Value::is_u64) => {
            let inner = m.remove("content").or_else(|| m.remove("envelope"));
            let code = m
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok());
            match (inner, code) {
                (Some(inner), Some(code)) => (code, Some(inner)),
                _ => (http_status, Some(Value::Object(m))),
            }
        }
        other => (http_status, other),
    };
    if (200..300).contains(&code) {
        return match json.as_ref().and_then(|j| j.get("status")) {
            Some(Value::String(s)) if s.trim().chars().count() > MAX_STATUS_CHARS => Err(malformed(
                code,
                format!(
                    "`status` is {} characters long: {}",
                    s.chars().count(),
                    excerpt(s.as_bytes())
                ),
            )),
            // Through the gate: a status is stored and sent on, and a NUL in it would make
            // PostgreSQL refuse the check's record.
            Some(Value::String(s)) => match crate::outside::text(s, MAX_STATUS_CHARS).trim() {
                "" => Err(malformed(
                    code,
                    format!("`status` is not a status string: {:?}", excerpt(s.as_bytes())),
                )),
                status => Ok(status.to_owned()),
            },
            Some(other) => Err(malformed(code, format!("`status` is not a status string: {other}"))),
            None if json.is_some() => Err(malformed(code, format!("no `status` in the answer: {}", excerpt(body)))),
            None => Err(malformed(code, format!("the answer is not JSON: {}", excerpt(body)))),
        };
    }
    Err(error_answer(code, retry_after, json.as_ref(), body))
}

fn malformed(code: u16, detail: String) -> Failure {
    Failure::new(FailureClass::Malformed, Some(code), None, detail)
}

pub(super) fn error_answer(code: u16, retry_after: Option<Duration>, json: Option<&Value>, body: &[u8]) -> Failure {
    let field = |name: &str| {
        json.and_then(|j| j.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    // Cloud Manager's shape is {detail, errorCode, reason}; OAuth's is {error, error_description}.
    let error_code = field("errorCode").or_else(|| field("error"));
    let detail = field("detail")
        .or_else(|| field("error_description"))
        .or_else(|| field("reason"))
        .unwrap_or_else(|| excerpt(body));
    let class = match (code, error_code.as_deref()) {
        (401, _) => FailureClass::Unauthorized,
        (403, _) => FailureClass::Forbidden,
        (404, Some("INVALID_ORG_ID" | "ORG_NOT_FOUND" | "EXPECTED_NON_ATLAS_ORG")) => FailureClass::NotFound,
        (404, _) => FailureClass::NoLink,
        (429, _) => FailureClass::RateLimited,
        (500..=599, _) => FailureClass::ServerError,
        _ => FailureClass::Http,
    };
    // `parameters` is a list of strings in the documented shape; anything else is quoted as JSON.
    let parameters: Vec<String> = match json.and_then(|j| j.get("parameters")) {
        Some(Value::Array(items)) => items
            .iter()
            .take(crate::outcome::MAX_PARAMETERS)
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => excerpt(other.to_string().as_bytes()),
            })
            .collect(),
        _ => Vec::new(),
    };
    Failure {
        retry_after,
        ..Failure::new(class, Some(code), error_code, detail).with_parameters(parameters.iter().map(String::as_str))
    }
}

/// The start of a body, on one line, for messages.
pub(super) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return "(empty body)".to_owned();
    }
    match flat.char_indices().nth(RAW_KEEP) {
        Some((i, _)) => format!("{}...", &flat[..i]),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(code: u16, body: &str) -> FailureClass {
        classify(code, None, body.as_bytes(), None).unwrap_err().class
    }

    #[test]
    fn documented_and_unknown_statuses_are_statuses() {
        assert_eq!(
            classify(200, None, br#"{"status":"SYNCED"}"#, None),
            Ok("SYNCED".into())
        );
        assert_eq!(
            classify(200, None, br#"{ "status" : "NOT_SYNCED" }"#, None),
            Ok("NOT_SYNCED".into())
        );
        assert_eq!(
            classify(200, None, br#"{"status":"PAUSED","x":1}"#, None),
            Ok("PAUSED".into())
        );
    }

    #[test]
    fn envelope_is_unwrapped_and_its_code_honoured() {
        assert_eq!(
            classify(200, None, br#"{"status":200,"content":{"status":"SYNCED"}}"#, None),
            Ok("SYNCED".into())
        );
        assert_eq!(
            classify(200, None, br#"{"status":200,"envelope":{"status":"SYNCED"}}"#, None),
            Ok("SYNCED".into())
        );
        let f = classify(
            200,
            None,
            br#"{"status":403,"content":{"error":403,"errorCode":"IP_ADDRESS_NOT_ON_ACCESS_LIST","detail":"IP 1.2.3.4"}}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(f.class, FailureClass::Forbidden);
        assert_eq!(f.http_status, Some(403));
        assert_eq!(f.error_code.as_deref(), Some("IP_ADDRESS_NOT_ON_ACCESS_LIST"));
        assert_eq!(f.detail, "IP 1.2.3.4");
    }

    #[test]
    fn error_classes() {
        let ops_manager_401 =
            r#"{"reason":"Unauthorized","error":401,"detail":"You are not authorized for this resource."}"#;
        assert_eq!(class_of(401, ops_manager_401), FailureClass::Unauthorized);
        assert_eq!(
            class_of(403, r#"{"errorCode":"ORG_REQUIRES_ACCESS_LIST"}"#),
            FailureClass::Forbidden
        );
        assert_eq!(
            class_of(404, r#"{"errorCode":"ORG_NOT_FOUND"}"#),
            FailureClass::NotFound
        );
        assert_eq!(
            class_of(404, r#"{"errorCode":"EXPECTED_NON_ATLAS_ORG"}"#),
            FailureClass::NotFound
        );
        assert_eq!(
            class_of(404, r#"{"errorCode":"RESOURCE_NOT_FOUND"}"#),
            FailureClass::NoLink
        );
        assert_eq!(
            class_of(429, r#"{"errorCode":"RATE_LIMITED"}"#),
            FailureClass::RateLimited
        );
        assert_eq!(class_of(503, ""), FailureClass::ServerError);
        assert_eq!(
            class_of(402, r#"{"errorCode":"ACCOUNT_SUSPENDED"}"#),
            FailureClass::Http
        );
    }

    #[test]
    fn error_fields_are_kept() {
        let f = classify(
            429,
            Some(Duration::from_secs(30)),
            br#"{"detail":"Resource x is limited to 100 requests every 1 minutes.","error":429,"errorCode":"RATE_LIMITED","reason":"Too Many Requests"}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(f.http_status, Some(429));
        assert_eq!(f.error_code.as_deref(), Some("RATE_LIMITED"));
        assert_eq!(f.detail, "Resource x is limited to 100 requests every 1 minutes.");
        assert_eq!(f.retry_after, Some(Duration::from_secs(30)));
        // An Ops Manager 401 has no errorCode; its numeric `error` is not mistaken for one.
        let f = classify(
            401,
            None,
            br#"{"reason":"Unauthorized","error":401,"detail":"nope"}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(f.error_code, None);
        assert_eq!(f.detail, "nope");
    }

    /// Each refusal as a person reads it: by its errorCode first (with the parameters quoted
    /// where they matter), its HTTP code second, and an unknown code as it was sent.
    #[test]
    fn refusals_are_explained_by_their_error_code_first() {
        let body = |http: u16, code: &str, detail: &str, params: &str| {
            format!(r#"{{"detail":"{detail}","error":{http},"errorCode":"{code}","parameters":{params},"reason":"r"}}"#)
        };
        // (HTTP code, body, words the explanation must have, words it must not have)
        let cases: Vec<(u16, String, Vec<&str>, Vec<&str>)> = vec![
            (
                403,
                body(
                    403,
                    "ORG_REQUIRES_ACCESS_LIST",
                    "This organization requires access through an access list of ip ranges.",
                    r#"["203.0.113.7"]"#,
                ),
                vec![
                    "requires every API request",
                    "address 203.0.113.7 is not on it",
                    "add this host's address",
                    "(HTTP 403 ORG_REQUIRES_ACCESS_LIST)",
                    "access list of ip ranges",
                ],
                vec![],
            ),
            (
                403,
                body(
                    403,
                    "IP_ADDRESS_NOT_ON_ACCESS_LIST",
                    "IP address 198.51.100.4 is not allowed to access this resource.",
                    r#"["198.51.100.4"]"#,
                ),
                vec![
                    "IP address 198.51.100.4 is not on the API key's access list",
                    "(HTTP 403 IP_ADDRESS_NOT_ON_ACCESS_LIST)",
                ],
                vec![],
            ),
            (
                403,
                body(
                    403,
                    "FEATURE_UNSUPPORTED",
                    "Feature not supported by current account level.",
                    "[]",
                ),
                vec!["not supported for this organization", "(HTTP 403 FEATURE_UNSUPPORTED)"],
                vec!["access list"],
            ),
            (
                403,
                body(403, "ACCESS_FORBIDDEN", "Access forbidden.", "[]"),
                vec![
                    "an error code linkwatch does not know",
                    "(HTTP 403 ACCESS_FORBIDDEN): Access forbidden.",
                ],
                vec!["access list", "IP address"],
            ),
            (
                402,
                body(
                    402,
                    "ACCOUNT_SUSPENDED",
                    "Group has an unpaid invoice that is more than 30 days old.",
                    "[]",
                ),
                vec![
                    "suspended",
                    "invoice unpaid for more than 30 days",
                    "Billing page",
                    "(HTTP 402 ACCOUNT_SUSPENDED)",
                ],
                vec!["refused the request (HTTP"],
            ),
            (
                401,
                body(
                    401,
                    "USER_CANNOT_ACCESS_ORG",
                    "User cannot access organization.",
                    r#"["5f0c1234567890abcdef1234"]"#,
                ),
                vec![
                    "cannot access the organization 5f0c1234567890abcdef1234",
                    "Organization Owner role",
                ],
                vec!["wrong key"],
            ),
            (
                404,
                body(
                    404,
                    "ORG_NOT_FOUND",
                    "No organization with ID 5f0c1234567890abcdef1234 exists.",
                    r#"["5f0c1234567890abcdef1234"]"#,
                ),
                vec!["the organization 5f0c1234567890abcdef1234 does not exist"],
                vec![],
            ),
            (
                429,
                body(
                    429,
                    "RATE_LIMITED",
                    "Resource x is limited to 100 requests every 1 minutes.",
                    r#"["x", 100, 1]"#,
                ),
                vec!["too many requests", "(HTTP 429 RATE_LIMITED)"],
                vec![],
            ),
            // A code whose meaning depends on what was asked: the class says it, with the code.
            (
                404,
                body(404, "RESOURCE_NOT_FOUND", "Cannot find resource.", "[]"),
                vec!["has no migration link", "(HTTP 404 RESOURCE_NOT_FOUND)"],
                vec![],
            ),
            // Unknown codes with parameters keep them, whatever their JSON type.
            (
                409,
                body(409, "SOMETHING_NEW", "d", r#"["a", 7, {"k":1}]"#),
                vec![
                    "does not know (parameters: a, 7, {\"k\":1})",
                    "(HTTP 409 SOMETHING_NEW): d",
                ],
                vec![],
            ),
            // No errorCode: the HTTP code explains, as before.
            (
                401,
                r#"{"reason":"Unauthorized","error":401,"detail":"You are not authorized for this resource."}"#
                    .to_owned(),
                vec!["rejected the credentials", "(HTTP 401)"],
                vec![],
            ),
            (
                403,
                "<html>Forbidden</html>".to_owned(),
                vec!["access list", "(HTTP 403)"],
                vec![],
            ),
        ];
        for (http, body, has, lacks) in cases {
            let f = classify(http, None, body.as_bytes(), None).unwrap_err();
            let text = f.explain();
            for words in has {
                assert!(text.contains(words), "{body}\n  gives {text:?}\n  lacking {words:?}");
            }
            for words in lacks {
                assert!(!text.contains(words), "{body}\n  gives {text:?}\n  with {words:?}");
            }
        }
    }

    #[test]
    fn unreadable_bodies_are_malformed_with_an_excerpt() {
        let html = "<html>\n<body><h1>502 Bad Gateway</h1></body></html>";
        let f = classify(200, None, html.as_bytes(), None).unwrap_err();
        assert_eq!(f.class, FailureClass::Malformed);
        assert!(f.detail.contains("<h1>502 Bad Gateway</h1>"), "{}", f.detail);
        assert_eq!(class_of(200, ""), FailureClass::Malformed);
        assert_eq!(class_of(200, "{}"), FailureClass::Malformed);
        assert_eq!(class_of(200, r#"{"status":42}"#), FailureClass::Malformed);
        assert_eq!(class_of(200, r#"{"status":""}"#), FailureClass::Malformed);
        assert_eq!(class_of(200, "null"), FailureClass::Malformed);
        let long = format!(r#"{{"status":"{}"}}"#, "S".repeat(5_000));
        assert_eq!(class_of(200, &long), FailureClass::Malformed);
        // An HTML error page from a proxy keeps its text as the reason.
        let f = classify(502, None, html.as_bytes(), None).unwrap_err();
        assert_eq!(f.class, FailureClass::ServerError);
        assert!(f.detail.contains("502 Bad Gateway"));
    }

    #[test]
    fn huge_bodies_are_cut() {
        let body = "x".repeat(5000);
        let f = classify(200, None, body.as_bytes(), Some(4096)).unwrap_err();
        assert_eq!(f.class, FailureClass::Malformed);
        assert!(f.detail.len() < 300, "{}", f.detail.len());
        // Multi-byte text is cut on a character boundary.
        let f = classify(500, None, "é".repeat(1000).as_bytes(), None).unwrap_err();
        assert!(f.detail.ends_with("..."));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::outcome::DETAIL_MAX_CHARS;

    /// Any JSON value, a few levels deep, with the keys Cloud Manager uses among random ones.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            ".{0,40}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            let key = prop_oneof![
                Just("status".to_owned()),
                Just("content".to_owned()),
                Just("envelope".to_owned()),
                Just("errorCode".to_owned()),
                Just("detail".to_owned()),
                "[a-z]{1,8}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(key, inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_status_or_a_failure(code in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..2048)) {
            match classify(code, None, &body, None) {
                Ok(status) => prop_assert!(!status.trim().is_empty()),
                Err(f) => prop_assert!(f.detail.chars().count() <= DETAIL_MAX_CHARS, "detail too long: {}", f.detail.len()),
            }
        }

        #[test]
        fn error_details_of_any_length_are_capped(code in 400u16..600, detail in ".{0,1200}", error_code in ".{0,400}") {
            let body = serde_json::json!({"detail": detail, "errorCode": error_code, "error": code});
            let f = classify(code, None, body.to_string().as_bytes(), None).unwrap_err();
            prop_assert!(f.detail.chars().count() <= DETAIL_MAX_CHARS, "detail: {} chars", f.detail.chars().count());
            prop_assert!(f.error_code.as_ref().is_none_or(|c| c.chars().count() <= DETAIL_MAX_CHARS));
            // What fits is kept whole, but for what the gate for outside text removes.
            let gated = crate::outside::text(&detail, usize::MAX);
            if gated.chars().count() <= DETAIL_MAX_CHARS && !gated.is_empty() {
                prop_assert_eq!(&f.detail, &gated);
            }
        }

        #[test]
        fn any_json_gives_a_status_or_a_failure(code in prop_oneof![Just(200u16), 100u16..600], value in json()) {
            let body = serde_json::to_vec(&value).unwrap();
            if let Ok(status) = classify(code, None, &body, None) {
                prop_assert!(!status.trim().is_empty() && status.chars().count() <= MAX_STATUS_CHARS);
                prop_assert!((200..300).contains(&code) || value.get("content").is_some() || value.get("envelope").is_some());
            }
        }
    }
}
