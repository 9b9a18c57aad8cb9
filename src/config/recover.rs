//! Reading the file past its first mistake, so that one `linkwatch check` shows them all.
//!
//! serde stops at the first error. After each one the entry that holds it is taken out of the
//! parsed document and the rest is read again; a table that is then missing a key only because
//! that key was taken out goes as a whole, without a second message. Keys and positions are
//! found in the document as written, so `org[2]` stays `org[2]` after `org[1]` is taken out.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};

/// One mistake: where in the text, the dotted key (`org[1].every`, empty at the top), and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub offset: usize,
    pub key: String,
    pub message: String,
}

/// More mistakes than anyone reads in one go; the rest show once these are fixed.
const MOST: usize = 50;

/// Reads `text` into `T` and returns every mistake found, and the `name` and `id` of each table
/// taken out whole. The value is what remains once the
/// entries with mistakes are taken out (so that later checks can find more); `None` after a
/// syntax error, since the document it leaves is not worth reading further.
pub fn read<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<Problem>, Vec<String>) {
    let (document, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return (None, syntax_problems(syntax, &document), Vec::new());
    }
    // The usual file has no mistake: read it once, from the one parse, as serde would. The copies
    // that recovery needs are made only for a file that has one (at 10,000 orgs each copy of the
    // parsed document is megabytes, and the peak counts).
    let span = document.span();
    if let Ok(v) = T::deserialize(ValueDeserializer::from(Spanned::new(
        span,
        DeValue::Table(document.into_inner()),
    ))) {
        return (Some(v), Vec::new(), Vec::new());
    }
    read_past_mistakes(text)
}

/// The first [`MOST`] syntax errors, each with the key it is in.
fn syntax_problems(syntax: Vec<toml::de::Error>, document: &Spanned<DeTable<'_>>) -> Vec<Problem> {
    syntax
        .into_iter()
        .take(MOST)
        .map(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            Problem {
                offset,
                key: key_at(document, offset),
                message: e.message().trim().to_owned(),
            }
        })
        .collect()
}

/// [`read`] of a file that has a mistake: reads it again after taking out each entry that holds
/// one, until it reads (or nothing more can be taken out, or [`MOST`] were found).
fn read_past_mistakes<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<Problem>, Vec<String>) {
    let (written, _) = DeTable::parse_recoverable(text);
    let mut document = written.clone();
    let mut problems = Vec::new();
    // (table span, key) of every entry taken out, to know a "missing field" we caused.
    let mut taken: Vec<(Range<usize>, String)> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let span = document.span();
        let value = Spanned::new(span, DeValue::Table(document.get_ref().clone()));
        let error = match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => return (Some(v), sorted(problems), dropped),
            Err(e) => e,
        };
        let at = error.span().unwrap_or(0..0);
        let message = error.message().trim().to_owned();
        let missing = missing_field(&message);
        let caused_by_us = missing.is_some_and(|k| taken.iter().any(|(s, t)| *s == at && t == k));
        if !caused_by_us {
            problems.push(Problem {
                offset: at.start,
                key: key_at(&written, at.start),
                message: words::explain(&message, &written, at.start),
            });
        }
        let removed = if missing.is_some() {
            dropped.extend(names_of(written.get_ref(), &at));
            remove_table(document.get_mut(), &at)
        } else {
            remove_entry(document.get_mut(), at.start, &mut taken)
        };
        if !removed || problems.len() >= MOST {
            return (None, sorted(problems), dropped);
        }
    }
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by_key(|p| p.offset);
    problems
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// Takes out the innermost key (of a table, at any depth) whose key or value holds `offset`.
fn remove_entry(table: &mut DeTable<'_>, offset: usize, taken: &mut Vec<(Range<usize>, String)>) -> bool {
    remove_in(table, None, offset, taken)
}

fn remove_in(
    table: &mut DeTable<'_>,
    table_span: Option<Range<usize>>,
    offset: usize,
    taken: &mut Vec<(Range<usize>, String)>,
) -> bool {
    let Some(key) = table
        .iter()
        .find(|(k, v)| contains(&k.span(), offset) || contains(&v.span(), offset) || holds(v.get_ref(), offset))
        .map(|(k, _)| k.clone())
    else {
        return false;
    };
    if !contains(&key.span(), offset) {
        let value = table.get_mut(&key).expect("the key was just found");
        let span = value.span();
        let deeper = match value.get_mut() {
            DeValue::Table(inner) => remove_in(inner, Some(span), offset, taken),
            DeValue::Array(items) => remove_in_array(items, offset, taken),
            _ => false,
        };
        if deeper {
            return true;
        }
    }
    table.remove(&key);
    if let Some(span) = table_span {
        taken.push((span, key.get_ref().to_string()));
    }
    true
}

fn remove_in_array(items: &mut DeArray<'_>, offset: usize, taken: &mut Vec<(Range<usize>, String)>) -> bool {
    for item in items.iter_mut() {
        let span = item.span();
        if let DeValue::Table(inner) = item.get_mut()
            && (contains(&span, offset) || holds_table(inner, offset))
        {
            return remove_in(inner, Some(span), offset, taken);
        }
    }
    false
}

/// Whether any key or value inside `value` holds `offset` (array-of-tables spans cover only
/// their header).
fn holds(value: &DeValue<'_>, offset: usize) -> bool {
    match value {
        DeValue::Table(t) => holds_table(t, offset),
        DeValue::Array(items) => items
            .iter()
            .any(|i| contains(&i.span(), offset) || holds(i.get_ref(), offset)),
        _ => false,
    }
}

fn holds_table(table: &DeTable<'_>, offset: usize) -> bool {
    table
        .iter()
        .any(|(k, v)| contains(&k.span(), offset) || contains(&v.span(), offset) || holds(v.get_ref(), offset))
}

/// Takes out the table (an array element or a key's value) whose span is `span`.
fn remove_table(table: &mut DeTable<'_>, span: &Range<usize>) -> bool {
    let whole = table
        .iter()
        .find(|(_, v)| v.span() == *span && matches!(v.get_ref(), DeValue::Table(_)))
        .map(|(k, _)| k.clone());
    if let Some(key) = whole {
        table.remove(&key);
        return true;
    }
    table.iter_mut().any(|(_, v)| match v.get_mut() {
        DeValue::Table(inner) => remove_table(inner, span),
        DeValue::Array(items) => {
            if items.iter().any(|i| i.span() == *span) {
                *items = std::mem::replace(items, DeArray::new())
                    .into_iter()
                    .filter(|i| i.span() != *span)
                    .collect();
                true
            } else {
                items.iter_mut().any(|i| match i.get_mut() {
                    DeValue::Table(inner) => remove_table(inner, span),
                    _ => false,
                })
            }
        }
        _ => false,
    })
}

/// The `name` and `id` strings of the table whose span is `span`, anywhere in `table`.
fn names_of(table: &DeTable<'_>, span: &Range<usize>) -> Vec<String> {
    let strings = |t: &DeTable<'_>| {
        t.iter()
            .filter(|(k, _)| matches!(k.get_ref().as_ref(), "name" | "id"))
            .filter_map(|(_, v)| v.get_ref().as_str().map(|s| s.trim().to_owned()))
            .collect::<Vec<_>>()
    };
    for (_, v) in table.iter() {
        match v.get_ref() {
            DeValue::Table(inner) if v.span() == *span => return strings(inner),
            DeValue::Table(inner) => {
                let found = names_of(inner, span);
                if !found.is_empty() {
                    return found;
                }
            }
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        if item.span() == *span {
                            return strings(inner);
                        }
                        let found = names_of(inner, span);
                        if !found.is_empty() {
                            return found;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Vec::new()
}

/// Which element of the top-level array of tables `array` (`org` for `[[org]]`) holds `offset`.
pub fn index_at(document: &Spanned<DeTable<'_>>, array: &str, offset: usize) -> Option<usize> {
    let (_, value) = document.get_ref().iter().find(|(k, _)| k.get_ref() == array)?;
    let DeValue::Array(items) = value.get_ref() else {
        return None;
    };
    items
        .iter()
        .position(|i| contains(&i.span(), offset) || holds(i.get_ref(), offset))
}

/// The dotted key of the innermost entry at `offset` in the document as written: `org[1].every`.
fn key_at(document: &Spanned<DeTable<'_>>, offset: usize) -> String {
    let mut path = String::new();
    key_in(document.get_ref(), offset, &mut path);
    path
}

fn key_in(table: &DeTable<'_>, offset: usize, path: &mut String) {
    for (k, v) in table.iter() {
        if !(contains(&k.span(), offset) || contains(&v.span(), offset) || holds(v.get_ref(), offset)) {
            continue;
        }
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k.get_ref());
        if contains(&k.span(), offset) {
            return;
        }
        match v.get_ref() {
            DeValue::Table(inner) => key_in(inner, offset, path),
            DeValue::Array(items) => {
                if let Some((i, item)) = items
                    .iter()
                    .enumerate()
                    .find(|(_, i)| contains(&i.span(), offset) || holds(i.get_ref(), offset))
                {
                    path.push_str(&format!("[{i}]"));
                    if let DeValue::Table(inner) = item.get_ref() {
                        key_in(inner, offset, path);
                    }
                }
            }
            _ => {}
        }
        return;
    }
}

/// The project's words for serde's, and the nearest key for a mistyped one.
pub mod words {
    use super::*;

    /// The keys of each kind of `[[channel]]`, for suggestions that fit the table.
    pub(super) const CHANNEL_KEYS: &[(&str, &[&str])] = &[
        ("console", &[]),
        ("slack", &["webhook_url", "webhook_url_file", "webhook_url_env"]),
        (
            "email",
            &[
                "smtp_url",
                "username",
                "password",
                "password_file",
                "password_env",
                "ca_file",
                "from",
                "to",
            ],
        ),
        ("webhook", &["url", "secret", "secret_file", "secret_env"]),
    ];
    pub(super) const CHANNEL_COMMON: &[&str] = &["name", "kind", "timeout"];

    /// Rewrites a serde message at `offset` of the document.
    pub fn explain(message: &str, document: &Spanned<DeTable<'_>>, offset: usize) -> String {
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let mut candidates: Vec<String> = quoted(expected);
            if let Some(kind) = channel_kind_at(document, offset)
                && let Some((_, keys)) = CHANNEL_KEYS.iter().find(|(k, _)| *k == kind)
            {
                candidates = CHANNEL_COMMON
                    .iter()
                    .chain(keys.iter())
                    .map(|s| s.to_string())
                    .collect();
            }
            return match nearest(name, &candidates) {
                Some(best) => format!("unknown key `{name}`; did you mean `{best}`?"),
                None if candidates.is_empty() => format!("unknown key `{name}`"),
                None => format!("unknown key `{name}` (keys here: {})", candidates.join(", ")),
            };
        }
        if let Some(rest) = message.strip_prefix("unknown variant `") {
            let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let candidates = quoted(expected);
            let hint = match nearest(name, &candidates) {
                Some(best) => format!("; did you mean \"{best}\"?"),
                None => String::new(),
            };
            return format!("\"{name}\" is not one of {}{hint}", candidates.join(", "));
        }
        if let Some(name) = missing_field(message) {
            return format!("the key `{name}` is missing");
        }
        if let Some(rest) = message.strip_prefix("invalid type: ") {
            let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            return format!("expected {}, found {}", kind_words(expected), found_words(found));
        }
        if let Some(rest) = message.strip_prefix("invalid value: ") {
            let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            return format!("expected {}, found {}", kind_words(expected), found_words(found));
        }
        message.to_owned()
    }

    /// `a whole number` for `u32`, and so on: what a person writing TOML calls it.
    fn kind_words(expected: &str) -> String {
        let e = expected.trim();
        let words = match e {
            "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
            "f32" | "f64" => "a number",
            "a boolean" | "bool" => "true or false",
            "a sequence" => "a list (`[...]`)",
            "a string" | "a borrowed string" => "a string (in quotes)",
            _ if e.starts_with("struct ") || e == "a map" => "a table",
            _ => return e.trim_start_matches("a ").to_owned().replace("string", "a string"),
        };
        words.to_owned()
    }

    fn found_words(found: &str) -> String {
        match found.split_once(' ') {
            Some(("integer", n)) => format!("the number {n}"),
            Some(("string", s)) => format!("the string {s}"),
            Some(("boolean", b)) => b.trim_matches('`').to_owned(),
            Some(("floating", rest)) => format!("the number {}", rest.trim_start_matches("point ")),
            _ => match found {
                "sequence" => "a list".into(),
                "map" => "a table".into(),
                other => other.into(),
            },
        }
    }

    fn quoted(list: &str) -> Vec<String> {
        list.split('`').skip(1).step_by(2).map(str::to_owned).collect()
    }

    /// The candidate closest to `name`, if close enough to be a slip of the fingers.
    pub fn nearest(name: &str, candidates: &[String]) -> Option<String> {
        candidates
            .iter()
            .map(|c| (strsim::damerau_levenshtein(name, c), c))
            .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(1))
            .min_by_key(|(d, _)| *d)
            .map(|(_, c)| c.clone())
    }

    /// The `kind` of the `[[channel]]` that holds `offset`, if it is one.
    fn channel_kind_at(document: &Spanned<DeTable<'_>>, offset: usize) -> Option<String> {
        let (_, channels) = document.get_ref().iter().find(|(k, _)| k.get_ref() == "channel")?;
        let DeValue::Array(items) = channels.get_ref() else {
            return None;
        };
        items.iter().find_map(|item| match item.get_ref() {
            DeValue::Table(t) if contains(&item.span(), offset) || holds_table(t, offset) => t
                .iter()
                .find(|(k, _)| k.get_ref() == "kind")
                .and_then(|(_, v)| match v.get_ref() {
                    DeValue::String(s) => Some(s.to_string()),
                    _ => None,
                }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[allow(dead_code)]
        top: Option<u32>,
        #[serde(default)]
        #[allow(dead_code)]
        item: Vec<Item>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Item {
        #[allow(dead_code)]
        id: u32,
        #[allow(dead_code)]
        every: Option<u32>,
    }

    fn problems(text: &str) -> Vec<(String, String)> {
        read::<Doc>(text).1.into_iter().map(|p| (p.key, p.message)).collect()
    }

    #[test]
    fn every_mistake_is_found_in_one_read_with_the_keys_as_written() {
        let text = "top = \"eight\"\nextra = 1\n[[item]]\nid = 1\nevry = 2\n[[item]]\nid = \"x\"\n[[item]]\nid = 3\nevery = true\n";
        assert_eq!(
            problems(text),
            vec![
                (
                    "top".to_owned(),
                    "expected a whole number, found the string \"eight\"".to_owned()
                ),
                (
                    "extra".to_owned(),
                    "unknown key `extra` (keys here: top, item)".to_owned()
                ),
                (
                    "item[0].evry".to_owned(),
                    "unknown key `evry`; did you mean `every`?".to_owned()
                ),
                (
                    "item[1].id".to_owned(),
                    "expected a whole number, found the string \"x\"".to_owned()
                ),
                (
                    "item[2].every".to_owned(),
                    "expected a whole number, found true".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_missing_key_is_named_once() {
        assert_eq!(
            problems("[[item]]\nevery = 1\n"),
            vec![("item[0]".to_owned(), "the key `id` is missing".to_owned())]
        );
    }

    #[test]
    fn a_mistyped_channel_key_is_matched_only_against_the_keys_of_its_kind() {
        let channel = |kind: &str, key: &str| {
            let text = format!("[[channel]]\nname = \"ops\"\nkind = \"{kind}\"\n{key} = \"x\"\n");
            read::<crate::config::raw::Config>(&text)
                .1
                .into_iter()
                .map(|p| p.message)
                .collect::<Vec<_>>()
        };
        // `password` is an email channel's key: in a Slack channel it is no suggestion.
        assert_eq!(
            channel("slack", "pasword"),
            ["unknown key `pasword` (keys here: name, kind, timeout, webhook_url, webhook_url_file, webhook_url_env)"]
        );
        assert_eq!(
            channel("email", "pasword"),
            ["unknown key `pasword`; did you mean `password`?"]
        );
    }

    /// The kinds' lists are written by hand beside `raw::Channel`: together they must name its
    /// keys exactly, or a suggestion would offer a key that is refused, or miss one.
    #[test]
    fn the_channel_kinds_keys_are_the_keys_of_a_channel() {
        let (_, problems, _) = read::<crate::config::raw::Channel>("name = \"x\"\nkind = \"slack\"\nzzzzzzzz = 1\n");
        let message = &problems[0].message;
        let listed = message
            .split("(keys here: ")
            .nth(1)
            .expect(message)
            .trim_end_matches(')');
        let mut of_a_channel: Vec<&str> = listed.split(", ").collect();
        let mut of_the_kinds: Vec<&str> = words::CHANNEL_COMMON
            .iter()
            .chain(words::CHANNEL_KEYS.iter().flat_map(|(_, keys)| keys.iter()))
            .copied()
            .collect();
        of_a_channel.sort_unstable();
        of_the_kinds.sort_unstable();
        assert_eq!(of_a_channel, of_the_kinds);
    }

    #[test]
    fn a_clean_document_reads() {
        let (doc, problems, _) = read::<Doc>("top = 1\n[[item]]\nid = 1\n");
        assert!(doc.is_some() && problems.is_empty(), "{problems:?}");
    }
}
