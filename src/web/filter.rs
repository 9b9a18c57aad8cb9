//! The status page's filters, read from its query string (`?state=&name=&instance=&page=`) so
//! that a plain `<form method="get">` sets them, without JavaScript, and a filtered view is a
//! link that can be shared. What is not understood is refused with a 400 that says why, never
//! ignored: a typo would otherwise show the wrong orgs without a word.

use url::form_urlencoded;

use super::standing::OrgStanding;

/// Rows per page of orgs. At 10,000 orgs a page stays about a hundred kilobytes.
pub const PAGE_ROWS: usize = 100;

/// The longest `name` or `instance` read: enough for any org name or URL, and bounded (0027).
const MAX_TEXT: usize = 512;

/// Which orgs a view lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Those that need a look (see [`OrgStanding::needs_attention`]); the page's default.
    Attention,
    /// Every org; the JSON API's default.
    All,
    /// Those in one state.
    State(OrgStanding),
}

impl Shown {
    pub fn as_str(self) -> &'static str {
        match self {
            Shown::Attention => "attention",
            Shown::All => "all",
            Shown::State(s) => s.as_str(),
        }
    }

    fn parse(text: &str) -> Option<Shown> {
        match text {
            "attention" => Some(Shown::Attention),
            "all" => Some(Shown::All),
            _ => OrgStanding::ALL
                .iter()
                .find(|s| s.as_str() == text)
                .map(|&s| Shown::State(s)),
        }
    }

    pub fn matches(self, state: OrgStanding) -> bool {
        match self {
            Shown::Attention => state.needs_attention(),
            Shown::All => true,
            Shown::State(s) => s == state,
        }
    }
}

/// A request's filters; `None` where the query does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub state: Option<Shown>,
    /// Matched case-insensitively anywhere in an org's name or id; kept in lower case.
    pub name: Option<String>,
    /// The Cloud Manager an org is checked at, as the page writes it.
    pub instance: Option<String>,
    /// From 1.
    pub page: Option<usize>,
}

impl Filter {
    /// The filters of a query string. An empty value is no filter (a form sends every field).
    pub fn parse(query: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        let mut seen: Vec<String> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if seen.iter().any(|k| *k == key) {
                return Err(format!("\"{key}\" is given twice; give it once."));
            }
            seen.push(key.clone().into_owned());
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            if value.chars().count() > MAX_TEXT {
                return Err(format!("\"{key}\" is longer than {MAX_TEXT} characters."));
            }
            match &*key {
                "state" => {
                    f.state = Some(Shown::parse(value).ok_or_else(|| {
                        let states: Vec<&str> = OrgStanding::ALL.iter().map(|s| s.as_str()).collect();
                        format!(
                            "state \"{value}\" is not one the page knows; it takes attention, all, {}.",
                            states.join(", ")
                        )
                    })?);
                }
                "name" => f.name = Some(value.to_lowercase()),
                // As the page writes it, without the trailing slash a pasted base URL may carry.
                "instance" => f.instance = Some(value.trim_end_matches('/').to_owned()),
                "page" => {
                    f.page = Some(
                        value
                            .parse::<usize>()
                            .ok()
                            .filter(|p| (1..=1_000_000).contains(p))
                            .ok_or_else(|| format!("page \"{value}\" is not a number from 1."))?,
                    );
                }
                _ => {
                    return Err(format!(
                        "\"{key}\" is not a filter the page knows; it takes state, name, instance and page."
                    ));
                }
            }
        }
        Ok(f)
    }

    /// Whether an org with this name, id and instance passes the name and instance filters.
    pub fn picks(&self, name: &str, id: &str, instance: &str) -> bool {
        self.instance.as_deref().is_none_or(|i| i == instance)
            && self
                .name
                .as_deref()
                .is_none_or(|n| id.contains(n) || name.to_lowercase().contains(n))
    }

    /// The query string of this filter showing `state` on page `page`, for a link: relative,
    /// so it works wherever the page is served (`?state=...`).
    pub fn link(&self, state: Shown, page: usize) -> String {
        let mut q = form_urlencoded::Serializer::for_suffix(String::from("?"), 1);
        q.append_pair("state", state.as_str());
        if let Some(n) = &self.name {
            q.append_pair("name", n);
        }
        if let Some(i) = &self.instance {
            q.append_pair("instance", i);
        }
        if page > 1 {
            q.append_pair("page", &page.to_string());
        }
        q.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_read_or_refused_with_a_reason() {
        assert_eq!(Filter::parse(""), Ok(Filter::default()));
        assert_eq!(
            Filter::parse("state=&name=&instance=&page="),
            Ok(Filter::default()),
            "an empty form filters nothing"
        );
        assert_eq!(
            Filter::parse("state=retrying&name=Pay%20Ments&page=3"),
            Ok(Filter {
                state: Some(Shown::State(OrgStanding::Retrying)),
                name: Some("pay ments".into()),
                instance: None,
                page: Some(3),
            })
        );
        for (query, reason) in [
            ("state=green", "state \"green\""),
            ("page=0", "page \"0\""),
            ("page=-1", "page \"-1\""),
            ("page=abc", "page \"abc\""),
            ("sort=name", "\"sort\" is not a filter"),
            ("state=all&state=synced", "twice"),
            (&format!("name={}", "x".repeat(MAX_TEXT + 1)), "longer than"),
            ("state=%FF%FE", "is not one the page knows"),
        ] {
            let err = Filter::parse(query).expect_err(query);
            assert!(err.contains(reason), "{query}: {err}");
        }
    }

    #[test]
    fn a_link_keeps_the_filters_and_is_relative() {
        let f = Filter::parse("name=a%26b&instance=https%3A%2F%2Fcm").unwrap();
        assert_eq!(
            f.link(Shown::All, 2),
            "?state=all&name=a%26b&instance=https%3A%2F%2Fcm&page=2"
        );
        assert_eq!(Filter::parse(&f.link(Shown::All, 2)[1..]).unwrap().name, f.name);
        assert!(f.picks("A&B corp", "5f0c", "https://cm"));
        assert!(!f.picks("A&B corp", "5f0c", "https://other/"));
    }
}
