//! Refusals in the API's own words: the `errorCode`s Cloud Manager and Atlas document, each
//! with what it means and what to do, in one table.
//!
//! Sources (read 2026-12): MongoDB's "Cloud Manager Administration API Error Codes"
//! (mongodb.com/docs/cloud-manager/reference/api-error-codes) and "Atlas Administration API
//! Error Codes" (mongodb.com/docs/atlas/reference/api-errors). The `parameters` of
//! `ORG_REQUIRES_ACCESS_LIST` (the caller's IP address) are as the Atlas CLI prints a real answer:
//! `HTTP 403 (Error code: "ORG_REQUIRES_ACCESS_LIST") Detail: This organization requires access
//! through an access list of ip ranges. Params: [175.196.74.118]`. A code not in this table is
//! quoted as the server sent it, with its `detail`, and never explained from the HTTP code: two
//! 403s can mean an access list or a feature the org's plan lacks.

/// One documented `errorCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    /// What it means. `{0}` stands for the answer's first parameter (an IP address, an org id);
    /// without one, " {0}" is left out.
    pub what: &'static str,
    /// What to do about it.
    pub todo: &'static str,
}

/// Every code linkwatch explains, by name. The requests linkwatch makes (a link's status, a
/// live migration) can meet only these; any other documented code is quoted like an unknown one.
pub const REFUSALS: &[Refusal] = &[
    Refusal {
        code: "ACCOUNT_SUSPENDED",
        what: "the organization is suspended: it has an invoice unpaid for more than 30 days",
        todo: "pay the invoice on the organization's Billing page; checks resume by themselves",
    },
    Refusal {
        code: "IP_ADDRESS_NOT_ON_ACCESS_LIST",
        what: "this host's IP address {0} is not on the API key's access list",
        todo: "add this host's address to the key's API access list",
    },
    Refusal {
        code: "ORG_REQUIRES_ACCESS_LIST",
        what: "the organization requires every API request to come from an address on the key's access list, and this host's address {0} is not on it",
        todo: "add this host's address to the key's API access list (Organization Access Manager, API keys)",
    },
    Refusal {
        code: "RESOURCE_REQUIRES_ACCESS_LIST",
        what: "the resource requires access through an API access list, and this host's address {0} is not on the key's list",
        todo: "add this host's address to the key's API access list",
    },
    // The name before MongoDB renamed whitelists to access lists; older Ops Managers send it.
    Refusal {
        code: "RESOURCE_REQUIRES_WHITELIST",
        what: "the resource requires access through an API whitelist, and this host's address {0} is not on the key's whitelist",
        todo: "add this host's address to the key's API whitelist",
    },
    Refusal {
        code: "FEATURE_UNSUPPORTED",
        what: "the feature is not supported for this organization or project (its plan or settings)",
        todo: "check in the console that the org and its plan can use this feature; a change of key will not help",
    },
    Refusal {
        code: "USER_UNAUTHORIZED",
        what: "the API key is valid but not authorized for this resource",
        todo: "give the key the role the request needs (Organization Owner for a link's status, Organization Member for a live migration)",
    },
    Refusal {
        code: "USER_CANNOT_ACCESS_ORG",
        what: "the API key cannot access the organization {0}",
        todo: "use a key of this organization, or invite the key to it with the Organization Owner role",
    },
    Refusal {
        code: "NOT_ORG_OWNER",
        what: "the API key lacks the Organization Owner role on this organization",
        todo: "give the key the Organization Owner role",
    },
    Refusal {
        code: "INVALID_ORG_ID",
        what: "the organization id {0} is not valid",
        todo: "check the org's id in the config (24 hex digits from the org's Settings page)",
    },
    Refusal {
        code: "ORG_NOT_FOUND",
        what: "the organization {0} does not exist",
        todo: "check the org's id in the config; an Atlas org id is not a Cloud Manager org id",
    },
    Refusal {
        code: "EXPECTED_NON_ATLAS_ORG",
        what: "the organization {0} is an Atlas organization, not a Cloud Manager one",
        todo: "configure the Cloud Manager org the link starts from",
    },
    Refusal {
        code: "GROUP_NOT_FOUND",
        what: "the project {0} does not exist",
        todo: "check the migration's group_id",
    },
    Refusal {
        code: "INVALID_GROUP_ID",
        what: "the project id {0} is not valid",
        todo: "check the migration's group_id (24 hex digits)",
    },
    Refusal {
        code: "INVALID_PATH_PARAMETER",
        what: "a value in the request's path is not valid",
        todo: "check the ids in the config",
    },
    Refusal {
        code: "RATE_LIMITED",
        what: "the API key has made too many requests",
        todo: "linkwatch waits as asked; spread checks over a longer interval if this repeats",
    },
    Refusal {
        code: "UNEXPECTED_ERROR",
        what: "the server had an unexpected error",
        todo: "nothing on this side; it is retried at the next check",
    },
];

/// Documented codes whose meaning depends on what was asked: `RESOURCE_NOT_FOUND` from Cloud
/// Manager's link status most likely means the org has no link, from Atlas that the migration
/// is not there. The failure's class says it in context, with the code.
pub const EXPLAINED_BY_WHAT_WAS_ASKED: &[&str] = &["RESOURCE_NOT_FOUND"];

/// The documented meaning of `code`, if linkwatch knows it.
pub fn find(code: &str) -> Option<&'static Refusal> {
    REFUSALS.iter().find(|r| r.code == code)
}

impl Refusal {
    /// What it means, with `parameter` (the answer's first one) where the text has a place.
    pub fn what_with(&self, parameter: Option<&str>) -> String {
        match parameter {
            Some(p) => self.what.replace("{0}", p),
            None => self.what.replace(" {0}", ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_and_every_text_reads_cleanly() {
        for (i, r) in REFUSALS.iter().enumerate() {
            assert!(
                REFUSALS[..i].iter().all(|o| o.code != r.code),
                "{} is listed twice",
                r.code
            );
            assert!(r.code.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{}", r.code);
            let text = r.what_with(None);
            assert!(!text.contains('{') && !text.contains("  "), "{text}");
            assert!(!r.todo.ends_with('.') && !r.what.ends_with('.'), "{}", r.code);
        }
        assert_eq!(find("NO_SUCH_CODE"), None);
    }
}
