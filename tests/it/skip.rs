//! Tests that need what a machine may lack (a PostgreSQL server, a browser, root for a tmpfs,
//! the sqlite3 and psql shells) skip with a note on a developer's machine, and fail where the
//! environment says the thing is required, as CI does for every one of them: a skip there would
//! hide the very regression the test exists for.

/// Whether `var` says its dependency is required: set, and neither empty nor `0`.
pub fn required(var: &str) -> bool {
    requires(std::env::var(var).ok().as_deref())
}

fn requires(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// Skips the calling test with a note (`what` is missing, `how` to get it), or fails it when
/// `var` requires `what`.
pub fn skip(var: &str, what: &str, how: &str) {
    if required(var) {
        panic!("{var} requires {what}, which is missing: {how}");
    }
    eprintln!("SKIPPED ({what}): {how}; {var}=1 makes this a failure (CI sets it)");
}

#[test]
fn zero_and_empty_mean_not_required() {
    assert!(!requires(Some("0")));
    assert!(!requires(Some("")));
    assert!(!requires(None));
    assert!(requires(Some("1")));
}
