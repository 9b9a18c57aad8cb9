//! The one gate for text that comes from outside the process: HTTP bodies and headers, SMTP
//! replies, and the errors of libraries that quote them. Such text passes [`text`] (or
//! [`bytes`]) before it is stored, logged or sent on.
//!
//! Why one gate: PostgreSQL refuses a NUL byte in `text` and `jsonb`, so a receiver's error page
//! with a NUL in it made the record of a failed attempt impossible, and a channel that cannot
//! record an outcome sends nothing more. Control characters rewrite a terminal or a log line
//! that a person reads; unbounded text fills rows and Slack sections. Every place that meets
//! the outside applying this one function is what keeps a new receiver or a new error from
//! being one more place to forget it.

/// What a cut text ends with.
const CUT: &str = "…";

/// `raw` made safe to store, log and send on: NUL and every other control character removed
/// except newline and tab (a carriage return is dropped, a line stays a line), and at most
/// `max_chars` characters, the last one "…" when it was cut.
pub fn text(raw: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(raw.len().min(max_chars.saturating_mul(4)));
    let kept = raw.chars().filter(|c| passes(*c));
    for (n, c) in kept.enumerate() {
        if n == max_chars {
            // One more would not fit: the last kept one gives way to the mark.
            if out.pop().is_some() {
                out.push_str(CUT);
            }
            break;
        }
        out.push(c);
    }
    out
}

/// Whether `c` passes the gate: anything but a control character, newline and tab excepted.
fn passes(c: char) -> bool {
    !c.is_control() || c == '\n' || c == '\t'
}

/// Whether every character of `raw` passes the gate (its length aside): for callers that clean
/// only what needs it.
pub fn is_clean(raw: &str) -> bool {
    raw.chars().all(passes)
}

/// [`text`] of bytes that may not be UTF-8 (a body read as it came): invalid sequences become
/// U+FFFD first.
pub fn bytes(raw: &[u8], max_chars: usize) -> String {
    text(&String::from_utf8_lossy(raw), max_chars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nul_and_control_characters_go_newline_and_tab_stay() {
        assert_eq!(text("a\0b\u{1b}[31mc\r\nd\te\u{7f}", 100), "ab[31mc\nd\te");
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(bytes(b"gzip \x1f\x8b\x08\0 page", 100), "gzip \u{fffd} page");
    }

    #[test]
    fn a_long_text_is_cut_with_a_mark_within_the_cap() {
        assert_eq!(text("abcdef", 6), "abcdef");
        assert_eq!(text("abcdefg", 6), "abcde…");
        assert_eq!(text("ééééééé", 3), "éé…");
        assert_eq!(text("abc", 0), "");
        // Removed characters do not count.
        assert_eq!(text("a\0\0\0bc", 3), "abc");
    }

    proptest! {
        #[test]
        fn whatever_comes_in_what_goes_out_is_clean_and_bounded(raw in prop::collection::vec(any::<u8>(), 0..600), cap in 0usize..400) {
            let out = bytes(&raw, cap);
            prop_assert!(out.chars().count() <= cap);
            prop_assert!(!out.contains('\0'));
            prop_assert!(out.chars().all(|c| !c.is_control() || c == '\n' || c == '\t'));
            prop_assert_eq!(text(&out, cap), out);
        }
    }
}
